"""Checkpoints are untrusted input: a file naming anything outside the allow-list is refused before it runs."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, build, tiny_project

import yoloprune as yp
from yoloprune.cli import main
from yoloprune.defaults import TRUST_ENV
from yoloprune.errors import CheckpointError
from yoloprune.sources.yolov5 import checkpoint as v5

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "fixtures" / "yolov5n-original-repo.pt"


class Payload:
    """What a malicious checkpoint holds: unpickling it runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe")
    data, ckpt = tiny_project(root, n_train=2, n_val=2)
    return root, data, ckpt


def _evil(root: Path, ckpt: Path, where: str) -> tuple[Path, Path]:
    """A copy of a good checkpoint with the payload in the model, in train_args, or in a key of its own; or an
    original-YOLOv5 checkpoint carrying it in its opt."""
    marker = root / f"marker-{where}"
    out = root / f"evil-{where}.pt"
    if where == "yolov5":  # pickled under the original repository's names, as its train.py would
        class Pickler(v5._Pickler):
            def save_global(self, obj, name=None):
                if obj is os.system:
                    return pickle._Pickler.save_global(self, obj, name)
                return super().save_global(obj, name)

        model, _ = v5.load(REAL)
        torch.save({"model": v5._plain(model), "ema": None, "epoch": -1, "opt": {"hyp": Payload(marker)}}, out,
                   pickle_module=types.SimpleNamespace(Pickler=Pickler, __name__="evil"))
        assert v5.is_original(out)
        return out, marker
    data = torch.load(ckpt, map_location="cpu", weights_only=False)
    if where == "model":
        data["model"].model[0].payload = Payload(marker)
    elif where == "train_args":
        data["train_args"] = {**data.get("train_args", {}), "cfg": Payload(marker)}
    else:
        data["extra"] = [1, {"x": Payload(marker)}]
    torch.save(data, out)
    return out, marker


@pytest.mark.parametrize("where", ["model", "train_args", "extra", "yolov5"])
def test_a_payload_anywhere_is_refused_by_every_command_before_it_runs(project, where, capsys):
    root, data, ckpt = project
    evil, marker = _evil(root, ckpt, where)
    out = root / "out.pt"
    commands = [
        ["info", "--model", str(evil)],
        ["prune", "--model", str(evil), "--ratio", "0.3", "--no-calib", "--out", str(out)],
        ["compact", "--model", str(evil), "--out", str(out)],
        ["sparsify", "--model", str(evil), "--amount", "0.3", "--out", str(out)],
        ["val", "--model", str(evil), "--data", str(data), "--imgsz", "64"],
        ["export", "--model", str(evil), "--out", str(root / "m.onnx"), "--imgsz", "64"],
        ["sweep", "--model", str(evil), "--data", str(data), "--ratios", "0,0.2", "--imgsz", "64",
         "--out", str(root / "sweep")],
        ["finetune", "--model", str(evil), "--data", str(data), "--epochs", "1", "--imgsz", "64", "--out", str(out)],
        ["finetune", "--model", str(ckpt), "--teacher", str(evil), "--data", str(data), "--epochs", "1",
         "--imgsz", "64", "--out", str(out)],
        ["iterative", "--model", str(evil), "--data", str(data), "--ratio", "0.3", "--epochs", "1", "--imgsz", "64",
         "--out", str(out)],
        ["recover", "--model", str(evil), "--images", str(data.parent / "d" / "images" / "train"), "--epochs", "1",
         "--imgsz", "64", "--out", str(out)],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "refused to load" in err[0] and "--trust-checkpoint" in err[0], (argv, err)
        assert not marker.exists(), argv
    with pytest.raises(CheckpointError, match="posix.system"):
        yp.prune(str(evil), ratio=0.3)
    assert not marker.exists() and not out.exists()


def test_trusting_a_file_loads_it_as_plain_torch_load_would(project, capsys):
    root, _, ckpt = project
    evil, marker = _evil(root, ckpt, "trusted")
    assert main(["info", "--model", str(evil), "--trust-checkpoint"]) == 0
    assert marker.exists()  # the file's code ran: that is what trusting it means
    marker.unlink()
    assert TRUST_ENV not in os.environ  # the flag does not outlive the command
    assert main(["info", "--model", str(evil)]) == 2 and not marker.exists()


def _all_checkpoints(tmp: Path) -> list[Path]:
    """The shipped weights, the original-repository fixture, what yoloprune writes for every family and task
    (pruned, so their widths differ from any yaml), and what it writes for an original YOLOv5 model."""
    files = sorted((ROOT / "weights").glob("*.pt")) + [REAL]
    for yaml in [*FAMILIES, "yolov8n-seg.yaml", "yolov8n-pose.yaml", "yolov8n-obb.yaml", "yolov8n-cls.yaml"]:
        model = build(yaml, nc=2)
        yp.prune(model, ratio=0.3, imgsz=64)
        files.append(yp.save_checkpoint(model, tmp / yaml.replace(".yaml", ".pt")))
    model, meta = v5.load(REAL)
    yp.prune(model, ratio=0.3, imgsz=64)
    files.append(yp.save_checkpoint(model, tmp / "v5-pruned.pt", meta))
    return files


def test_every_real_and_written_checkpoint_loads_under_the_allow_list(tmp_path):
    files = _all_checkpoints(tmp_path)
    code = textwrap.dedent("""
        import sys, torch
        from yoloprune.sources import safe_pickle
        from yoloprune.sources.yolov5 import checkpoint as v5
        for f in sys.argv[1:]:
            remap = v5._remap if v5.is_original(f) else None
            ck = safe_pickle.load(f, remap)
            model = ck.get("ema") or ck["model"]
            assert isinstance(model, torch.nn.Module), f
        print(len(sys.argv) - 1)
    """)
    env = {k: v for k, v in os.environ.items() if k != TRUST_ENV}
    out = subprocess.run([sys.executable, "-c", code, *map(str, files)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) == len(files) >= 14


def test_old_ultralytics_module_paths_map_as_ultralytics_maps_them():
    from ultralytics.nn.modules.conv import Conv
    from ultralytics.utils import IterableSimpleNamespace

    from yoloprune.sources.safe_pickle import _allowed, _resolve

    assert _allowed(*_resolve("ultralytics.nn.modules", "Conv")) is Conv  # 8.0.x: modules in one file
    assert _allowed(*_resolve("ultralytics.yolo.utils", "IterableSimpleNamespace")) is IterableSimpleNamespace
    assert _allowed(*_resolve("ultralytics.nn.modules.block", "Silence")) is torch.nn.Identity
    for refused in [("os", "system"), ("builtins", "eval"), ("builtins", "getattr.__call__"), ("torch", "load"),
                    ("ultralytics.nn.tasks", "torch_safe_load"), ("ultralytics.utils", "checks"),
                    ("torch.nn.modules.module", "register_module_forward_hook"), ("subprocess", "Popen")]:
        assert _allowed(*refused) is None, refused


@pytest.mark.parametrize("args", [{"data": "D:\\field\\tea\\data.yaml", "imgsz": 64, "project": "D:\\runs",
                                   "model": "C:\\Users\\me\\yolov8n.pt", "save_dir": "D:\\runs\\train3"},
                                  None])
def test_metadata_from_another_machine_falls_back_to_defaults(project, args, tmp_path, capsys):
    """Windows paths in train_args, or no train_args at all: every command still runs, and says what it used."""
    root, data, ckpt = project
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    if args is None:
        ck.pop("train_args", None)
    else:
        ck["train_args"] = args
    ck["yoloprune"] = {"source": {"path": "D:\\gone\\best.pt", "sha256": "0" * 64}}
    other = tmp_path / "other.pt"
    torch.save(ck, other)
    assert main(["info", "--model", str(other)]) == 0
    out = capsys.readouterr().out
    assert ("image size 64 px" if args else "image size 640 px (default") in out
    assert main(["prune", "--model", str(other), "--ratio", "0.2", "--out", str(tmp_path / "p.pt")]) == 0
    printed = capsys.readouterr()
    assert "no calibration images" in printed.out and (not args or "D:\\field" in printed.out)
    assert main(["val", "--model", str(tmp_path / "p.pt"), "--data", str(data), "--imgsz", "64"]) == 0
    assert main(["recover", "--model", str(other), "--images", str(data.parent / "d" / "images" / "train"),
                 "--epochs", "1", "--imgsz", "64", "--out", str(tmp_path / "r.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--teacher" in err[0], err


def test_a_windows_path_in_a_checkpoint_loads_as_this_machines_path(project, tmp_path):
    """Checkpoints written on Windows pickle ``pathlib.WindowsPath`` (train_args' save_dir), which cannot be built
    on Linux: it is read as this OS's path class."""
    import pathlib

    class WindowsSaved:
        def __reduce__(self):
            return pathlib.WindowsPath, ("D:\\runs\\train3",)

    _, _, ckpt = project
    data = torch.load(ckpt, map_location="cpu", weights_only=False)
    data["train_args"] = {**data.get("train_args", {}), "save_dir": WindowsSaved()}
    torch.save(data, tmp_path / "win.pt")
    _, loaded = yp.load_model(tmp_path / "win.pt")
    assert type(loaded["train_args"]["save_dir"]) is type(Path()) and str(loaded["train_args"]["save_dir"]) == "D:\\runs\\train3"
