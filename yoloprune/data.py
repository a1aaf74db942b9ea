"""Read and check an Ultralytics data yaml before any evaluation: every broken input becomes one DataError."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from yoloprune.coco import image_files
from yoloprune.errors import DataError


@dataclass
class DataSpec:
    yaml: Path  # absolute
    root: Path
    names: list[str]
    splits: dict[str, Path]  # split -> images dir

    def images(self, split: str) -> Path:
        return self.splits[split]

    def labels(self, split: str) -> Path:
        return _labels_dir(self.splits[split])

    def annotations(self, split: str) -> Path | None:
        return self.splits[split].parent.parent / "annotations" / f"instances_{split}.json"

    def check_model(self, model) -> None:
        from yoloprune.sources import num_classes

        nc = num_classes(model)
        if nc != len(self.names):
            raise DataError(f"model predicts {nc} classes but {self.yaml} has {len(self.names)}")


def _labels_dir(images: Path) -> Path:
    parts = list(images.parts)
    idx = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else None
    if idx is None:
        raise DataError(f"image folder {images} has no 'images' component to map to its labels folder")
    parts[idx] = "labels"
    return Path(*parts)


def _names(raw, path: Path) -> list[str]:
    if isinstance(raw, dict) and all(isinstance(k, int) for k in raw):
        return [str(raw[k]) for k in sorted(raw)]
    if isinstance(raw, list) and raw:
        return [str(n) for n in raw]
    raise DataError(f"{path}: 'names' must be a non-empty list or a {{id: name}} mapping")


def load_data(path: str | Path, split: str) -> DataSpec:
    """Parse the yaml and check ``split``: folders exist, labels are valid, images decode."""
    path = Path(path).resolve()
    if not path.is_file():
        raise DataError(f"data yaml not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid YAML ({type(e).__name__})") from None
    if not isinstance(raw, dict) or "names" not in raw:
        raise DataError(f"{path}: not an Ultralytics data yaml (needs 'names' and split folders)")
    names = _names(raw["names"], path)
    root = Path(raw.get("path") or path.parent)
    root = root if root.is_absolute() else (path.parent / root)
    splits = {k: (root / raw[k]).resolve() for k in ("train", "val", "test") if isinstance(raw.get(k), str)}
    if split not in splits:
        raise DataError(f"{path}: no '{split}' split")
    spec = DataSpec(path, root, names, splits)
    _check_split(spec, split)
    return spec


def _check_split(spec: DataSpec, split: str) -> None:
    images, labels = spec.images(split), spec.labels(split)
    if not images.is_dir():
        raise DataError(f"{spec.yaml}: image folder for '{split}' not found: {images}")
    if not labels.is_dir():
        raise DataError(f"{spec.yaml}: label folder for '{split}' not found: {labels}")
    files = image_files(images)
    if not files:
        raise DataError(f"{images}: no images")
    for img in files:
        if cv2.imread(str(img), cv2.IMREAD_UNCHANGED) is None:
            raise DataError(f"cannot decode image {img}")
        _check_label_file(labels / f"{img.stem}.txt", len(spec.names))


def _check_label_file(path: Path, nc: int) -> None:
    if not path.exists():
        return  # an image without objects
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            c, x, y, w, h = int(fields[0]), *map(float, fields[1:])
        except (ValueError, TypeError, IndexError):
            raise DataError(f"{path}:{n}: expected 'class cx cy w h', got {line.strip()!r}") from None
        if len(fields) != 5:
            raise DataError(f"{path}:{n}: expected 5 values, got {len(fields)}")
        if not 0 <= c < nc:
            raise DataError(f"{path}:{n}: class id {c} out of range [0, {nc})")
        if not (0 <= x <= 1 and 0 <= y <= 1 and 0 < w <= 1 and 0 < h <= 1):
            raise DataError(f"{path}:{n}: box {x} {y} {w} {h} outside the normalised range")


def letterboxed_images(data: str | Path, split: str, n: int, imgsz: int) -> np.ndarray:
    """Up to ``n`` images of ``split``, letterboxed to ``imgsz`` as Ultralytics does, RGB, (N, 3, H, W) in [0, 1]."""
    return letterboxed_files(image_files(load_data(data, split).images(split))[:n], imgsz)


def letterboxed_files(files: list[Path], imgsz: int) -> np.ndarray:
    """Image files letterboxed to ``imgsz`` as Ultralytics does, RGB, (N, 3, H, W) in [0, 1]."""
    from ultralytics.data.augment import LetterBox

    box = LetterBox((imgsz, imgsz), auto=False)
    out = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"cannot decode image {f}")
        out.append(box(image=img)[..., ::-1].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out), dtype=np.float32) / 255.0


def image_folder(folder: str | Path, n: int) -> list[Path]:
    """Up to ``n`` image files of a folder (or of its ``images/`` subfolder), sorted; no labels needed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = image_files(folder) or (image_files(folder / "images") if (folder / "images").is_dir() else [])
    if not files:
        raise DataError(f"{folder}: no images (.jpg, .jpeg, .png, .bmp) to calibrate on")
    return files[:n]
