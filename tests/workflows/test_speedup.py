"""prune --target-speedup: the GFLOPs target whose ONNX export runs that much faster, measured in alternation."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from conftest import build

import yoloprune as yp
from yoloprune.cli import main
from yoloprune.workflows.export import export_onnx
from yoloprune.workflows.speedup import gflops_for_speedup, measure_speedup

IMGSZ = 224


def test_target_speedup_lands_near_the_asked_ratio_measured_again(tmp_path):
    model = build("yolov8n.yaml", nc=2)
    cfg = yp.PruneConfig(imgsz=IMGSZ)
    search = gflops_for_speedup(model, 1.3, cfg, runs=15)
    assert 0.2 < search.gflops < 0.95 and abs(search.measured / 1.3 - 1) < 0.15
    assert all(0.05 <= g <= 1 for g, _ in search.trials)
    with tempfile.TemporaryDirectory() as tmp:  # measured afresh, in alternation with the unpruned export
        base = export_onnx(yp.save_checkpoint(model, Path(tmp) / "b.pt"), Path(tmp) / "b.onnx", IMGSZ)
        again = measure_speedup(model, base, replace(cfg, target_gflops=search.gflops), Path(tmp), 1, 25)
    assert abs(again / 1.3 - 1) < 0.2, (search, again)


def test_target_speedup_refuses_what_it_cannot_mean(tmp_path, capsys):
    ckpt = yp.save_checkpoint(build("yolov8n.yaml", nc=2), tmp_path / "m.pt")
    for extra, says in ((["--target-speedup", "0.8"], "--target-speedup"),
                        (["--target-speedup", "1.5", "--target-gflops", "0.5"], "--target-speedup"),
                        (["--target-latency", "-3"], "--target-latency"),
                        (["--target-latency", "100000"], "already runs in")):
        assert main(["prune", "--model", str(ckpt), "--no-calib", "--imgsz", "64", "--out", str(tmp_path / "o.pt"),
                     *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "o.pt").exists()
