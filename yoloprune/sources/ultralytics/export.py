"""Ultralytics' exporter on a private copy of a checkpoint (ONNX, OpenVINO, ncnn), and the metadata of the files
it writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn
from ultralytics import YOLO

from yoloprune.atomic import atomic_write
from yoloprune.errors import CheckpointError
from yoloprune.sources.ultralytics.model import save_checkpoint


def export_onnx(model: nn.Module, ckpt: dict, out: str | Path, imgsz: int, dynamic: bool, simplify: bool) -> Path:
    """ONNX through Ultralytics' own exporter, run on a private copy of the checkpoint in a temp folder."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="yoloprune-export-") as tmp:
        src = save_checkpoint(model, Path(tmp) / "model.pt", ckpt)
        produced = YOLO(str(src)).export(format="onnx", imgsz=imgsz, dynamic=dynamic, simplify=simplify,
                                         device="cpu", verbose=False)
        return atomic_write(out, lambda t: shutil.copyfile(produced, t))


@dataclass(frozen=True)
class Exported:
    """An ONNX file written by Ultralytics' exporter, as its metadata describes it."""

    path: Path
    task: str
    names: dict
    imgsz: int
    kpt_shape: tuple[int, int] | None = None


def read_exported(path: str | Path) -> Exported:
    """The metadata of an exported ONNX file (one CheckpointError when it is not one Ultralytics wrote)."""
    import ast

    import onnx

    path = Path(path)
    if path.is_dir():  # an OpenVINO or ncnn folder: its metadata.yaml
        return _folder_metadata(path)
    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as e:  # onnx raises DecodeError, ValueError, OSError, ... on a broken file
        raise CheckpointError(f"not a readable ONNX file: {path} ({type(e).__name__})") from None
    try:
        imgsz = ast.literal_eval(meta["imgsz"])
        kpt = ast.literal_eval(meta["kpt_shape"]) if "kpt_shape" in meta else None
        return Exported(path, meta["task"], ast.literal_eval(meta["names"]),
                        max(imgsz) if isinstance(imgsz, (list, tuple)) else int(imgsz),
                        tuple(kpt) if kpt else None)
    except (KeyError, ValueError, SyntaxError, TypeError):
        raise CheckpointError(f"{path}: no Ultralytics export metadata (task, names, imgsz); yoloprune evaluates "
                              "ONNX files written by its export command or Ultralytics' exporter") from None


def _folder_metadata(path: Path) -> Exported:
    import yaml

    try:
        meta = yaml.safe_load((path / "metadata.yaml").read_text())
        imgsz, kpt = meta["imgsz"], meta.get("kpt_shape")
        return Exported(path, meta["task"], dict(meta["names"]),
                        max(imgsz) if isinstance(imgsz, (list, tuple)) else int(imgsz), tuple(kpt) if kpt else None)
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{path}: no readable metadata.yaml (task, names, imgsz); yoloprune evaluates folders "
                              "written by its export command or Ultralytics' exporter") from None


def export_format(model: nn.Module, ckpt: dict, out: str | Path, imgsz: int, fmt: str,
                  int8_data: str | None = None, fraction: float = 1.0) -> Path:
    """Another runtime's format (``openvino``, ``ncnn``) through Ultralytics' exporter, run on a private copy of
    the checkpoint in a temp folder; the produced folder is copied to ``out`` atomically. ``int8_data``: a data
    yaml whose train split (``fraction`` of it) calibrates Ultralytics' INT8 quantization (OpenVINO: NNCF, the
    head kept in float)."""
    import tempfile

    from ultralytics.cfg import DEFAULT_CFG_DICT

    from yoloprune.atomic import atomic_copy_dir

    quantize = {"quantize": 8} if "quantize" in DEFAULT_CFG_DICT else {"int8": True}  # int8= before 8.4
    int8 = {**quantize, "data": int8_data, "split": "train", "fraction": fraction} if int8_data else {}
    with tempfile.TemporaryDirectory(prefix="yoloprune-export-") as tmp:
        src = save_checkpoint(model, Path(tmp) / "model.pt", ckpt)
        produced = YOLO(str(src)).export(format=fmt, imgsz=imgsz, device="cpu", verbose=False, **int8)
        return atomic_copy_dir(produced, out)
