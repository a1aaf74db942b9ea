"""End-to-end on the shipped data and weights (slow): evaluation reproduces the recorded figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yoloprune.cli import main

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["teabud-yolov8n", "teabud-yolov5nu", "teabud-yolov8n-sparse"])
def test_val_on_shipped_baseline_matches_recorded_figure(name, tmp_path):
    recorded = json.loads((WEIGHTS / f"{name}.val.json").read_text())
    out = tmp_path / "val.json"
    assert main(["val", "--model", str(WEIGHTS / f"{name}.pt"), "--data", str(ROOT / "data/teabud.yaml"),
                 "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["images"] == 100
    assert got["map50_95"] == pytest.approx(recorded["map50_95"], abs=0.01)
    assert abs(got["map50_95"] - got["ultralytics_map50_95"]) < 0.03  # the two evaluations agree
    assert set(got["per_class"]) == {"bud", "bud_leaf"}


@pytest.mark.slow
def test_shipped_picking_point_model_reproduces_its_keypoint_map(tmp_path):
    """The pose model on a freshly generated val split (the same images; keypoint labels and OKS sigma 0.1):
    pycocotools' OKS mAP and Ultralytics' pose mAP as recorded, and a pruned copy keeps its task and kpt_shape."""
    from yoloprune import sources
    from yoloprune.data.teabud import TeaBudConfig, generate

    data = generate(TeaBudConfig(out=tmp_path / "tb", n_train=0, n_val=100, n_test=0, task="pose"))
    recorded = json.loads((WEIGHTS / "teabud-yolov8n-pose.val.json").read_text())
    out = tmp_path / "val.json"
    model = WEIGHTS / "teabud-yolov8n-pose.pt"
    assert main(["val", "--model", str(model), "--data", str(data), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["metric"] == "pose mAP50-95" and got["coco"] and got["images"] == 100
    assert got["map50_95"] == pytest.approx(recorded["map50_95"], abs=0.005)
    assert got["ultralytics_map50_95"] == pytest.approx(recorded["ultralytics_map50_95"], abs=0.005)
    pruned = tmp_path / "p.pt"
    assert main(["prune", "--model", str(model), "--ratio", "0.3", "--out", str(pruned)]) == 0
    net, _ = sources.load_model(pruned)
    assert sources.adapter_for(net).task(net) == "pose" and tuple(net.model[-1].kpt_shape) == (1, 3)
    assert sum(q.numel() for q in net.parameters()) < 0.7 * sum(q.numel() for q in sources.load_model(model)[0].parameters())


@pytest.mark.slow
def test_pruning_the_baseline_costs_accuracy_monotonically(tmp_path):
    """Pruning more of the trained detector with the default one-shot recipe (l1, calibration, reconstruction; no
    fine-tune) makes it smaller and less accurate at each step: the val mAP falls from ratio 0 to 0.3 to 0.6."""
    import yoloprune as yp
    from yoloprune.data.images import calibration_images
    from yoloprune.workflows.evaluate import Evaluator

    data = ROOT / "data/teabud.yaml"
    ev, calib = Evaluator(data, "val"), calibration_images(str(data), n=32)
    maps, params = [ev(WEIGHTS / "teabud-yolov8n.pt").map50_95], []
    for ratio in (0.3, 0.6):
        report = yp.prune(WEIGHTS / "teabud-yolov8n.pt", ratio=ratio, imgsz=320, calibration=calib)
        maps.append(ev(report.model).map50_95)
        params.append(report.after.params)
    assert maps[0] > maps[1] > maps[2], maps
    assert maps[1] > 0.3, maps  # reconstruction keeps a working detector at 0.3
    assert params[0] > params[1] and params[1] < 0.5 * report.before.params


@pytest.mark.slow
def test_reconstruction_keeps_the_real_detector_where_mean_compensation_collapses():
    """The README's headline claim at ratio 0.4 (one-shot, no fine-tuning): l1 with least-squares reconstruction
    keeps most of the baseline's val mAP (0.5245), mean compensation alone loses it; bn on the sparsity-trained
    model (network slimming) keeps a working detector too."""
    import yoloprune as yp
    from yoloprune.data.images import calibration_images
    from yoloprune.workflows.evaluate import Evaluator

    data = ROOT / "data/teabud.yaml"
    ev, calib = Evaluator(data, "val"), calibration_images(str(data))
    got = {}
    for name, method, refit in (("teabud-yolov8n", "l1", True), ("teabud-yolov8n", "l1", False),
                                ("teabud-yolov8n-sparse", "bn", True)):
        cfg = yp.PruneConfig(method=method, imgsz=320, round_to=8, reconstruct=refit)
        report = yp.prune(WEIGHTS / f"{name}.pt", config=cfg, target=yp.Ratio(0.4), calibration=calib)
        assert report.after.params < 0.45 * report.before.params
        assert bool(report.refits) == refit
        got[(name, refit)] = ev(report.model).map50_95
    assert got[("teabud-yolov8n", True)] > 0.40, got
    assert got[("teabud-yolov8n", False)] < 0.05, got
    assert got[("teabud-yolov8n-sparse", True)] > 0.30, got
