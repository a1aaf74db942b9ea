"""Model sources: one adapter per source (``base.Adapter``), in a registry, chosen from the file or the model.

- ``sources.yolov5``: checkpoints and yamls of the original YOLOv5 repository (anchor-based head, saved back in its
  format);
- ``sources.ultralytics``: YOLOv5u / v8 / 11 / ... from the Ultralytics package, and whatever no other adapter claims.

Everything outside ``sources`` reaches a model's source through ``adapter_for`` (a model, a YOLO object or a file)
and the few dispatching helpers below; an adapter for another source is added with
``register``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloprune.errors import CheckpointError, YoloPruneError
from yoloprune.sources.base import Adapter, TrainJob, Validation, ValSettings
from yoloprune.sources.ultralytics import UltralyticsAdapter
from yoloprune.sources.ultralytics.export import Exported
from yoloprune.sources.ultralytics.export import read_exported as read_ultralytics_export
from yoloprune.sources.ultralytics.model import as_dict, letterbox
from yoloprune.sources.yolov5 import YOLOv5Adapter, is_original_yaml

# Asked in order; the last, Ultralytics, claims everything the others do not.
ADAPTERS: list[Adapter] = [YOLOv5Adapter(), UltralyticsAdapter()]


def register(adapter: Adapter) -> None:
    """Add a model source: asked before the built-in ones."""
    ADAPTERS.insert(0, adapter)


def adapter_for(src: Any) -> Adapter:
    """The adapter of a model (for a loaded one: the engine's hooks), a YOLO object, or a checkpoint or yaml path."""
    return next(a for a in ADAPTERS if a.claims(src))


def load_model(src: Any) -> tuple[nn.Module, dict]:
    """A YOLO object, model, model yaml or checkpoint path -> (FP32 model, checkpoint dict). Paths are only read.

    A file is untrusted input: whatever is wrong with it (a flipped byte, a missing key, a tensor of the wrong
    shape) is one CheckpointError naming it, and a model that loads must also run one small forward pass."""
    adapter = adapter_for(src)
    if not isinstance(src, (str, Path)):
        return adapter.load(src)
    try:
        model, ckpt = adapter.load(src)
        _runs(adapter, model)
    except YoloPruneError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a broken file is the file's, said in one line
        what = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CheckpointError(f"{src}: not a usable checkpoint ({type(e).__name__}{': ' + what if what else ''})") \
            from None
    return model, ckpt


def _runs(adapter: Adapter, model: nn.Module) -> None:
    """One forward pass on a small blank image, in eval mode, leaving the model as it was."""
    s = 2 * adapter.max_stride(model)
    p = next(model.parameters(), None)
    was_training = model.training
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, s, s, dtype=p.dtype if p is not None else torch.float32))
    model.train(was_training)


def build_model(yaml: str | Path, nc: int | None = None) -> nn.Module:
    """A fresh model from a model yaml of any source (an original YOLOv5 yaml names its anchors)."""
    return adapter_for(yaml).build(yaml, nc)


def save_checkpoint(model: nn.Module, path: str | Path, ckpt: dict | None = None, meta: dict | None = None) -> Path:
    """Write ``model`` in its source's own checkpoint format, atomically."""
    return adapter_for(model).save(model, path, ckpt, meta)


EXPORTED_FOLDERS = ("_openvino_model", "_ncnn_model")  # the folder names Ultralytics' runtimes are told by


def is_exported(src: Any) -> bool:
    """Whether ``src`` names an exported model (an ONNX file, or an OpenVINO / ncnn folder) rather than a
    checkpoint."""
    if not isinstance(src, (str, Path)):
        return False
    path = Path(src)
    return path.suffix.lower() == ".onnx" or path.name.endswith(EXPORTED_FOLDERS)


def read_exported(src: str | Path) -> Exported:
    """An exported model's task, classes and image size, from the metadata Ultralytics' exporter writes."""
    if not (Path(src).is_file() or Path(src).is_dir()):
        raise YoloPruneError(f"exported model not found: {src}")
    return read_ultralytics_export(src)


def exported_validator(kind: str, settings: ValSettings, source: str = "Ultralytics"):
    """A validator for exported files of task ``kind`` written from a model of ``source`` (an adapter's name, as
    ``read_exported`` gives it); Ultralytics' AutoBackend runs them."""
    adapter = next((a for a in ADAPTERS if a.name == source), None)
    if adapter is None:
        raise CheckpointError(f"exported {source} files cannot be scored: no such model source")
    return adapter.exported_validator(kind, settings)


def train_imgsz(src: Any) -> int | None:
    """The image size a checkpoint was trained at (Ultralytics' ``train_args``, the original repository's ``opt``),
    or an exported file's fixed size."""
    if is_exported(src):
        try:
            return read_exported(src).imgsz
        except YoloPruneError:
            return None  # the command itself reports a bad file
    try:
        model, ckpt = load_model(src)
    except YoloPruneError:
        return None  # the command itself reports a bad checkpoint
    return adapter_for(model).train_imgsz(ckpt)


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_meta(src: Any) -> dict:
    """Metadata naming the checkpoint a model was pruned from (path and sha256), so that fine-tuning can offer it
    as the distillation teacher. Empty when the model did not come from a file. Plain data: loading never needs it."""
    if not isinstance(src, (str, Path)) or not Path(src).is_file() or Path(src).suffix in (".yaml", ".yml"):
        return {}
    return {"source": {"path": str(Path(src).resolve()), "sha256": sha256(src)}}


def recorded_source(ckpt: dict) -> Path | None:
    """The checkpoint a pruned model records as its source, if that file is still there with the same sha256."""
    src = ((ckpt or {}).get("yoloprune") or {}).get("source") or {}
    path = Path(src.get("path", ""))
    if not src.get("path") or not path.is_file() or sha256(path) != src.get("sha256"):
        return None
    return path


__all__ = ["ADAPTERS", "Adapter", "Exported", "TrainJob", "ValSettings", "Validation", "adapter_for", "as_dict",
           "build_model", "exported_validator", "is_exported", "is_original_yaml", "read_exported", "letterbox", "load_model", "recorded_source", "register",
           "save_checkpoint", "sha256", "source_meta", "train_imgsz"]
