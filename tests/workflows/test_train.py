"""Fine-tuning keeps the pruned architecture (in a fresh process, from the path alone); slimming shrinks gammas."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_project
from ultralytics.nn.tasks import DetectionModel

import yoloprune as yp
from yoloprune.api import save_checkpoint, trace_model
from yoloprune.engine.slimming import gammas, penalised_bns
from yoloprune.workflows.train import TrainConfig, train


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
    run_dir = tmp_path / "run" / "finetune"
    assert f"run folder: {run_dir}" in r.stdout and (run_dir / "results.csv").is_file()
    assert "epoch 1/1  box_loss" in r.stdout and "min left" in r.stdout  # one progress line per epoch
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
    masks = penalised_bns(base, trace_model(base))
    assert masks and _mean_gamma(runs[1.0], masks) < _mean_gamma(runs[0.0], masks) - 0.01
    run = tmp_path / "run1.0" / "train-sparse"
    assert (run / "gamma_hist.png").stat().st_size > 1000
    header = (run / "results.csv").read_text().splitlines()[0]
    assert "slim/frac|gamma|<0.01" in header and "slim/mean|gamma|" in header


def test_frozen_bns_are_not_penalised():
    model = DetectionModel("yolo11n.yaml", verbose=False)
    masks = penalised_bns(model, trace_model(model))
    attention = [n for n in masks if ".attn." in n]  # q/k/v, projection and positional channels are frozen
    assert not attention and "model.10.cv1.bn" not in masks, attention
    assert masks["model.0.bn"].all() and "model.10.m.0.ffn.0.bn" in masks  # plain and FFN-hidden channels are


def test_finetune_refuses_model_with_other_class_count(tiny, tmp_path):
    root, data = tiny
    coco = tmp_path / "coco80.pt"
    save_checkpoint(DetectionModel("yolov8n.yaml", verbose=False), coco)
    with pytest.raises(yp.DataError, match="classes"):
        train(TrainConfig(model=str(coco), data=str(data), out=str(tmp_path / "o.pt"), epochs=1, finetune=True))


@pytest.fixture(scope="module")
def pruned_from(tmp_path_factory):
    """An unpruned tiny detector and a copy pruned from it whose metadata records it as the source."""
    from conftest import tiny_project

    from yoloprune.sources import source_meta

    root = tmp_path_factory.mktemp("distil")
    data, base = tiny_project(root, n_train=8, n_val=4)
    report = yp.prune(str(base), ratio=0.4, imgsz=128)
    pruned = save_checkpoint(report.model, root / "pruned.pt", report.ckpt, source_meta(str(base)))
    return root, data, base, pruned


def test_distilled_finetune_from_the_recorded_source_keeps_widths_and_drops_the_teacher(pruned_from, tmp_path):
    root, data, base, pruned = pruned_from
    out = tmp_path / "ft.pt"
    r = subprocess.run([sys.executable, "-m", "yoloprune", "finetune", "--model", str(pruned), "--data", str(data),
                        "--epochs", "1", "--imgsz", "128", "--batch", "4", "--workers", "0", "--teacher",
                        "--project", str(tmp_path / "run"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"distilling from {base.resolve()}" in r.stdout
    header = (tmp_path / "run" / "finetune" / "results.csv").read_text().splitlines()[0]
    assert "train/dis_loss" in header, "the distillation loss was trained"
    ckpt = torch.load(out, weights_only=False)
    assert type(ckpt["model"]) is DetectionModel
    assert not any("teacher" in n or "projector" in n for n in ckpt["model"].state_dict())
    assert "distill_model" not in ckpt["train_args"]
    assert ckpt["yoloprune"]["source"]["path"] == str(base.resolve()), "the source stays recorded"
    before = torch.load(pruned, weights_only=False)["model"]
    assert _widths(ckpt["model"]) == _widths(before)
    probe = f"from ultralytics import YOLO; m = YOLO({str(out)!r}); print(sum(p.numel() for p in m.model.parameters()))"
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "YOLO_OFFLINE": "1"})
    assert p.returncode == 0 and int(p.stdout.split()[-1]) == sum(q.numel() for q in before.parameters())


def test_iterative_pruning_reaches_the_gflops_target_and_writes_its_step_table(pruned_from, tmp_path):
    from yoloprune.api import gflops, load_model
    from yoloprune.workflows.iterative import IterativeConfig, iterative_prune

    root, data, base, _ = pruned_from
    out = tmp_path / "it.pt"
    df = iterative_prune(IterativeConfig(model=str(base), data=str(data), out=str(out), target=yp.Gflops(0.6), steps=2,
                                         epochs=1, imgsz=128, batch=4, workers=0, calib_images=4))
    assert list(df["step"]) == [0, 1, 2]
    g0 = gflops(load_model(str(base))[0], 128)
    got = gflops(load_model(str(out))[0], 128) / g0
    assert 0.55 < got <= 0.6 + 1e-6, got
    assert abs(df["gflops_ratio"].iloc[-1] - got) < 1e-6 and df["gflops_ratio"].iloc[1] > got
    table = (tmp_path / "it.steps.md").read_text()
    assert table.startswith("| step | gflops_ratio") and len(table.splitlines()) == 5
    assert (tmp_path / "it.steps.csv").exists()


def test_fitted_projectors_map_student_features_onto_the_teacher(pruned_from):
    import types

    from ultralytics.nn.distill_model import DistillationModel

    from yoloprune.api import load_model
    from yoloprune.sources.ultralytics.train import fit_projectors

    _, _, base, pruned = pruned_from
    student, _ = load_model(str(pruned))
    student.args = types.SimpleNamespace(imgsz=64, dis=1.0)
    dm = DistillationModel(teacher_model=str(base), student_model=student)
    images = torch.rand(4, 3, 64, 64)

    def errors():
        got, hooks = {}, []
        for i, (s, t) in enumerate(zip(dm.feats_idx[:-1], dm.teacher_feats_idx[:-1], strict=True)):
            hooks.append(dm.student_model.model[s].register_forward_hook(
                lambda _m, _a, o, k=("s", i): got.__setitem__(k, o)))
            hooks.append(dm.teacher_model.model[t].register_forward_hook(
                lambda _m, _a, o, k=("t", i): got.__setitem__(k, o)))
        with torch.no_grad():
            dm.student_model.eval()(images)
            dm.teacher_model.eval()(images)
            out = [float((p(got[("s", i)]) - got[("t", i)]).pow(2).mean() / got[("t", i)].var())
                   for i, p in enumerate(dm.projector)]
        for h in hooks:
            h.remove()
        return out

    before = errors()
    assert fit_projectors(dm, images) == len(dm.projector) == 3
    after = errors()
    assert all(a < 0.5 * b for a, b in zip(after, before, strict=True)), (before, after)


@pytest.mark.slow
def test_ddp_workers_rebuild_the_pruned_model_and_the_penalty(tiny, tmp_path, monkeypatch):
    """``finetune/train-sparse --device 0,1``: Ultralytics' DDP launcher pickles the trainer (class, arguments,
    model, callbacks) into a worker script and starts it once per GPU. Without GPUs the launch is simulated: where
    it would start ``torch.distributed.run``, the launcher's own worker script runs once, in a fresh process, on
    the CPU (only the process group itself needs GPUs). The worker must train the pruned widths with the user's
    penalty, not the default one, and the parent must pick up the worker's weights."""
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_command

    launched = []

    def launch(self):
        cmd, file = generate_ddp_command(self)  # exactly what a multi-GPU run writes
        launched.append(cmd)
        try:
            subprocess.run([sys.executable, file], check=True, timeout=600)
        finally:
            ddp_cleanup(self, file)

    monkeypatch.setattr(BaseTrainer, "_do_train", launch)
    root, data = tiny
    out = tmp_path / "sparse.pt"
    train(TrainConfig(model=str(root / "model.pt"), data=str(data), out=str(out), epochs=1, imgsz=128, batch=4,
                      workers=0, sr=3e-3, project=str(tmp_path / "run")))
    assert launched and "torch.distributed.run" in launched[0]
    pruned = torch.load(root / "model.pt", weights_only=False)["model"]
    trained = torch.load(out, weights_only=False)["model"]
    assert _widths(trained) == _widths(pruned)
    results = (tmp_path / "run" / "train-sparse" / "results.csv").read_text().splitlines()
    header, row = results[0].split(","), results[1].split(",")
    assert float(row[header.index("slim/sr")]) == pytest.approx(3e-3)  # not the class default 1e-4
    assert header.count("slim/sr") == 1 and len(results) == 2  # callbacks ran once per event, one epoch


@pytest.mark.timing
def test_iterative_pruning_to_a_speedup_times_every_step(pruned_from, tmp_path):
    from yoloprune.workflows.iterative import IterativeConfig, iterative_prune

    root, data, base, _ = pruned_from
    out = tmp_path / "it.pt"
    df = iterative_prune(IterativeConfig(model=str(base), data=str(data), out=str(out), target=yp.Speedup(1.3), steps=2,
                                         epochs=0, imgsz=192, batch=4, workers=0, calib_images=4))
    assert list(df["step"]) == [0, 1, 2] and df["speedup"].iloc[0] == 1.0
    assert 1.1 < df["speedup"].iloc[-1] < 1.6, df  # each step timed beside the original, in alternation
    assert df["gflops_ratio"].iloc[1] > df["gflops_ratio"].iloc[2]
    from yoloprune.speed.runtimes import runtime

    block = runtime("onnxruntime").channel_block(8)  # measured on this machine (cached by the search)
    widths = [m.out_channels for m in yp.load_model(str(out))[0].modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(w % block == 0 for w in widths) > 0.8 * len(widths), "widths in the runtime's channel block"
    with pytest.raises(yp.ConfigError, match="needs a Ratio, Gflops or Speedup target"):  # one field: one target
        IterativeConfig(model=str(base), data=str(data), out=str(out)).validate()
    with pytest.raises(yp.ConfigError, match="needs a Ratio, Gflops or Speedup target"):
        IterativeConfig(model=str(base), data=str(data), out=str(out), target=yp.Latency(5.0)).validate()
