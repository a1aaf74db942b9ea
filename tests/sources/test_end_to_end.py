"""An end-to-end (NMS-free) detection head keeps its one-to-one behaviour through pruning and recovery: the tea-bud
yolov8n with a trained one-to-one head (``fixtures/e2e``), pruned to 0.7x GFLOPs on calibration images, predicts no
more duplicate boxes than the unpruned model and keeps its detections."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

import yoloprune as yp
from yoloprune.data.images import letterboxed_images

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "teabud.yaml"
IMGSZ = 320
CONF = 0.25


def end_to_end_model() -> torch.nn.Module:
    """The shipped tea-bud yolov8n rebuilt with ``end2end: True`` and the one-to-one head of the fixture (trained
    on its frozen features, recipe in ``fixtures/e2e/README.md``), inferring through that head."""
    from ultralytics.nn.tasks import DetectionModel

    base, _ = yp.sources.load_model(ROOT / "weights" / "teabud-yolov8n.pt")
    net = DetectionModel({**base.yaml, "end2end": True}, nc=len(base.names), verbose=False)
    one2one = torch.load(ROOT / "tests" / "fixtures" / "e2e" / "teabud-yolov8n-one2one.pt", weights_only=True)
    missing, unexpected = net.load_state_dict({**base.state_dict(), **one2one}, strict=False)
    assert not unexpected and not [k for k in missing if "num_batches_tracked" not in k]
    net.names, net.args = base.names, base.args
    net.model[-1].end2end = True
    return net.float().eval()


@torch.no_grad()
def detections(net: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    y = net.eval()(x)
    y = y[0] if isinstance(y, (tuple, list)) else y  # (B, max_det, 6): box, score, class
    assert y.ndim == 3 and y.shape[-1] == 6
    return [d[d[:, 4] >= CONF] for d in y]


def duplicates(dets: list[torch.Tensor]) -> int:
    """Pairs of boxes of one class that overlap with IoU above 0.6."""
    pairs = 0
    for d in dets:
        same = d[:, 5][:, None] == d[:, 5][None]
        pairs += int(torch.triu((box_iou(d[:, :4], d[:, :4]) > 0.6) & same, 1).sum())
    return pairs


def matched(ref: list[torch.Tensor], dets: list[torch.Tensor]) -> float:
    """The share of ``ref``'s boxes that ``dets`` finds again (same class, IoU above 0.5)."""
    hit = total = 0
    for a, b in zip(ref, dets, strict=True):
        total += len(a)
        if len(a) and len(b):
            iou = box_iou(a[:, :4], b[:, :4]) * (a[:, 5][:, None] == b[:, 5][None])
            hit += int((iou.max(1).values > 0.5).sum())
    return hit / max(total, 1)


@pytest.mark.slow
def test_a_pruned_end_to_end_head_keeps_its_duplicate_rate_and_recover_matches_the_one_to_one_outputs(tmp_path):
    torch.manual_seed(0)
    net = end_to_end_model()
    x = torch.from_numpy(letterboxed_images(DATA, "val", 40, IMGSZ))
    ref = detections(net, x)
    boxes, dups = sum(len(d) for d in ref), duplicates(ref)
    assert boxes > 100  # a working detector on these images

    report = yp.prune(copy.deepcopy(net), target=yp.Gflops(0.7), imgsz=IMGSZ,
                      calibration=yp.calibration_images(DATA, IMGSZ, 32))
    pruned = report.model
    head = pruned.model[-1]
    assert head.end2end and report.after.gflops < 0.75 * report.before.gflops
    assert head.one2one_cv2[0][0].conv.in_channels == head.cv2[0][0].conv.in_channels  # one input, both branches
    got = detections(pruned, x)
    assert duplicates(got) <= dups + max(2, dups // 5), (duplicates(got), dups)
    assert matched(ref, got) > 0.75 and 0.7 * boxes < sum(len(d) for d in got) < 1.3 * boxes

    # recover's distance is taken over both branches' outputs, one-to-one included
    hooks = yp.sources.adapter_for(pruned)
    assert any("one2one_cv3" in n for n in hooks.head_outputs(pruned))
    from yoloprune.engine.recover import RecoverConfig, recover

    result = recover(pruned, net, hooks, yp.calibration_images(DATA, IMGSZ, 24),
                     RecoverConfig(epochs=2, minutes=None, batch=8))
    assert result.distance <= result.distance_before
    assert duplicates(detections(pruned, x)) <= dups + max(2, dups // 5)
