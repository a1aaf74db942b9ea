"""The original YOLOv5 repository's segmentation (v7.0 ``SegmentationModel``, ``Segment`` head with ``Proto``) and
classification (v6.2 on, ``ClassificationModel`` with ``Classify``) models: prune with genuine removal, evaluate
(mask mAP, top-1/top-5), export and save back in their own format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_masked_equals_removed_equals_compacted, contract, max_rel_err, randomize_bn, tiny_task_data

import yoloprune as yp
from yoloprune import sources
from yoloprune.errors import ConfigError
from yoloprune.sources.yolov5 import checkpoint
from yoloprune.sources.yolov5.model import AnchorSegment, ClassifyHead, YOLOv5ClassifyModel, YOLOv5SegmentModel

YAMLS = Path(__file__).resolve().parents[1] / "fixtures" / "yolov5"


def seg_model(nc: int = 3) -> YOLOv5SegmentModel:
    torch.manual_seed(0)
    return randomize_bn(sources.build_model(YAMLS / "yolov5n-seg.yaml", nc=nc)).eval()


def cls_model(nc: int = 3) -> YOLOv5ClassifyModel:
    """As the original ``ClassificationModel(model=detector, nc=nc, cutoff=10)``."""
    torch.manual_seed(0)
    det = sources.build_model(YAMLS / "yolov5n.yaml", nc=2)
    return randomize_bn(YOLOv5ClassifyModel(det, nc=nc)).eval()


MAKE = {"segment": seg_model, "classify": cls_model}


def test_built_models_are_their_task():
    seg, cls = seg_model(), cls_model()
    assert isinstance(seg.model[-1], AnchorSegment) and isinstance(cls.model[-1], ClassifyHead)
    a = sources.adapter_for(seg)
    assert (a.task(seg), a.task(cls), a.num_classes(seg), a.num_classes(cls)) == ("segment", "classify", 3, 3)
    y, protos, maps = seg(torch.rand(1, 3, 128, 128))
    assert y.shape == (1, 3 * (16 * 16 + 8 * 8 + 4 * 4), 5 + 3 + 32) and protos.shape == (1, 32, 32, 32)
    assert 0 <= float(y[..., 4:8].min()) and float(y[..., 4:8].max()) <= 1  # scores decoded, coefficients raw
    assert float(y[..., 8:].min()) < 0
    logits = cls(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 3) and not torch.allclose(logits.softmax(1).sum(1), logits.sum(1))


@pytest.mark.parametrize("task", list(MAKE))
def test_masked_equals_removed_equals_compacted(task):
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    assert_masked_equals_removed_equals_compacted(MAKE[task], 0.4, x)


@pytest.mark.parametrize("task", list(MAKE))
def test_pruned_model_saves_in_the_original_format_and_reloads(task, tmp_path):
    model = MAKE[task]()
    x = torch.rand(1, 3, 128, 128)
    report = yp.prune(model, ratio=0.3, imgsz=128)
    assert report.after.params < 0.8 * report.before.params
    out = sources.save_checkpoint(model, tmp_path / "p.pt")
    names = {f"{m}.{n}" for m, n in checkpoint._pickle_globals(out)}
    want = {"segment": {"models.yolo.SegmentationModel", "models.yolo.Segment", "models.common.Proto"},
            "classify": {"models.yolo.ClassificationModel", "models.common.Classify"}}[task]
    assert want <= names and not any(n.startswith(("yoloprune", "ultralytics")) for n in names), names
    again, _ = sources.load_model(out)
    assert type(again) is type(model)
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in model.parameters())
    assert max_rel_err(contract(again, x), contract(model.half().float(), x)) < 1e-3
    # it unpickles with nothing but stand-ins of the original module names (no yoloprune, no Ultralytics)
    stub = tmp_path / "stub.py"
    stub.write_text(STUB)
    got = subprocess.run([sys.executable, str(stub), str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == [type(model).__name__.replace("YOLOv5", "").replace("Classify", "Classification")
                                  .replace("Segment", "Segmentation"), str(report.after.params)]


STUB = '''
import sys, types, torch
from torch import nn
for name in ("models", "models.common", "models.yolo"):
    sys.modules[name] = types.ModuleType(name)
class Stub(nn.Module):
    def __setstate__(self, state): self.__dict__.update(state)
for mod, names in (("models.common", ("Conv", "C3", "Bottleneck", "SPPF", "Concat", "Proto", "Classify")),
                   ("models.yolo", ("Detect", "Segment", "DetectionModel", "SegmentationModel", "ClassificationModel"))):
    for name in names:
        setattr(sys.modules[mod], name, type(name, (Stub,), {"__module__": mod}))
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
assert not any(m.split(".")[0] in ("yoloprune", "ultralytics") for m in sys.modules), "needed yoloprune/ultralytics"
m = ckpt["model"]
print(type(m).__name__, sum(p.numel() for p in m.parameters()))
'''


def test_segment_evaluation_reports_mask_map(tmp_path):
    data = tiny_task_data(tmp_path / "seg", "segment", n_train=2, n_val=4, size=64)
    path = sources.save_checkpoint(seg_model(), tmp_path / "m.pt")
    result = yp.evaluate(str(path), str(data), "val", imgsz=64)
    assert result.metric == "mask mAP50-95" and 0.0 <= result.map50_95 <= 1.0
    assert result.map50_95 == pytest.approx(result.ultralytics_map50_95, abs=0.05)


def test_classifier_top1_and_top5_are_the_original_model_s(tmp_path):
    """A classifier that always answers class 0: top-1 is the share of class-0 images (val images are classes
    0, 1, 2, 0), top-5 is 1."""
    data = tiny_task_data(tmp_path / "cls", "classify", n_train=3, n_val=4, size=64)
    model = cls_model()
    with torch.no_grad():
        model.model[-1].linear.weight.zero_()
        model.model[-1].linear.bias.copy_(torch.tensor([5.0, 0.0, -5.0]))
    path = sources.save_checkpoint(model, tmp_path / "m.pt")
    result = yp.evaluate(str(path), str(data), "val", imgsz=64)
    assert (result.map50_95, result.map50) == (pytest.approx(0.5), pytest.approx(1.0)), result


def test_classifier_validator_normalises_as_the_original():
    from yoloprune.sources.yolov5.train import IMAGENET_MEAN, IMAGENET_STD, YOLOv5ClassifyValidator

    val = YOLOv5ClassifyValidator(args={"task": "classify", "half": False, "device": "cpu"})
    val.device = torch.device("cpu")
    img = torch.full((1, 3, 4, 4), 0.5)
    out = val.preprocess({"img": img.clone(), "cls": torch.zeros(1, dtype=torch.long)})["img"]
    want = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[0, :, 0, 0], want, atol=1e-6)


def test_segment_validator_scores_are_objectness_times_class_and_keeps_coefficients():
    from yoloprune.sources.yolov5.train import YOLOv5SegmentValidator

    val = YOLOv5SegmentValidator(args={"conf": 0.01, "iou": 0.6, "task": "segment"})
    from ultralytics.utils import ops

    val.end2end, val.nc, val.process = False, 2, ops.process_mask  # as init_metrics sets them
    nm = 4
    y = torch.zeros(1, 2, 5 + 2 + nm)
    y[0, 0, :7] = torch.tensor([32, 32, 16, 16, 0.9, 0.2, 0.8])
    y[0, 1, :7] = torch.tensor([8, 8, 4, 4, 0.001, 1.0, 1.0])  # below conf
    y[0, 0, 7:] = torch.tensor([5.0, -5.0, 5.0, -5.0])
    protos = torch.zeros(1, nm, 16, 16)
    protos[0, 0] = 1.0  # coefficient 5 on this prototype: mask sigmoid(5) inside the box
    out = val.postprocess((y, protos))[0]
    assert out["conf"].tolist() == pytest.approx([0.72, 0.18], abs=1e-5) and out["cls"].tolist() == [1, 0]
    assert out["masks"].shape[0] == 2 and float(out["masks"][0].float().mean()) > 0


@pytest.mark.parametrize("task", list(MAKE))
def test_fine_tuning_segment_or_classify_is_refused_in_one_line(task, tmp_path):
    from yoloprune.sources.base import TrainJob
    from yoloprune.sources.yolov5 import YOLOv5Adapter

    job = TrainJob(model="m.pt", out=tmp_path / "o.pt", overrides={}, given={"model": MAKE[task](), "ema": None},
                   data="d.yaml", epochs=1, imgsz=64)
    with pytest.raises(ConfigError, match=f"{task} models is not offered"):
        YOLOv5Adapter().train(job)
