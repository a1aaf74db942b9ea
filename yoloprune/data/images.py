"""Images without labels: letterboxed as Ultralytics' validator does, from a data yaml's split or a plain folder;
the calibration images of pruning and reconstruction."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from yoloprune import sources
from yoloprune.data.spec import image_files, load_data
from yoloprune.defaults import CALIB_IMAGES, CALIB_IMGSZ
from yoloprune.errors import ConfigError, DataError, YoloPruneError


def letterboxed_images(data: str | Path, split: str, n: int, imgsz: int) -> np.ndarray:
    """Up to ``n`` images of ``split``, letterboxed to ``imgsz`` as Ultralytics does, RGB, (N, 3, H, W) in [0, 1]."""
    return letterboxed_files(load_data(data, split).files(split)[:n], imgsz)


def letterboxed_files(files: list[Path], imgsz: int) -> np.ndarray:
    """Image files letterboxed to ``imgsz`` as Ultralytics does, RGB, (N, 3, H, W) in [0, 1]."""
    return np.ascontiguousarray(np.stack([_letterboxed(_read(f), imgsz) for f in files]), dtype=np.float32) / 255.0


def _read(file: Path) -> np.ndarray:
    img = cv2.imread(str(file), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot decode image {file}")
    return img


def _letterboxed(img: np.ndarray, imgsz: int) -> np.ndarray:
    """A BGR image letterboxed as Ultralytics does, RGB, (3, H, W)."""
    return sources.letterbox(np.ascontiguousarray(img), imgsz)[..., ::-1].transpose(2, 0, 1)


def image_folder(folder: str | Path, n: int) -> list[Path]:
    """Up to ``n`` image files of a folder (or of its ``images/`` subfolder), sorted; no labels needed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = image_files(folder) or (image_files(folder / "images") if (folder / "images").is_dir() else [])
    if not files:
        raise DataError(f"{folder}: no images (.jpg, .jpeg, .png, .bmp) to calibrate on")
    return files[:n]


def is_image_folder(source: str | Path) -> bool:
    """A folder of images (no labels needed), not a dataset folder (a classification set has ``train/``)."""
    return Path(source).is_dir() and not (Path(source) / "train").is_dir()


def calibration_images(source: str | Path, imgsz: int = CALIB_IMGSZ, n: int = CALIB_IMAGES,
                       views: bool = False) -> torch.Tensor:
    """Up to ``n`` calibration images, letterboxed as the validator does: (n, 3, imgsz, imgsz). ``source`` is a
    data yaml or a classification dataset folder (its first train images), or a folder of images; no labels are
    read. With ``views`` and fewer than ``n`` files, each file also gives more views of itself (``image_views``)
    until there are ``n``. Off by default: at 0.7x GFLOPs with 8 images it kept 96.9% of the tea-bud yolov8n's
    val mAP50-95 against 95.2% without, but 67% of the tau-fibrils OBB model's agreement against 71% (its crops
    show the EM fibrils larger than the model saw them); with 16 and 24 images it moved either by under a point
    (``benchmarks/few_images.md``)."""
    if n < 1:
        raise ConfigError(f"the number of calibration images must be >= 1, got {n}")
    files = image_folder(source, n) if is_image_folder(source) else load_data(source, "train").files("train")[:n]
    if not views or len(files) >= n:
        return torch.from_numpy(letterboxed_files(files, imgsz))
    return torch.from_numpy(np.ascontiguousarray(np.stack(image_views(files, imgsz, n)), dtype=np.float32) / 255.0)


# The views of one image beyond itself, in the order they are added: flipped; then crops of 0.6 of each side (the
# four corners and the centre) taken from the file at its own resolution, each also flipped. A crop is letterboxed
# to the calibration size like the whole image, so its objects appear 1.7x larger and its detail is the file's own.
CROP = 0.6
_VIEWS = [(None, False), (None, True)] + [(corner, flip) for corner in ("tl", "br", "c", "tr", "bl")
                                          for flip in (False, True)]


def _view(img: np.ndarray, corner: str | None, flip: bool) -> np.ndarray:
    if corner is not None:
        h, w = img.shape[:2]
        ch, cw = max(1, round(h * CROP)), max(1, round(w * CROP))
        y = {"t": 0, "b": h - ch, "c": (h - ch) // 2}[corner[0]]
        x = {"l": 0, "r": w - cw, "c": (w - cw) // 2}[corner[-1]]
        img = img[y:y + ch, x:x + cw]
    return img[:, ::-1] if flip else img


def image_views(files: list[Path], imgsz: int, n: int) -> list[np.ndarray]:
    """``n`` letterboxed views (RGB, (3, H, W), uint8 range) of ``files``: every file as it is first, then each
    file's next view (``_VIEWS``) in turn, until there are ``n`` or every view is used."""
    images = [_read(f) for f in files]
    out = []
    for corner, flip in _VIEWS:
        for img in images:
            if len(out) == n:
                return out
            out.append(_letterboxed(_view(img, corner, flip), imgsz))
    return out


def recorded_train_images(model: str | Path) -> tuple[Path | None, str | None]:
    """The data yaml a checkpoint records as its training data, when it is on this machine and its train images
    read (the calibration images ``prune`` uses when none are given), else None; and what the checkpoint records
    (a path on the machine it was trained on, say), or None."""
    try:
        net, ckpt = sources.load_model(model)
    except YoloPruneError:
        return None, None  # the command itself reports a bad checkpoint
    data = sources.adapter_for(net).train_data(ckpt)
    if data is None or not Path(data).is_file():
        return None, data
    try:
        load_data(data, "train")
    except YoloPruneError:
        return None, data
    return Path(data), data
