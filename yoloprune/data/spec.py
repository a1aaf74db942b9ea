"""Read and check an Ultralytics dataset before any evaluation or training: every broken input becomes one
DataError.

A data yaml with labels of boxes (``class cx cy w h``), polygons (``class x1 y1 x2 y2 x3 y3 ...``: segmentation,
and oriented boxes as four corners) or, when the yaml names a ``kpt_shape``, boxes with keypoints (pose); or a
classification folder (``split/class/image``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import yaml

from yoloprune import sources
from yoloprune.errors import DataError

IMG_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def image_files(images_dir: str | Path) -> list[Path]:
    """The image files of a folder, sorted by name."""
    return sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMG_SUFFIXES)


@dataclass
class DataSpec:
    yaml: Path  # absolute
    root: Path
    names: list[str]
    splits: dict[str, Path]  # split -> images dir (a classification split: its folder of class folders)
    kpt_shape: tuple[int, int] | None = None  # pose data: keypoints per object, values per keypoint
    classify: bool = False  # a classification folder: the class is the image's folder, no label files

    def images(self, split: str) -> Path:
        return self.splits[split]

    def labels(self, split: str) -> Path:
        return _labels_dir(self.splits[split])

    def files(self, split: str) -> list[Path]:
        """The split's image files, sorted (a classification split's: class by class)."""
        if self.classify:
            return [f for d in sorted(x for x in self.splits[split].iterdir() if x.is_dir()) for f in image_files(d)]
        return image_files(self.splits[split])

    @property
    def kind(self) -> str:
        return "a classification folder" if self.classify else "pose data" if self.kpt_shape else "box/polygon data"

    def annotations(self, split: str) -> Path | None:
        return self.splits[split].parent.parent / "annotations" / f"instances_{split}.json"

    def check_model(self, model) -> None:
        """Refuse a model whose classes, task or keypoints do not fit this data."""
        adapter = sources.adapter_for(model)
        nc = adapter.num_classes(model)
        if nc != len(self.names):
            raise DataError(f"model predicts {nc} classes but {self.yaml} has {len(self.names)}")
        task = adapter.task(model)
        kpt = adapter.kpt_shape(model) if task == "pose" else None
        if (task == "classify") != self.classify or (task == "pose") != bool(self.kpt_shape) or kpt != self.kpt_shape:
            raise DataError(f"{self.yaml} is {self.kind}" + (f" with kpt_shape {list(self.kpt_shape)}" if self.kpt_shape
                            else "") + f"; the model is a {task} model" + (f" with kpt_shape {list(kpt)}" if kpt else ""))


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
    """Parse the yaml (or read a classification folder) and check ``split``: folders exist, labels are valid,
    images decode."""
    path = Path(path).resolve()
    if path.is_dir():
        return _classification_folder(path, split)
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
    spec = DataSpec(path, root, names, splits, _kpt_shape(raw.get("kpt_shape"), path))
    _check_split(spec, split)
    return spec


def _kpt_shape(raw, path: Path) -> tuple[int, int] | None:
    if raw is None:
        return None
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, int) for v in raw) and raw[0] > 0
            and raw[1] in (2, 3)):
        raise DataError(f"{path}: kpt_shape must be [keypoints, 2 or 3], got {raw!r}")
    return raw[0], raw[1]


def _classification_folder(root: Path, split: str) -> DataSpec:
    """A classification dataset: ``root/split/class/image``; classes are the train split's folders, sorted."""
    splits = {k: root / k for k in ("train", "val", "test") if (root / k).is_dir()}
    if split not in splits:
        raise DataError(f"{root}: no '{split}' folder (a classification dataset holds split/class/image)")
    names = sorted(d.name for d in splits.get("train", splits[split]).iterdir() if d.is_dir())
    if not names:
        raise DataError(f"{splits[split]}: no class folders")
    spec = DataSpec(root, root, names, splits, classify=True)
    for d in sorted(x for x in splits[split].iterdir() if x.is_dir()):
        if d.name not in names:
            raise DataError(f"{d}: class folder not in the train split's classes")
        for img in image_files(d):
            if cv2.imread(str(img), cv2.IMREAD_UNCHANGED) is None:
                raise DataError(f"cannot decode image {img}")
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
        _check_label_file(labels / f"{img.stem}.txt", len(spec.names), spec.kpt_shape)


def _check_label_file(path: Path, nc: int, kpt_shape: tuple[int, int] | None = None) -> None:
    if not path.exists():
        return  # an image without objects
    form = "class cx cy w h" + (f" and {kpt_shape[0]} keypoints of {kpt_shape[1]}" if kpt_shape else
                                "' or 'class x1 y1 x2 y2 x3 y3 ... (a polygon)")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            c, values = int(fields[0]), [float(v) for v in fields[1:]]
        except (ValueError, TypeError, IndexError):
            raise DataError(f"{path}:{n}: expected '{form}', got {line.strip()!r}") from None
        if not 0 <= c < nc:
            raise DataError(f"{path}:{n}: class id {c} out of range [0, {nc})")
        why = _label_problem(values, kpt_shape)
        if why:
            raise DataError(f"{path}:{n}: {why}")


def _label_problem(values: list[float], kpt_shape: tuple[int, int] | None) -> str | None:
    """What is wrong with one label line's numbers (after the class id), or None."""
    count = 4 + (kpt_shape[0] * kpt_shape[1] if kpt_shape else 0)
    if kpt_shape or len(values) < 6:  # a box, with keypoints for pose data
        if len(values) != count:
            return f"expected {count + 1} values, got {len(values) + 1}"
        x, y, w, h = values[:4]
        if not (0 <= x <= 1 and 0 <= y <= 1 and 0 < w <= 1 and 0 < h <= 1):
            return f"box {x} {y} {w} {h} outside the normalised range"
        points = [v for i, v in enumerate(values[4:]) if i % kpt_shape[1] < 2] if kpt_shape else []
    elif len(values) % 2:
        return f"a polygon needs x y pairs, got {len(values)} numbers"
    else:
        points = values
    if not all(0 <= v <= 1 for v in points):
        return "point outside the normalised range"
    return None
