"""The package's shape: each layer imports only the layers below it, nothing imports in a cycle, only the model
sources touch Ultralytics, and every path the README and docs name exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "yoloprune"
# Each layer may import itself and the layers before it (numbers: equal numbers may not import each other).
LAYERS = {"yoloprune": 0, "yoloprune.errors": 0, "yoloprune.defaults": 0, "yoloprune.atomic": 0, "yoloprune.runtime": 0, "yoloprune.log": 0,
          "yoloprune.targets": 1, "yoloprune.engine": 2, "yoloprune.sources": 3, "yoloprune.speed": 4,
          "yoloprune.data": 4, "yoloprune.api": 5, "yoloprune.workflows": 6, "yoloprune.cli": 7,
          "yoloprune.__main__": 8}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every yoloprune module ``name`` imports, at the top or inside a function."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = ".".join((base[:len(base) - node.level + 1] if node.level else []) + ([node.module] if node.module else []))
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return {d for d in out if d in MODULES and d != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _top(name: str) -> str:
    """The layer a module belongs to: the longest prefix of its name in LAYERS."""
    return next(p for p in sorted(LAYERS, key=len, reverse=True) if name == p or name.startswith(p + "."))


def _layer(name: str) -> int:
    return LAYERS[_top(name)]


def test_every_module_has_a_layer():
    assert all(_top(m) for m in MODULES)
    assert "yoloprune.engine.prune" in MODULES and "yoloprune.sources.base" in MODULES


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_only_layers_below(name):
    up = [d for d in GRAPH[name] if _top(d) != _top(name) and _layer(d) >= _layer(name)]
    assert not up, f"{name} imports {up}, which stand at or above its layer"


def test_no_import_cycles():
    def reach(a: str, b: str, seen: set[str]) -> bool:
        return b in GRAPH[a] or any(reach(c, b, seen | {a}) for c in GRAPH[a] if c not in seen)

    cycles = sorted({tuple(sorted((a, b))) for a in GRAPH for b in GRAPH[a] if reach(b, a, set())})
    assert cycles == []


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The two checks above fail on what they look for: a planted cycle and an engine import of sources."""
    global GRAPH
    planted = {k: set(v) for k, v in GRAPH.items()}
    planted["yoloprune.engine.plan"].add("yoloprune.engine.prune")  # prune imports plan already
    planted["yoloprune.engine.graph"].add("yoloprune.sources")
    monkeypatch.setattr(__import__(__name__), "GRAPH", planted)
    with pytest.raises(AssertionError):
        test_no_import_cycles()
    with pytest.raises(AssertionError):
        test_imports_only_layers_below("yoloprune.engine.graph")


def test_only_sources_import_ultralytics():
    offenders = []
    for name, path in MODULES.items():
        if name.startswith("yoloprune.sources"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{name}: {m}" for m in mods if m.split(".")[0] == "ultralytics"]
    assert offenders == []


def test_engine_imports_torch_and_numpy_only():
    import subprocess
    import sys

    engine = sorted(m for m in MODULES if m.startswith("yoloprune.engine."))
    code = (f"import sys; import {', '.join(engine)}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ultralytics', 'cv2', 'yaml', 'pandas', "
            "'matplotlib', 'onnxruntime', 'pycocotools'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


_PATH = re.compile(r"(?<![\w/.])((?:yoloprune|benchmarks|tests|docs|weights|data|\.ci)/[\w./-]*[\w/])")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _named_paths(doc: Path) -> list[tuple[str, Path]]:
    """Paths a Markdown file names: repository paths in its text, and its relative links (from its folder)."""
    text = doc.read_text()
    found = [(m, ROOT / m) for m in _PATH.findall(text)]
    found += [(m, doc.parent / m) for m in _LINK.findall(text) if "://" not in m and not m.startswith("mailto:")]
    return found


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_the_docs_name_exists(doc):
    missing = [name for name, path in _named_paths(doc) if not path.exists()]
    assert missing == [], f"{doc.name} names paths that do not exist: {missing}"


def test_the_path_check_reads_paths_and_links(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("see `yoloprune/engine/prune.py` and yoloprune/nope.py, and [a](missing.png)\n")
    names = [n for n, _ in _named_paths(doc)]
    assert names == ["yoloprune/engine/prune.py", "yoloprune/nope.py", "missing.png"]


def test_readme_is_a_short_guide_starting_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 260
    first = text.index("pip install -e . && yoloprune demo")
    second = text.index('pip install -e ".[dev]" && python -m pytest -q')
    assert first < second < text.index("## Quick start")
    assert (ROOT / ".ci" / "run").read_text().strip().endswith('pip install -e ".[dev]" && python -m pytest -q')
