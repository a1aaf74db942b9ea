"""Fine-tuning keeps the pruned architecture (in a fresh process, from the path alone); slimming shrinks gammas."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_project

import yoloprune as yp
from yoloprune.slimming import gammas, penalised_bns
from yoloprune.train import TrainConfig, train
from yoloprune.ultra import DetectionModel, save_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data, _ = tiny_project(root, n_train=8, n_val=4, ratio=0.5)
    return root, data


def _widths(model) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in model.state_dict().items()}


def test_finetune_in_a_subprocess_keeps_every_width_and_loads_in_plain_ultralytics(tiny, tmp_path):
    root, data = tiny
    out = tmp_path / "ft.pt"
    r = subprocess.run([sys.executable, "-m", "yoloprune", "finetune", "--model", str(root / "model.pt"),
                        "--data", str(data), "--epochs", "1", "--imgsz", "128", "--batch", "4", "--workers", "0",
                        "--project", str(tmp_path / "run"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    pruned = torch.load(root / "model.pt", weights_only=False)["model"]
    probe = textwrap.dedent(f"""
        import os, sys
        os.environ["YOLO_OFFLINE"] = "1"
        from ultralytics import YOLO
        m = YOLO({str(out)!r})
        print({{n: tuple(p.shape) for n, p in m.model.state_dict().items()}})
        assert "yoloprune" not in sys.modules
    """)
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert eval(p.stdout.strip().splitlines()[-1]) == _widths(pruned)
    trained = torch.load(out, weights_only=False)["model"]
    changed = any(not torch.equal(a.float(), b.float()) for a, b in
                  zip(pruned.state_dict().values(), trained.state_dict().values(), strict=True))
    assert changed, "one epoch of fine-tuning must move the weights"


def _mean_gamma(path, masks) -> float:
    model = torch.load(path, weights_only=False)["model"].float()
    return float(gammas(model, masks).mean())


def test_sparsity_training_shrinks_prunable_gammas(tiny, tmp_path):
    root, data = tiny
    runs = {}
    step_every_batch = {"nbs": 4, "warmup_epochs": 0, "optimizer": "SGD", "lr0": 0.02}
    for sr in (0.0, 1.0):
        out = tmp_path / f"sr{sr}.pt"
        train(TrainConfig(model=str(root / "model.pt"), data=str(data), out=str(out), epochs=2, imgsz=128,
                          batch=4, workers=0, sr=sr, project=str(tmp_path / f"run{sr}"), extra=step_every_batch))
        runs[sr] = out
    base = torch.load(root / "model.pt", weights_only=False)["model"].float()
    masks = penalised_bns(base)
    assert masks and _mean_gamma(runs[1.0], masks) < _mean_gamma(runs[0.0], masks) - 0.01
    run = tmp_path / "run1.0" / "run"
    assert (run / "gamma_hist.png").stat().st_size > 1000
    header = (run / "results.csv").read_text().splitlines()[0]
    assert "slim/frac|gamma|<0.01" in header and "slim/mean|gamma|" in header


def test_frozen_bns_are_not_penalised():
    model = DetectionModel("yolo11n.yaml", verbose=False)
    masks = penalised_bns(model)
    attention = [n for n in masks if ".attn." in n]  # q/k/v, projection and positional channels are frozen
    assert not attention and "model.10.cv1.bn" not in masks, attention
    assert masks["model.0.bn"].all() and "model.10.m.0.ffn.0.bn" in masks  # plain and FFN-hidden channels are


def test_finetune_refuses_model_with_other_class_count(tiny, tmp_path):
    root, data = tiny
    coco = tmp_path / "coco80.pt"
    save_checkpoint(DetectionModel("yolov8n.yaml", verbose=False), coco)
    with pytest.raises(yp.DataError, match="classes"):
        train(TrainConfig(model=str(coco), data=str(data), out=str(tmp_path / "o.pt"), epochs=1, finetune=True))
