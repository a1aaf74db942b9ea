"""YOLO-format labels to COCO ground truth, and the pycocotools evaluation of COCO-format predictions over it."""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import cv2

from yoloprune.data.spec import image_files


def _rows(label_file: Path) -> list[tuple[int, list[float]]]:
    if not label_file.exists():
        return []
    rows = []
    for line in label_file.read_text().splitlines():
        if line.strip():
            c, *values = line.split()
            rows.append((int(c), [float(v) for v in values]))
    return rows


def _box_and_polygon(values: list[float], kpt_shape) -> tuple[tuple[float, float, float, float], list[float] | None]:
    """(cx, cy, w, h) of a label row, and its polygon (x1, y1, ...) when the row is one (segment, oriented box)."""
    if kpt_shape or len(values) < 6:
        return tuple(values[:4]), None
    xs, ys = values[0::2], values[1::2]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), values


def read_yolo_labels(label_file: Path, kpt_shape=None) -> list[tuple[int, float, float, float, float]]:
    """Rows of (class, cx, cy, w, h) normalised (a polygon's enclosing box); a missing file means no objects."""
    return [(c, *_box_and_polygon(v, kpt_shape)[0]) for c, v in _rows(label_file)]


# Ultralytics' pose validator takes an object's area as 0.53 of its box (COCO's keypoint areas are person-mask areas)
POSE_AREA = 0.53


def coco_keypoints(values: list[float], kpt_shape, w: int, h: int) -> dict:
    """COCO ``keypoints`` (x, y, v per point, pixels) of a pose label row; a point of two values counts as visible."""
    n, dims = kpt_shape
    pts = [values[4 + i * dims:4 + (i + 1) * dims] for i in range(n)]
    flat = []
    for p in pts:
        v = int(p[2]) if dims == 3 else 2
        flat += [p[0] * w, p[1] * h, v] if v else [0.0, 0.0, 0]
    return {"keypoints": flat, "num_keypoints": sum(1 for v in flat[2::3] if v > 0)}


def yolo_split_to_coco(images_dir: str | Path, labels_dir: str | Path, names: list[str] | tuple[str, ...],
                       kpt_shape=None) -> dict:
    """COCO ground truth for one split: boxes in pixels (a polygon's enclosing box), the polygon itself as the
    segmentation when a label is one, and keypoints (area: ``POSE_AREA`` of the box, as Ultralytics' pose
    validator) when ``kpt_shape`` is given. Image ids follow sorted file order."""
    images, annotations = [], []
    for img_id, img_path in enumerate(image_files(images_dir)):
        img = cv2.imread(str(img_path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"cannot decode image {img_path}")
        h, w = img.shape[:2]
        images.append({"id": img_id, "file_name": img_path.name, "width": w, "height": h})
        for c, values in _rows(Path(labels_dir) / f"{img_path.stem}.txt"):
            (cx, cy, bw, bh), poly = _box_and_polygon(values, kpt_shape)
            x, y, pw, ph = (cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h
            ann = {"id": len(annotations) + 1, "image_id": img_id, "category_id": c, "bbox": [x, y, pw, ph],
                   "area": pw * ph, "iscrowd": 0}
            if kpt_shape:
                ann |= coco_keypoints(values, kpt_shape, w, h) | {"area": POSE_AREA * pw * ph}
            if poly is not None:
                ann["segmentation"] = [[v * (w if i % 2 == 0 else h) for i, v in enumerate(poly)]]
            annotations.append(ann)
    categories = [{"id": i, "name": n} for i, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


def coco_map(gt: dict, predictions: list[dict], iou_type: str = "bbox", sigmas=None,
             max_dets: int = 100) -> tuple[float, float, list[float]]:
    """(mAP50-95, mAP50, per-category AP50-95) of COCO-format predictions: boxes, masks (``"segm"``) or
    ``"keypoints"`` (OKS with ``sigmas``, one per keypoint), at most ``max_dets`` per image (pycocotools' default
    for boxes; its keypoint default of 20 would cut a dense tea canopy short). No predictions score 0."""
    import numpy as np
    from pycocotools.cocoeval import COCOeval

    cats = [c["id"] for c in gt["categories"]]
    if not predictions:
        return 0.0, 0.0, [0.0] * len(cats)
    coco_gt = _coco(copy.deepcopy(gt))  # pycocotools turns polygons into RLE in place: keep the caller's as it was
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(predictions)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = [max_dets]
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [iou, recall, category], all areas, max_dets

    def mean(p) -> float:  # as COCOeval.summarize: over the cells that have ground truth
        return float(p[p > -1].mean()) if (p > -1).any() else 0.0

    per_class = [mean(precision[:, :, k]) for k in range(len(cats))]
    return mean(precision), mean(precision[0]), per_class
