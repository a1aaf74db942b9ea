"""YOLO-format labels to COCO ground truth, and the pycocotools evaluation over it."""

from __future__ import annotations

from pathlib import Path

import cv2

IMG_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def image_files(images_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMG_SUFFIXES)


def read_yolo_labels(label_file: Path) -> list[tuple[int, float, float, float, float]]:
    """Rows of (class, cx, cy, w, h) normalised; a missing file means no objects."""
    if not label_file.exists():
        return []
    rows = []
    for line in label_file.read_text().splitlines():
        if line.strip():
            c, *xywh = line.split()
            rows.append((int(c), *map(float, xywh)))
    return rows


def yolo_split_to_coco(images_dir: str | Path, labels_dir: str | Path, names: list[str] | tuple[str, ...]) -> dict:
    """COCO detection ground truth for one split. Image ids follow sorted file order; boxes are in pixels."""
    images, annotations = [], []
    for img_id, img_path in enumerate(image_files(images_dir)):
        img = cv2.imread(str(img_path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"cannot decode image {img_path}")
        h, w = img.shape[:2]
        images.append({"id": img_id, "file_name": img_path.name, "width": w, "height": h})
        for c, cx, cy, bw, bh in read_yolo_labels(Path(labels_dir) / f"{img_path.stem}.txt"):
            x, y, pw, ph = (cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h
            annotations.append({"id": len(annotations) + 1, "image_id": img_id, "category_id": c,
                                "bbox": [x, y, pw, ph], "area": pw * ph, "iscrowd": 0})
    categories = [{"id": i, "name": n} for i, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}
