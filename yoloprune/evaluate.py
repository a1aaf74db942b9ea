"""mAP with pycocotools against COCO ground truth, next to the Ultralytics validator's own mAP.

One pass of Ultralytics' DetectionValidator does the inference and NMS; its COCO-format predictions are then scored
by pycocotools against the split's COCO JSON. ``Evaluator`` checks the data once and keeps its validator (and so
its dataloader), so a sweep evaluates many models without reloading the data.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from yoloprune import sources
from yoloprune.coco import yolo_split_to_coco
from yoloprune.data import DataSpec, load_data


@dataclass
class EvalResult:
    map50_95: float
    map50: float
    ultralytics_map50_95: float
    ultralytics_map50: float
    per_class: dict[str, float]  # class name -> COCO AP50-95
    images: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [f"{'':24}{'mAP50-95':>10}{'mAP50':>10}",
                f"{'pycocotools':24}{self.map50_95:>10.4f}{self.map50:>10.4f}",
                f"{'ultralytics validator':24}{self.ultralytics_map50_95:>10.4f}{self.ultralytics_map50:>10.4f}",
                "per-class AP50-95 (pycocotools): " + ", ".join(f"{k} {v:.4f}" for k, v in self.per_class.items()),
                f"{self.images} images in {self.seconds:.1f} s"]
        return "\n".join(rows)


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


def coco_map(gt: dict, predictions: list[dict]) -> tuple[float, float, list[float]]:
    """(mAP50-95, mAP50, per-category AP50-95) of COCO-format predictions. No predictions score 0."""
    from pycocotools.cocoeval import COCOeval

    cats = [c["id"] for c in gt["categories"]]
    if not predictions:
        return 0.0, 0.0, [0.0] * len(cats)
    coco_gt = _coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(predictions)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [iou, recall, category, area, max_dets]
    per_class = []
    for k in range(len(cats)):
        p = precision[:, :, k, 0, -1]
        per_class.append(float(p[p > -1].mean()) if (p > -1).any() else 0.0)
    return float(max(ev.stats[0], 0.0)), float(max(ev.stats[1], 0.0)), per_class


class Evaluator:
    """Evaluate detectors on one split of one dataset; the data is checked and loaded once. ``iou`` is the NMS
    IoU threshold; by default each source's own validation setting (Ultralytics 0.7, original YOLOv5 0.6)."""

    def __init__(self, data: str | Path, split: str = "val", imgsz: int = 320, batch: int = 16,
                 conf: float = 0.001, iou: float | None = None) -> None:
        self.spec: DataSpec = load_data(data, split)
        self.split, self.imgsz, self.batch, self.conf, self.iou = split, imgsz, batch, conf, iou
        self.gt = self._ground_truth()
        self._ids = {Path(im["file_name"]).stem: im["id"] for im in self.gt["images"]}
        self._tmp = tempfile.TemporaryDirectory(prefix="yoloprune-val-")
        self._validators: dict = {}

    def _ground_truth(self) -> dict:
        ann = self.spec.annotations(self.split)
        if ann is not None and ann.exists():
            return json.loads(ann.read_text())
        return yolo_split_to_coco(self.spec.images(self.split), self.spec.labels(self.split), self.spec.names)

    def _validator_for(self, net):
        """One validator (and so one dataloader) per validator class, i.e. per model source."""
        cls = sources.validator_class(net)
        if cls not in self._validators:
            iou = sources.nms_iou(net) if self.iou is None else self.iou
            args = {"data": str(self.spec.yaml), "split": self.split, "imgsz": self.imgsz, "batch": self.batch,
                    "conf": self.conf, "iou": iou, "save_json": True, "plots": False, "verbose": False,
                    "project": self._tmp.name, "name": "val", "exist_ok": True, "device": "cpu", "workers": 0}
            self._validators[cls] = cls(args=args)
        return self._validators[cls]

    def __call__(self, model) -> EvalResult:
        net, _ = sources.load_model(model)
        self.spec.check_model(net)
        t0 = time.perf_counter()
        validator = self._validator_for(net)
        stats = validator(model=copy.deepcopy(net).float().eval())  # AutoBackend fuses its model in place
        preds = [self._to_gt_ids(p) for p in validator.jdict]
        m, m50, per = coco_map(self.gt, preds)
        return EvalResult(
            map50_95=m, map50=m50,
            ultralytics_map50_95=float(stats["metrics/mAP50-95(B)"]),
            ultralytics_map50=float(stats["metrics/mAP50(B)"]),
            per_class=dict(zip(self.spec.names, per, strict=True)),
            images=len(self.gt["images"]), seconds=time.perf_counter() - t0,
        )

    def _to_gt_ids(self, p: dict) -> dict:
        # Ultralytics numbers non-COCO categories from 1 and names images by file stem
        return {"image_id": self._ids[Path(p["file_name"]).stem], "category_id": int(p["category_id"]) - 1,
                "bbox": p["bbox"], "score": p["score"]}


def evaluate(model, data: str | Path, split: str = "val", **options) -> EvalResult:
    """COCO mAP (pycocotools) and the Ultralytics validator's mAP of ``model`` on ``split`` of ``data``."""
    return Evaluator(data, split, **options)(model)


__all__ = ["EvalResult", "Evaluator", "coco_map", "evaluate"]
