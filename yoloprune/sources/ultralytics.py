"""The adapter for Ultralytics models (YOLOv5u / v8 / 11 / ...): loading and saving checkpoints, model checks,
FLOPs, width fix-ups, its validator, trainer and ONNX exporter.

Everything else in yoloprune sees a plain ``nn.Module`` through ``yoloprune.sources``. Importing it changes nothing
in the process's environment; the command line sets ``YOLO_OFFLINE`` before Ultralytics is first imported.
"""

from __future__ import annotations

import copy
import io
from datetime import datetime
from pathlib import Path
from typing import Any

import torch  # noqa: E402
from torch import nn  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.nn.modules import Bottleneck, C2f, Detect  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils.torch_utils import get_flops  # noqa: E402

from yoloprune import __version__  # noqa: E402
from yoloprune.atomic import atomic_write  # noqa: E402
from yoloprune.errors import UNREADABLE_CHECKPOINT, CheckpointError  # noqa: E402
from yoloprune.graph import Graph, trace  # noqa: E402


def _read_checkpoint(path: Path) -> dict:
    """torch.load a file, turning every way it can be broken into one CheckpointError naming it."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint is a directory, not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except UNREADABLE_CHECKPOINT as e:
        why = f"{type(e).__name__}: {e}" if isinstance(e, ModuleNotFoundError) else type(e).__name__
        raise CheckpointError(f"not a readable PyTorch checkpoint: {path} ({why})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema") or ckpt.get("model"), nn.Module):
        raise CheckpointError(f"not an Ultralytics checkpoint (no 'model' module inside): {path}")
    return ckpt


def check_detection_model(model: nn.Module, where: str = "model") -> DetectionModel:
    """Refuse anything that is not an Ultralytics detection model (classify, segment, pose, obb, ...)."""
    if not isinstance(model, DetectionModel) or getattr(model, "task", "detect") not in (None, "detect"):
        kind = getattr(model, "task", None) or type(model).__name__
        raise CheckpointError(f"{where} is not a detection model (got {kind}); yoloprune prunes YOLO detectors")
    if type(model) is not DetectionModel:  # SegmentationModel, PoseModel, ... subclass DetectionModel
        raise CheckpointError(f"{where} is a {type(model).__name__}, not a plain detection model")
    return model


def load_model(src: Any) -> tuple[DetectionModel, dict]:
    """Resolve a YOLO object, DetectionModel or checkpoint path to an FP32 DetectionModel and its checkpoint dict.

    A path is read, never written. The returned checkpoint dict carries ``train_args`` and yoloprune metadata so
    that saving keeps them.
    """
    if isinstance(src, YOLO):
        return check_detection_model(src.model, "YOLO object"), dict(getattr(src, "ckpt", None) or {})
    if isinstance(src, nn.Module):
        return check_detection_model(src), {}
    if isinstance(src, (str, Path)):
        path = Path(src)
        if path.suffix in (".yaml", ".yml"):
            try:
                return DetectionModel(str(path), verbose=False), {}
            except Exception as e:  # an unknown yaml is user input: report it in one line
                raise CheckpointError(f"cannot build a model from {path}: {e}") from None
        ckpt = _read_checkpoint(path)
        model = (ckpt.get("ema") or ckpt["model"]).float()
        model = getattr(model, "student_model", model)  # a distillation run's checkpoint: the student alone
        model = check_detection_model(model, str(path))
        model.args = {**as_dict(getattr(model, "args", None)), **as_dict(ckpt.get("train_args"))}
        return model, ckpt
    raise CheckpointError(f"cannot load a model from {type(src).__name__}")


def as_dict(args: Any) -> dict:
    """Training args are stored as a dict or as Ultralytics' IterableSimpleNamespace."""
    if args is None:
        return {}
    return dict(args) if isinstance(args, dict) else dict(vars(args))


def save_checkpoint(model: nn.Module, path: str | Path, ckpt: dict | None = None, meta: dict | None = None) -> Path:
    """Write an Ultralytics-format checkpoint atomically: FP16 model, no EMA or optimizer, train_args kept.

    The file loads with plain ``ultralytics.YOLO(path)``; it pickles only Ultralytics and torch classes.
    """
    ckpt = ckpt or {}
    model = copy.deepcopy(model).cpu().half().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    out = {
        "date": datetime.now().isoformat(),
        "version": ULTRALYTICS_VERSION,
        "epoch": -1,
        "best_fitness": None,
        "model": model,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": as_dict(ckpt.get("train_args") or getattr(model, "args", None)),
        "train_metrics": ckpt.get("train_metrics"),
        "yoloprune": {**(ckpt.get("yoloprune") or {}), **(meta or {}), "version": __version__},
    }
    buf = io.BytesIO()
    torch.save(out, buf)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def sha256(path: str | Path) -> str:
    import hashlib

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


def gflops(model: nn.Module, imgsz: int = 640) -> float:
    """GFLOPs at ``imgsz`` through Ultralytics' own (thop) counter."""
    return float(get_flops(model, imgsz))


def detect_heads(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, Detect)]


def head_output_convs(model: nn.Module) -> set[str]:
    """Names of the detection heads' bare output convs (box, class, DFL): plain Conv2d not wrapped in a Conv+BN."""
    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, Detect):
            for sub, m in mod.named_modules():
                parent = mod.get_submodule(sub.rpartition(".")[0]) if "." in sub else mod
                if isinstance(m, nn.Conv2d) and not hasattr(parent, "bn"):
                    names.add(f"{name}.{sub}")
    return names


def fixed_layers(model: nn.Module) -> set[str]:
    """Layers whose weights are constants of the architecture, never to be refit: the DFL's integral conv."""
    from ultralytics.nn.modules.block import DFL

    return {f"{n}.conv" for n, m in model.named_modules() if isinstance(m, DFL)}


def residual_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Blocks computing ``x + cv2(cv1(x))`` (Ultralytics' Bottleneck with its shortcut on, as in C3/C2f/C3k2/C3k),
    by name. ``cv2`` is a Conv (conv, bn, act); when its output is exactly zero the block is an identity."""
    return {n: m for n, m in model.named_modules() if isinstance(m, Bottleneck) and m.add}


def fix_widths(model: nn.Module) -> None:
    """Refresh width attributes that forward paths read after channels were removed.

    The ONNX exporter swaps C2f (and C3k2) to ``forward_split``, which splits at ``self.c``; the graph keeps
    C2f's two halves equal (``chunk`` couples them), so ``c`` is half of cv1's new width.
    """
    for m in model.modules():
        if isinstance(m, C2f):
            m.c = m.cv1.conv.out_channels // 2


def contract_outputs(out: Any) -> list[torch.Tensor]:
    """The outputs whose channels users rely on. An eval-mode detection model returns ``(y, raw)``: raw holds the
    head's input feature maps beside its predictions, and only y's layout is the model's contract."""
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return [out[0]]
    if isinstance(out, torch.Tensor):
        return [out]
    raise TypeError(f"unexpected model output {type(out).__name__}")


def num_classes(model: nn.Module) -> int:
    heads = detect_heads(model)
    return int(heads[-1].nc) if heads else len(getattr(model, "names", {}) or {})


def trace_model(model: nn.Module) -> Graph:
    """The coupling graph of a detector: traced at twice its largest stride, with only its predictions frozen."""
    return trace(model, imgsz=2 * max_stride(model), outputs=contract_outputs)


def max_stride(model: nn.Module) -> int:
    stride = getattr(model, "stride", None)
    return int(stride.max()) if isinstance(stride, torch.Tensor) and stride.numel() else 32


check = check_detection_model


def is_wrapper(obj: Any) -> bool:
    """An Ultralytics ``YOLO`` object (an ``nn.Module`` that wraps the model)."""
    from ultralytics.engine.model import Model

    return isinstance(obj, Model)
save = save_checkpoint
NMS_IOU = 0.7  # Ultralytics' validator default
OUTPUT_CHANNEL_AXIS = 1  # (batch, 4 + classes, anchors)


def validator_class():
    from ultralytics.models.yolo.detect import DetectionValidator

    return DetectionValidator


def export_onnx(model: nn.Module, ckpt: dict, out: str | Path, imgsz: int, dynamic: bool, simplify: bool) -> Path:
    """ONNX through Ultralytics' own exporter, run on a private copy of the checkpoint in a temp folder."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="yoloprune-export-") as tmp:
        src = save_checkpoint(model, Path(tmp) / "model.pt", ckpt)
        produced = YOLO(str(src)).export(format="onnx", imgsz=imgsz, dynamic=dynamic, simplify=simplify,
                                         device="cpu", verbose=False)
        return atomic_write(out, lambda t: shutil.copyfile(produced, t))
