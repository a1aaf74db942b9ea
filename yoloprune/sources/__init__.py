"""Model sources: one adapter per source, behind one small interface, chosen from the checkpoint or the model.

- ``sources.ultralytics``: YOLOv5u / v8 / 11 / ... from the Ultralytics package.
- ``sources.yolov5``: checkpoints of the original YOLOv5 repository (anchor-based head, saved back in its format).

An adapter is a module. It provides ``check(model)``, ``save(model, path, ckpt, meta)``, ``head_output_convs(model)``,
``num_classes(model)``, ``validator_class()``, ``export_onnx(model, ckpt, out, imgsz, dynamic, simplify)``,
``NMS_IOU`` and ``output_layout(model)``; it may override the defaults that the Ultralytics adapter supplies for the
rest (``residual_blocks``, ``fixed_layers``, ``fix_widths``, ``trace_model``, ``gflops``, ...), which only rely on
torch and Ultralytics' block classes. A source other than Ultralytics also provides ``trainer_class(base)``, its
trainer on yoloprune's fine-tuning or sparsity trainer ``base`` (Ultralytics models train through
``YOLO.train``). ``load_model`` below picks the adapter from the file.
Everything outside ``sources`` calls the functions below.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from yoloprune.errors import CheckpointError, YoloPruneError
from yoloprune.sources import ultralytics as _ultralytics
from yoloprune.sources import yolov5 as _yolov5
from yoloprune.sources.ultralytics import as_dict, recorded_source, sha256, source_meta  # noqa: F401


def adapter(model: nn.Module) -> ModuleType:
    """The adapter of the source ``model`` comes from."""
    return _yolov5 if isinstance(model, _yolov5.YOLOv5Model) else _ultralytics


def _op(name: str, model: nn.Module):
    """The adapter's own ``name``, else the default the Ultralytics adapter supplies."""
    own = adapter(model)
    return getattr(own, name) if hasattr(own, name) else getattr(_ultralytics, name)


def is_original_yaml(path: Path) -> bool:
    """An original YOLOv5 model yaml names its anchors; Ultralytics' yamls (YOLOv5u included) do not."""
    import yaml

    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(d, dict) and "anchors" in d and "depth_multiple" in d


def load_model(src: Any) -> tuple[nn.Module, dict]:
    """A YOLO object, model, model yaml or checkpoint path -> (FP32 model, checkpoint dict). Paths are only read."""
    if isinstance(src, nn.Module) and not _ultralytics.is_wrapper(src):
        return _op("check", src)(src), {}
    if isinstance(src, (str, Path)):
        path = Path(src)
        if path.suffix in (".yaml", ".yml") and path.is_file() and is_original_yaml(path):
            try:
                return _yolov5.YOLOv5Model(path).eval(), {}
            except Exception as e:  # an unknown yaml is user input: report it in one line
                raise CheckpointError(f"cannot build a model from {path}: {e}") from None
        if path.is_file() and path.suffix not in (".yaml", ".yml") and _yolov5.is_original(path):
            return _yolov5.load(path)
    return _ultralytics.load_model(src)


def save_checkpoint(model: nn.Module, path: str | Path, ckpt: dict | None = None, meta: dict | None = None) -> Path:
    """Write ``model`` in its source's own checkpoint format, atomically."""
    return _op("save", model)(model, path, ckpt, meta)


def gflops(model: nn.Module, imgsz: int = 640) -> float:
    return _op("gflops", model)(model, imgsz)


def trace_model(model: nn.Module):
    return _op("trace_model", model)(model)


def contract_outputs(model: nn.Module, out: Any) -> list:
    """The tensors of ``model``'s eval-mode output that are its contract: predictions (and a segmentation model's
    mask prototypes, a classifier's logits), without the raw feature maps some heads return beside them."""
    return _op("contract_outputs", model)(out)


def task(model: nn.Module) -> str:
    """The model's task: detect, segment, pose, obb or classify."""
    return _op("task", model)(model)


def max_stride(model: nn.Module) -> int:
    return _op("max_stride", model)(model)


def head_output_convs(model: nn.Module) -> set[str]:
    return _op("head_output_convs", model)(model)


def residual_blocks(model: nn.Module) -> dict[str, nn.Module]:
    return _op("residual_blocks", model)(model)


def fixed_layers(model: nn.Module) -> set[str]:
    return _op("fixed_layers", model)(model)


def fix_widths(model: nn.Module) -> None:
    return _op("fix_widths", model)(model)


def num_classes(model: nn.Module) -> int:
    return _op("num_classes", model)(model)


def validator_class(model: nn.Module):
    """The Ultralytics validator (subclass) of ``model``'s task that runs it (inference, NMS, metrics, JSON)."""
    return _op("validator_class", model)(model)


def task_metrics(model: nn.Module) -> tuple[str, str, str, str]:
    """(primary metric name, secondary metric name, the validator's keys for them) for ``model``'s task."""
    return _ultralytics.TASK_METRICS[task(model)]


def metric_names(kind: str) -> tuple[str, str]:
    """The names of a task's primary and secondary metric: ("mask mAP50-95", "mask mAP50") for segment, ..."""
    return _ultralytics.TASK_METRICS[kind][:2]


def secondary_metric(primary: str) -> str:
    """The secondary metric that goes with a primary one ("top-5 accuracy" with "top-1 accuracy", ...)."""
    return next((m[1] for m in _ultralytics.TASK_METRICS.values() if m[0] == primary), primary)


def export_onnx(model: nn.Module, ckpt: dict, out: str | Path, imgsz: int, dynamic: bool, simplify: bool) -> Path:
    return _op("export_onnx", model)(model, ckpt, out, imgsz, dynamic, simplify)


def output_layout(model: nn.Module) -> list[tuple[int, list[int]]]:
    """Per exported output: its channel axis and which channels are pixel coordinates (see the adapters)."""
    return _op("output_layout", model)(model)


def nms_iou(model: nn.Module) -> float:
    """The NMS IoU threshold the source's own validation uses, so that mAPs agree with it."""
    return _op("NMS_IOU", model)


def train_imgsz(src: Any) -> int | None:
    """The image size a checkpoint was trained at (Ultralytics' ``train_args``, the original repository's ``opt``)."""
    try:
        _, ckpt = load_model(src)
    except YoloPruneError:
        return None  # the command itself reports a bad checkpoint
    for args in (ckpt.get("train_args"), ckpt.get("opt")):
        size = as_dict(args).get("imgsz") if isinstance(args, dict) or hasattr(args, "__dict__") else None
        if isinstance(size, (list, tuple)) and size:
            size = max(size)
        if isinstance(size, int) and size > 0:
            return size
    return None
