"""Checkpoints of old Ultralytics releases (tests/fixtures/ultralytics-old, written by each release's trainer) load
under the allow-list, prune, and come out as today's Ultralytics writes them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_project

import yoloprune as yp
from yoloprune.cli import main

OLD = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics-old"
RELEASES = ["8.0.40", "8.0.114", "8.1.0", "8.2.0", "8.3.0"]


@pytest.mark.parametrize("release", RELEASES)
def test_an_old_release_checkpoint_prunes_and_loads_in_plain_ultralytics(release, tmp_path):
    src = OLD / f"ultralytics-{release}.pt"
    model, ckpt = yp.load_model(src)
    assert ckpt["version"] == release and type(model).__name__ == "DetectionModel"
    out = tmp_path / "pruned.pt"
    assert main(["prune", "--model", str(src), "--ratio", "0.3", "--no-calib", "--imgsz", "64", "--out", str(out)]) == 0
    assert main(["compact", "--model", str(out), "--out", str(tmp_path / "compact.pt")]) == 0
    code = textwrap.dedent("""
        import json, sys, torch
        from ultralytics import YOLO
        shapes = []
        for f in sys.argv[1:]:
            m = YOLO(f).model.float().eval()
            with torch.no_grad():
                y = m(torch.rand(1, 3, 64, 64))
            shapes.append([list(y[0].shape), sum(p.numel() for p in m.parameters())])
        print(json.dumps(shapes))
    """)
    run = subprocess.run([sys.executable, "-c", code, str(src), str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    (shape0, n0), (shape1, n1) = json.loads(run.stdout.strip().splitlines()[-1])
    assert shape0 == shape1 == [1, 6, 84] and n1 < 0.85 * n0  # 4 box + 2 class rows, 84 anchors at 64 px
    written = torch.load(out, map_location="cpu", weights_only=False)
    assert written["version"] != release and "train_args" in written  # as today's Ultralytics writes it


@pytest.mark.slow
def test_an_old_release_checkpoint_evaluates_and_fine_tunes(tmp_path):
    data, _ = tiny_project(tmp_path, n_train=4, n_val=2)
    src = OLD / "ultralytics-8.0.40.pt"
    assert main(["val", "--model", str(src), "--data", str(data), "--imgsz", "64"]) == 0
    pruned, tuned = tmp_path / "p.pt", tmp_path / "t.pt"
    assert main(["prune", "--model", str(src), "--ratio", "0.3", "--no-calib", "--imgsz", "64", "--out", str(pruned)]) == 0
    assert main(["finetune", "--model", str(pruned), "--data", str(data), "--epochs", "1", "--imgsz", "64",
                 "--project", str(tmp_path), "--out", str(tuned)]) == 0
    shapes = {k: v.shape for k, v in yp.load_model(pruned)[0].state_dict().items()}
    assert {k: v.shape for k, v in yp.load_model(tuned)[0].state_dict().items()} == shapes
