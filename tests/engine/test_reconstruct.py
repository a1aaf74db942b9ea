"""Calibration: least-squares reconstruction, the data-aware criterion and its registry, BN recalibration, and
calibration images from a folder."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import build, rel_err
from torch import nn

import yoloprune as yp
from yoloprune.api import apply, trace_model
from yoloprune.engine.graph import trace
from yoloprune.engine.importance import CRITERIA, ScoreContext, group_scores, register
from yoloprune.engine.prune import refit_jobs
from yoloprune.engine.reconstruct import _sample, foreground, recalibrate_bn, reconstruct, record


def _images(n: int, seed: int, size: int = 64) -> torch.Tensor:
    """Smooth random images: low-resolution noise upsampled, so neighbouring pixels correlate as in photos."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def _prune_with(model, ratio: float, calib: torch.Tensor, refit: bool):
    """The prune flow, step by step, so that the test sees the plan and the refit jobs."""
    graph = trace_model(model)
    ref = record(model, calib, graph.bn_after)
    p = yp.plan(model, graph, yp.PruneConfig(method="l1"), ratio)
    jobs = refit_jobs(model, p)
    apply(model, p, ref.mean)
    if refit:
        reconstruct(model, ref, jobs)
    return p, jobs


def _post_bn(model, names: dict[str, str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each named layer's output after its BatchNorm (or its own output without one) on images ``x``."""
    got, hooks = {}, []
    modules = dict(model.named_modules())
    for layer, bn in names.items():
        mod = modules[bn or layer]
        hooks.append(mod.register_forward_hook(lambda _m, _a, out, key=layer: got.__setitem__(key, out.detach())))
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return got


def test_reconstruction_lowers_every_refit_layers_error_on_held_back_images():
    full = build("yolov8n.yaml")
    calib, held = _images(24, 0), _images(8, 1)
    mean_only, refit = copy.deepcopy(full), copy.deepcopy(full)
    _prune_with(mean_only, 0.4, calib, refit=False)
    _, jobs = _prune_with(refit, 0.4, calib, refit=True)
    fitted = {n: j for n, j in jobs.items() if j.after < j.before}
    assert len(fitted) >= 0.8 * len(jobs) and len(jobs) > 20
    bn_after = trace_model(full).bn_after
    names = {n: bn_after.get(n) for n in fitted}
    ref, a, b = (_post_bn(m, names, held) for m in (full, mean_only, refit))
    worse = []
    for n, job in fitted.items():
        target = ref[n][:, job.keep_out]
        err_a, err_b = rel_err(a[n], target), rel_err(b[n], target)
        if err_b >= err_a:
            worse.append((n, err_a, err_b))
    assert not worse, worse
    x = _images(2, 2)
    out_full = full.eval()(x)[0]
    assert rel_err(refit.eval()(x)[0], out_full) < rel_err(mean_only.eval()(x)[0], out_full)


def test_reconstruction_is_exact_when_the_removed_channels_are_zero():
    model = build("yolov8n.yaml")
    graph = trace_model(model)
    p = yp.plan(model, graph, yp.PruneConfig(method="l1"), 0.4)
    yp.mask(model, p)
    x = _images(2, 3)
    masked = model.eval()(x)[0]
    calib = _images(16, 4)
    ref = record(model, calib, graph.bn_after)
    jobs = refit_jobs(model, p)
    apply(model, p, ref.mean)
    reconstruct(model, ref, jobs)
    assert jobs and all(j.before < 1e-3 for j in jobs.values())  # float32 round-off
    assert rel_err(model.eval()(x)[0], masked) < 1e-4


def test_prune_with_calibration_reconstructs_and_loads_in_plain_ultralytics(tmp_path):
    model = build("yolov8n.yaml")
    calib = _images(16, 5)
    report = yp.prune(model, config=yp.PruneConfig(imgsz=64), target=yp.Ratio(0.3), calibration=calib)
    assert report.refits and "reconstructed" in report.table()
    path = yp.save_checkpoint(report.model, tmp_path / "p.pt")
    probe = textwrap.dedent(f"""
        import os, sys
        os.environ["YOLO_OFFLINE"] = "1"
        import numpy as np
        from ultralytics import YOLO
        m = YOLO({str(path)!r})
        m.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, verbose=False)
        print(sum(p.numel() for p in m.model.parameters()))
        assert "yoloprune" not in sys.modules
    """)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.split()[-1]) == report.after.params


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.SiLU(),
                        nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))
    with torch.no_grad():
        net[0].weight.zero_()
        for c in range(4):  # channel c reads input channel c alone; input channel 2 will always be 0
            net[0].weight[c, c] = 1.0 + c
        net[1].running_var.fill_(1.0)
    return net.eval()


def test_act_prunes_a_channel_with_constant_activations_first_where_l1_keeps_it():
    net = _tiny_net()
    images = torch.rand(8, 4, 16, 16)
    images[:, 2] = 0  # channel 2 of the first conv sees nothing: its activation is a constant
    graph = trace(net, example=images[:1])
    ctx = ScoreContext(dict(net.named_modules()), graph.bn_after, record(net, images, graph.bn_after))
    (units,) = graph.groups().values()
    act = group_scores(units, ctx, "act")
    l1 = group_scores(units, ctx, "l1")
    dead = [i for i, u in enumerate(units) if u.producers[0].index == 2][0]
    assert int(act.argmin()) == dead and act[dead] < 0.05 * act.max()
    assert int(l1.argmin()) != dead, "l1 sees a large filter and keeps it"


def test_criteria_registry_accepts_new_criteria_and_refuses_unknown_names(capsys):
    @register("channel_index", help="test criterion: lower channels first")
    def channel_index(unit, ctx):
        return float(unit.producers[0].index)

    try:
        model = build("yolov8n.yaml")
        p = yp.plan(model, trace_model(model), yp.PruneConfig(method="channel_index"), 0.2)
        assert p.remove
    finally:
        CRITERIA.pop("channel_index")
    with pytest.raises(yp.ConfigError, match="unknown method"):
        yp.PruneConfig(method="nope").validate()
    with pytest.raises(yp.ConfigError, match="calibration"):
        yp.PruneConfig(method="act").validate()
    from yoloprune.cli import main

    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", "x.pt", "--method", "nope"])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bn_recalibration_matches_batch_statistics():
    net = _tiny_net()
    images = torch.rand(8, 4, 16, 16)
    net[1].running_mean.fill_(5.0)
    assert recalibrate_bn(net, images, batch=8) == 2
    with torch.no_grad():
        y = net[0](images)
    assert torch.allclose(net[1].running_mean, y.mean((0, 2, 3)), atol=1e-5)
    assert not net.training and net[1].momentum == 0.1


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from conftest import tiny_project

    root = tmp_path_factory.mktemp("calib")
    data, ckpt = tiny_project(root, n_train=4, n_val=2)
    return root, data, ckpt


def test_calibration_from_a_folder_of_unlabeled_images(tiny_ckpt, tmp_path, capsys):
    from yoloprune.cli import main

    root, _, ckpt = tiny_ckpt
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.jpg"), np.random.default_rng(i).integers(0, 255, (96, 128, 3), np.uint8))
    out = tmp_path / "p.pt"
    assert main(["prune", "--model", str(ckpt), "--ratio", "0.3", "--calib-data", str(folder), "--calib-images", "2",
                 "--calib-imgsz", "64", "--imgsz", "64", "--out", str(out)]) == 0
    assert "reconstructed" in capsys.readouterr().out and out.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"not a jpeg")
    for folder, message in ((empty, "no images"), (bad, "cannot decode")):
        code = main(["prune", "--model", str(ckpt), "--ratio", "0.3", "--calib-data", str(folder),
                     "--out", str(tmp_path / "q.pt")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "q.pt").exists()


def test_pruning_in_steps_reaches_the_one_step_size_and_refits_towards_the_original():
    calib = _images(16, 6)
    one = yp.prune(build("yolov8n.yaml"), config=yp.PruneConfig(imgsz=64), target=yp.Ratio(0.4), calibration=calib)
    three = yp.prune(build("yolov8n.yaml"), config=yp.PruneConfig(imgsz=64, steps=3), target=yp.Ratio(0.4), calibration=calib)
    assert "in 3 steps" in three.action and three.refits
    assert three.after.gflops <= one.after.gflops * (1 + 1e-6)
    assert three.after.gflops > 0.9 * one.after.gflops, "the same ratio means the same size in any number of steps"
    with pytest.raises(yp.ConfigError, match="steps"):
        yp.PruneConfig(steps=0).validate()


def test_depthwise_convs_are_left_to_mean_compensation_with_the_reason_reported():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n-ghost.yaml", verbose=False).eval()
    x = _images(2, 7)
    shape = model(x)[0].shape
    report = yp.prune(model, config=yp.PruneConfig(imgsz=64), target=yp.Ratio(0.3), calibration=_images(8, 8))
    assert report.refits and report.refit_skipped
    assert set(report.refit_skipped.values()) == {"depthwise/grouped conv"}
    assert "not refit (mean compensation only)" in report.table()
    out = model.eval()(x)[0]
    assert out.shape == shape and torch.isfinite(out).all()


def test_focused_sampling_spends_half_the_draw_where_the_head_scores_high():
    focus = [torch.zeros(4, 16, 16)]
    focus[0][:, :4, :4] = 1.0  # 64 of 1024 positions hold objects
    gen = torch.Generator().manual_seed(0)
    for shape, cells in (((4, 8, 16, 16), 4), ((4, 8, 32, 32), 8), ((4, 8, 8, 8), 2)):  # the level; up; down
        pos = _sample(torch.Size(shape), 64 * shape[2] // 16, gen, focus)
        assert len(set(map(tuple, pos.tolist()))) == len(pos)  # distinct positions
        inside = ((pos[:, 1] < cells) & (pos[:, 2] < cells)).float().mean()
        share = 4 * cells * cells / (4 * shape[2] * shape[3])
        assert 0.35 < inside < 0.65 and share < 0.07, (shape, inside)
        plain = _sample(torch.Size(shape), len(pos), gen)
        assert ((plain[:, 1] < cells) & (plain[:, 2] < cells)).float().mean() < 0.15


def test_foreground_maps_are_the_heads_sigmoid_scores_per_level():
    model = build("yolov8n.yaml").eval()
    x = _images(3, 6)
    hooks = yp.api.hooks_for(model)
    maps = foreground(model, x, list(hooks.head_outputs(model)), lambda out: hooks.scores(model, out))
    assert [tuple(m.shape) for m in maps] == [(3, 8, 8), (3, 4, 4), (3, 2, 2)]
    scores = model(x)[0][:, 4:]  # (N, nc, anchors): the decoded class scores, level by level
    flat = torch.cat([m.flatten(1) for m in maps], dim=1)
    assert torch.allclose(flat, scores.amax(1), atol=1e-5)


def test_calibration_images_without_the_models_objects_get_one_warning_line(tmp_path, capsys):
    """The shipped tea-bud detector on plain grey-and-noise images detects nothing: calibrating on them would fit
    the pruned model to scenes without tea buds, and the command says so in one line. On tea-bud images: silent."""
    from yoloprune.cli import main

    root = Path(__file__).resolve().parents[2]
    blank = tmp_path / "blank"
    blank.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        cv2.imwrite(str(blank / f"{i}.jpg"), (120 + rng.normal(0, 8, (160, 160, 3))).clip(0, 255).astype(np.uint8))
    args = ["prune", "--model", str(root / "weights" / "teabud-yolov8n.pt"), "--ratio", "0.2", "--imgsz", "160",
            "--calib-imgsz", "160", "--calib-images", "8"]
    assert main([*args, "--calib-data", str(blank), "--out", str(tmp_path / "a.pt")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "detects something" in line]
    assert len(warned) == 1 and "on only 0 of 8 calibration images" in warned[0], warned
    assert main([*args, "--steps", "3", "--calib-data", str(blank), "--out", str(tmp_path / "s.pt")]) == 0
    assert sum("detects something" in line for line in capsys.readouterr().err.splitlines()) == 1  # not per step
    assert main([*args, "--calib-data", str(root / "data" / "teabud.yaml"), "--out", str(tmp_path / "b.pt")]) == 0
    assert "detects something" not in capsys.readouterr().err


def test_a_deep_prune_without_calibration_images_gets_one_warning_line(tmp_path, capsys):
    """--no-calib at 0.3 takes the tea-bud yolov8n under 0.85x GFLOPs, where uncalibrated prunes lose most of their
    detections: one line says so. A shallow uncalibrated prune, and slimming's BN-gamma prune, are silent."""
    from yoloprune.cli import main

    root = Path(__file__).resolve().parents[2]
    args = ["prune", "--model", str(root / "weights" / "teabud-yolov8n.pt"), "--imgsz", "160", "--no-calib"]
    assert main([*args, "--ratio", "0.3", "--out", str(tmp_path / "a.pt")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "without calibration images" in line]
    assert len(warned) == 1 and "GFLOPs" in warned[0], warned
    assert main([*args, "--ratio", "0.05", "--out", str(tmp_path / "b.pt")]) == 0
    assert "without calibration images" not in capsys.readouterr().err
    assert main([*args, "--ratio", "0.3", "--method", "bn", "--out", str(tmp_path / "c.pt")]) == 0
    assert "without calibration images" not in capsys.readouterr().err
