"""mAP with pycocotools against COCO ground truth, next to the Ultralytics validator's own metric, per task.

One pass of the task's Ultralytics validator (detection, segmentation, pose, OBB, classification) does the inference
and NMS and reports the task's metric. For boxes and masks its COCO-format predictions are also scored by pycocotools
against the split's COCO JSON (polygon labels give the masks), and that is the reported mAP; pose (OKS), OBB (rotated
IoU) and classification (top-1 / top-5) report the validator's own. ``Evaluator`` checks the data once and keeps its
validators (and so their dataloaders), so a sweep evaluates many models without reloading the data.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from yoloprune import sources
from yoloprune.data.coco import coco_map, yolo_split_to_coco
from yoloprune.data.spec import DataSpec, load_data
from yoloprune.defaults import TASK_METRICS
from yoloprune.errors import DataError
from yoloprune.sources import ValSettings


@dataclass
class EvalResult:
    map50_95: float
    map50: float
    ultralytics_map50_95: float
    ultralytics_map50: float
    per_class: dict[str, float]  # class name -> COCO AP50-95 (empty where pycocotools does not apply)
    images: int
    seconds: float
    metric: str = "mAP50-95"  # what map50_95 holds: "mask mAP50-95", "pose mAP50-95", "top-1 accuracy", ...
    metric50: str = "mAP50"  # what map50 holds: "mask mAP50", "top-5 accuracy", ...
    coco: bool = True  # map50_95 / map50 come from pycocotools (else from the validator)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        w = max(10, len(self.metric), len(self.metric50)) + 2
        rows = [f"{'':24}{self.metric:>{w}}{self.metric50:>{w}}"]
        if self.coco:
            rows.append(f"{'pycocotools':24}{self.map50_95:>{w}.4f}{self.map50:>{w}.4f}")
        rows.append(f"{'ultralytics validator':24}{self.ultralytics_map50_95:>{w}.4f}{self.ultralytics_map50:>{w}.4f}")
        if self.per_class:
            rows.append(f"per-class {self.metric.replace('mAP', 'AP')} (pycocotools): "
                        + ", ".join(f"{k} {v:.4f}" for k, v in self.per_class.items()))
        return "\n".join([*rows, f"{self.images} images in {self.seconds:.1f} s"])


_COCO_IOU = {"detect": "bbox", "segment": "segm", "pose": "keypoints"}  # tasks pycocotools scores, and how


class Evaluator:
    """Evaluate models on one split of one dataset; the data is checked and loaded once. ``iou`` is the NMS
    IoU threshold; by default each source's own validation setting (Ultralytics 0.7, original YOLOv5 0.6)."""

    def __init__(self, data: str | Path, split: str = "val", imgsz: int = 320, batch: int = 16,
                 conf: float = 0.001, iou: float | None = None) -> None:
        self.spec: DataSpec = load_data(data, split)
        self.split, self.imgsz, self.batch, self.conf, self.iou = split, imgsz, batch, conf, iou
        self.gt = None if self.spec.classify else self._ground_truth()
        self._ids = {Path(im["file_name"]).stem: im["id"] for im in (self.gt or {}).get("images", [])}
        self._tmp = tempfile.TemporaryDirectory(prefix="yoloprune-val-")
        self._validators: dict = {}

    def _ground_truth(self) -> dict:
        ann = self.spec.annotations(self.split)
        if ann is not None and ann.exists():
            gt = json.loads(ann.read_text())
            if not self.spec.kpt_shape or all("keypoints" in a for a in gt.get("annotations", [])):
                return gt  # (pose data whose JSON holds boxes only is read from its labels)
        return yolo_split_to_coco(self.spec.images(self.split), self.spec.labels(self.split), self.spec.names,
                                  self.spec.kpt_shape)

    def _settings(self, kind: str, batch: int) -> ValSettings:
        return ValSettings(data=str(self.spec.yaml), split=self.split, imgsz=self.imgsz, batch=batch, conf=self.conf,
                           iou=self.iou, coco_json=kind in _COCO_IOU, folder=self._tmp.name)

    def _validator_for(self, net):
        """One validator (and so one dataloader) per model source and task."""
        adapter = sources.adapter_for(net)
        key = (type(adapter), adapter.task(net))
        if key not in self._validators:
            # OBB: one image per batch. Rotated NMS over a batch at conf 0.001 on a CPU runs past Ultralytics' NMS
            # time limit on dense images, and the images after it get no boxes (a real YOLOv8n-OBB on EM tiles
            # scored 0.20 against its own detections at batch 16, 0.94 at batch 1)
            self._validators[key] = adapter.validator(net, self._settings(key[1], 1 if key[1] == "obb" else self.batch))
        return self._validators[key]

    def _exported(self, path) -> tuple:
        """An exported file's validator (batch 1 at the file's own size) and task, checked against the data."""
        info = sources.read_exported(path)
        if len(info.names) != len(self.spec.names):
            raise DataError(f"{path} predicts {len(info.names)} classes but {self.spec.yaml} has {len(self.spec.names)}")
        if (info.task == "pose") != bool(self.spec.kpt_shape) or (info.task == "classify") != self.spec.classify:
            raise DataError(f"{self.spec.yaml} is {self.spec.kind}; {path} is a {info.task} model")
        if info.imgsz != self.imgsz:
            raise DataError(f"{path} was exported at {info.imgsz} px; evaluate it at that size (--imgsz {info.imgsz})")
        key = ("exported", info.source, info.task)
        if key not in self._validators:
            self._validators[key] = sources.exported_validator(info.task, self._settings(info.task, 1), info.source)
        return self._validators[key], info.task

    def __call__(self, model) -> EvalResult:
        """Evaluate a model, checkpoint, or exported ONNX file (FP32 or INT8) the same way."""
        t0 = time.perf_counter()
        if sources.is_exported(model):
            validator, kind = self._exported(model)
            run = validator(str(model))
        else:
            net, _ = sources.load_model(model)
            self.spec.check_model(net)
            run = self._validator_for(net)(net)
            kind = sources.adapter_for(net).task(net)
        metric, metric50 = TASK_METRICS[kind]
        iou_type = _COCO_IOU.get(kind)
        if iou_type:
            preds = [self._to_gt_ids(p) for p in run.predictions]
            m, m50, per = coco_map(self.gt, preds, iou_type, sigmas=run.sigmas)
            per_class = dict(zip(self.spec.names, per, strict=True))
        else:
            m, m50, per_class = run.primary, run.secondary, {}
        images = len(self.gt["images"]) if self.gt else len(self.spec.files(self.split))
        return EvalResult(map50_95=m, map50=m50, ultralytics_map50_95=run.primary, ultralytics_map50=run.secondary,
                          per_class=per_class, images=images, seconds=time.perf_counter() - t0,
                          metric=metric, metric50=metric50, coco=iou_type is not None)

    def _to_gt_ids(self, p: dict) -> dict:
        """An adapter's prediction (image named by file stem) as a COCO result on this split's ground truth."""
        return {"image_id": self._ids[p["image"]], **{k: v for k, v in p.items() if k != "image"}}


DETECTION_METRICS = TASK_METRICS["detect"]


def secondary_metric(primary: str) -> str:
    """The secondary metric that goes with a primary one ("top-5 accuracy" with "top-1 accuracy", ...)."""
    return next((m[1] for m in TASK_METRICS.values() if m[0] == primary), primary)


def metric_names(table) -> tuple[str, str]:
    """What a results table's ``map50_95`` and ``map50`` columns hold, from its ``metric`` column (a sweep of a
    segmentation model holds mask mAPs, of a classifier top-1 / top-5 accuracy); detection's mAPs by default."""
    if "metric" not in getattr(table, "columns", ()):
        return DETECTION_METRICS
    found = sorted({str(m) for m in table["metric"].dropna()})
    if len(found) > 1:
        return " / ".join(found), " / ".join(secondary_metric(m) for m in found)
    return (found[0], secondary_metric(found[0])) if found else DETECTION_METRICS


def evaluate(model, data: str | Path, split: str = "val", **options) -> EvalResult:
    """The task's metric of ``model`` on ``split`` of ``data``: COCO mAP (pycocotools) for boxes, masks and keypoints, and the
    Ultralytics validator's own (mAP, pose mAP, OBB mAP, top-1 / top-5) beside it."""
    return Evaluator(data, split, **options)(model)


__all__ = ["EvalResult", "Evaluator", "evaluate"]
