"""The benchmark scripts are code: each imports (no model is built, nothing runs), answers --help, and the names
the harness re-exports from the library resolve (a library module moved under them would break the scripts)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")
                 and p.stem != "harness")


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_imports(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py has no main()"


def test_the_harness_reexports_the_librarys_timers():
    from benchmarks import harness

    assert callable(harness.alternate) and callable(harness.paired_onnx_latency)


def test_the_benchmark_index_names_every_script_and_answers_help():
    from benchmarks.__main__ import BENCHES

    assert {b.name for b in BENCHES} == set(SCRIPTS)
    out = subprocess.run([sys.executable, "-m", "benchmarks", "list"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and all(name in out.stdout for name in SCRIPTS), out.stderr
