"""Ultralytics models (YOLOv5u / v8 / 11 / ...) as the adapter sees them: loading and saving checkpoints, model
checks, the task tables, FLOPs, the engine's hooks, the validator and the letterbox (exporting: ``export.py``).

Importing it changes nothing in the process's environment; the command line sets ``YOLO_OFFLINE`` before Ultralytics
is first imported. The original-YOLOv5 adapter reuses the block-level functions here (its checkpoints are remapped
onto Ultralytics' block classes).
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
from ultralytics.nn.modules import OBB, Bottleneck, C2f, Classify, Detect, Pose, Proto, Segment  # noqa: E402
from ultralytics.nn.tasks import (  # noqa: E402
    ClassificationModel,
    DetectionModel,
    OBBModel,
    PoseModel,
    SegmentationModel,
    guess_model_task,
    yaml_model_load,
)
from ultralytics.utils.torch_utils import get_flops  # noqa: E402

from yoloprune import __version__  # noqa: E402
from yoloprune.atomic import atomic_write  # noqa: E402
from yoloprune.engine.graph import Branch  # noqa: E402
from yoloprune.engine.hooks import ResidualBranch  # noqa: E402
from yoloprune.errors import UNREADABLE_CHECKPOINT, CheckpointError  # noqa: E402
from yoloprune.sources.base import Validation, ValSettings  # noqa: E402
from yoloprune.sources.safe_pickle import load as safe_load  # noqa: E402


def _read_checkpoint(path: Path) -> dict:
    """torch.load a file, turning every way it can be broken into one CheckpointError naming it."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint is a directory, not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty: {path}")
    try:
        ckpt = safe_load(path)
    except UNREADABLE_CHECKPOINT as e:
        why = f"{type(e).__name__}: {e}" if isinstance(e, ModuleNotFoundError) else type(e).__name__
        raise CheckpointError(f"not a readable PyTorch checkpoint: {path} ({why})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema") or ckpt.get("model"), nn.Module):
        raise CheckpointError(f"not an Ultralytics checkpoint (no 'model' module inside): {path}")
    return ckpt


# The model classes yoloprune prunes, by task, and the heads each task's model must end in (their subclasses, such
# as YOLO26's Segment26 / Pose26 / OBB26, included). Open-vocabulary (World, YOLOE), RT-DETR, depth and semantic
# segmentation models are other classes, refused.
TASKS: dict[type, str] = {DetectionModel: "detect", SegmentationModel: "segment", PoseModel: "pose", OBBModel: "obb",
                          ClassificationModel: "classify"}
_HEADS: dict[str, tuple[type, ...]] = {"segment": (Segment,), "pose": (Pose,), "obb": (OBB,), "classify": (Classify,)}
_OPEN_VOCABULARY = ("YOLOE", "World")  # heads that subclass Detect or Segment but read text embeddings


def task(model: nn.Module) -> str:
    """The Ultralytics task of a model yoloprune accepts: detect, segment, pose, obb or classify."""
    return TASKS[type(model)]


def check_model(model: nn.Module, where: str = "model") -> nn.Module:
    """Refuse anything but an Ultralytics detect, segment, pose, obb or classify model with a head of that task."""
    kind = TASKS.get(type(model))
    if kind is None:
        what = getattr(model, "task", None) or guess_model_task(model) if isinstance(model, nn.Module) else None
        raise CheckpointError(f"{where} is a {type(model).__name__}" + (f" (task {what})" if what else "") +
                              "; yoloprune prunes Ultralytics detect, segment, pose, obb and classify models")
    head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
    name = type(head).__name__
    if kind != "detect" and not isinstance(head, _HEADS[kind]) or any(w in name for w in _OPEN_VOCABULARY):
        raise CheckpointError(f"{where} is a {kind} model whose head is a {name}, which yoloprune does not prune")
    return model


def build_model(cfg: str | Path | dict, nc: int | None = None) -> nn.Module:
    """A fresh model of the task a yaml describes (SegmentationModel for ``yolov8n-seg.yaml``, ...), checked."""
    d = cfg if isinstance(cfg, dict) else yaml_model_load(cfg)
    kind, head = guess_model_task(d), str(d["head"][-1][-2]) if d.get("head") else ""
    cls = next((c for c, t in TASKS.items() if t == kind), None)
    if cls is None or any(w in head for w in _OPEN_VOCABULARY):
        raise CheckpointError(f"{d.get('yaml_file', cfg)} describes " + (f"a {kind} model" if kind else "a model")
                              + f" with a {head} head; "
                              "yoloprune prunes Ultralytics detect, segment, pose, obb and classify models")
    return check_model(cls(copy.deepcopy(d), nc=nc, verbose=False), str(d.get("yaml_file", "model yaml")))


def load_model(src: Any) -> tuple[nn.Module, dict]:
    """Resolve a YOLO object, model or checkpoint path to an FP32 model (detect, segment, pose, obb or classify)
    and its checkpoint dict.

    A path is read, never written. The returned checkpoint dict carries ``train_args`` and yoloprune metadata so
    that saving keeps them.
    """
    if isinstance(src, YOLO):
        return check_model(src.model, "YOLO object"), dict(getattr(src, "ckpt", None) or {})
    if isinstance(src, nn.Module):
        return check_model(src), {}
    if isinstance(src, (str, Path)):
        path = Path(src)
        if path.suffix in (".yaml", ".yml"):
            try:
                return build_model(path), {}
            except CheckpointError:
                raise
            except Exception as e:  # an unknown yaml is user input: report it in one line
                raise CheckpointError(f"cannot build a model from {path}: {e}") from None
        ckpt = _read_checkpoint(path)
        model = (ckpt.get("ema") or ckpt["model"]).float()
        model = getattr(model, "student_model", model)  # a distillation run's checkpoint: the student alone
        model = check_model(model, str(path))
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

    The file loads with plain ``ultralytics.YOLO(path)`` as a model of its task; it pickles only Ultralytics and torch
    classes.
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
        # the task too: Ultralytics' loader takes it from here (a missing one reads as "detect")
        "train_args": {**as_dict(ckpt.get("train_args") or getattr(model, "args", None)), "task": task(model)},
        "train_metrics": ckpt.get("train_metrics"),
        "yoloprune": {**(ckpt.get("yoloprune") or {}), **(meta or {}), "version": __version__},
    }
    buf = io.BytesIO()
    torch.save(out, buf)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def gflops(model: nn.Module, imgsz: int = 640) -> float:
    """GFLOPs at ``imgsz`` through Ultralytics' own (thop) counter."""
    return float(get_flops(model, imgsz))


def detect_heads(model: nn.Module) -> list[nn.Module]:
    """Detect heads and their task subclasses (Segment, Pose, OBB, ...)."""
    return [m for m in model.modules() if isinstance(m, Detect)]


def head_output_convs(model: nn.Module) -> set[str]:
    """Names of the layers that write the head's outputs, the task's contract: a detection head's bare output convs
    (box, class, DFL, and its task's mask-coefficient, keypoint or angle convs; plain Conv2d not wrapped in a
    Conv+BN), a Proto's output conv (mask prototypes) and a classifier's final Linear (class logits)."""
    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, Detect):
            for sub, m in mod.named_modules():
                parent = mod.get_submodule(sub.rpartition(".")[0]) if "." in sub else mod
                if isinstance(m, nn.Conv2d) and not hasattr(parent, "bn"):
                    names.add(f"{name}.{sub}")
        elif isinstance(mod, Proto):
            names.add(f"{name}.cv3.conv")
        elif isinstance(mod, Classify):
            names.add(f"{name}.linear")
    return names


def head_outputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """The head's output layers but the DFL's constant conv; a detection head's class convs (``cv3``,
    ``one2one_cv3``) are sigmoid logits, every other output a value."""
    fixed = fixed_layers(model)
    logits = {f"{name}.{sub}" for name, mod in model.named_modules() if isinstance(mod, Detect)
              for sub, _ in mod.named_modules() if sub.split(".")[0] in ("cv3", "one2one_cv3")}
    out = {}
    for name in sorted(head_output_convs(model) - fixed):
        layer = model.get_submodule(name)
        width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        out[name] = torch.full((width,), name in logits, dtype=torch.bool)
    return out


def fixed_layers(model: nn.Module) -> set[str]:
    """Layers whose weights are constants of the architecture, never to be refit: the DFL's integral conv."""
    from ultralytics.nn.modules.block import DFL

    return {f"{n}.conv" for n, m in model.named_modules() if isinstance(m, DFL)}


def residual_blocks(model: nn.Module) -> dict[str, ResidualBranch]:
    """Blocks computing ``x + cv2(cv1(x))`` (Ultralytics' Bottleneck with its shortcut on, as in C3/C2f/C3k2/C3k),
    by name. ``cv2`` is a Conv (conv, bn, act); when its output is exactly zero the block is an identity."""
    return {n: ResidualBranch(f"{n}.cv2.conv", f"{n}.cv2.bn", f"{n}.cv2.act" if hasattr(m.cv2, "act") else None)
            for n, m in model.named_modules() if isinstance(m, Bottleneck) and m.add}


def fix_widths(model: nn.Module) -> None:
    """Refresh width attributes that forward paths read after channels were removed.

    The ONNX exporter swaps C2f (and C3k2) to ``forward_split``, which splits at ``self.c``; the graph keeps
    C2f's two halves equal (``chunk`` couples them), so ``c`` is half of cv1's new width.
    """
    for m in model.modules():
        if isinstance(m, C2f):
            m.c = m.cv1.conv.out_channels // 2


def contract_outputs(model: nn.Module, out: Any) -> list[torch.Tensor]:
    """The outputs whose channels users rely on. An eval-mode model returns ``(y, raw)``: raw holds the head's
    input feature maps beside its predictions, and only y's layout is the model's contract. A segmentation model's
    y is ``(predictions, prototypes)``; a classifier's raw is its logits, part of the contract."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple) and out and isinstance(out[0], tuple):  # Segment: ((boxes+coefficients, proto), raw)
        return [t for t in out[0] if isinstance(t, torch.Tensor)]
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return [t for t in out[:2] if isinstance(t, torch.Tensor)]  # Classify: (probabilities, logits)
    raise TypeError(f"unexpected model output {type(out).__name__}")


def num_classes(model: nn.Module) -> int:
    heads = [m for m in model.modules() if isinstance(m, (Detect, Classify))]
    if heads and isinstance(heads[-1], Classify):
        return int(heads[-1].linear.out_features)
    return int(heads[-1].nc) if heads else len(getattr(model, "names", {}) or {})


def training_branches(model: nn.Module) -> tuple[tuple[Branch, ...], tuple[str, ...]]:
    """YOLO26 heads' training-only parts, for the trace: Pose26's keypoint-sigma convs (they read the keypoint
    branch's features) and its flow model (it reads only keypoint coordinates), Proto26's semantic head (it reads
    the fused features)."""
    from ultralytics.nn.modules.block import Proto26
    from ultralytics.nn.modules.head import Pose26

    branches, unused = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, Pose26):
            for pre in ("", "one2one_"):
                sigma, feats = getattr(mod, f"{pre}cv4_sigma", None), getattr(mod, f"{pre}cv4", None)
                if sigma is not None and feats is not None:
                    branches += [Branch(f"{name}.{pre}cv4_sigma.{i}", f"{name}.{pre}cv4.{i}") for i in range(len(sigma))]
            if getattr(mod, "flow_model", None) is not None:
                unused.append(f"{name}.flow_model")
        elif isinstance(mod, Proto26) and getattr(mod, "semseg", None) is not None:
            branches.append(Branch(f"{name}.semseg", f"{name}.feat_fuse", at="input"))
    return tuple(branches), tuple(unused)


def max_stride(model: nn.Module) -> int:
    """The largest stride of a detection head; 32 for a classifier (its stride is 1: no constraint)."""
    stride = getattr(model, "stride", None)
    largest = int(stride.max()) if isinstance(stride, torch.Tensor) and stride.numel() else 1
    return largest if largest > 1 else 32


def is_wrapper(obj: Any) -> bool:
    """An Ultralytics ``YOLO`` object (an ``nn.Module`` that wraps the model)."""
    from ultralytics.engine.model import Model

    return isinstance(obj, Model)


NMS_IOU = 0.7  # Ultralytics' validator default


def output_layout(model: nn.Module) -> list[tuple[int, list[int]]]:
    """Per exported output: the axis that holds its channels, and which of them are pixel coordinates (box, and a
    pose model's keypoint x and y); the others (scores, class index, mask coefficients, angle, keypoint visibility,
    prototypes, class probabilities) are compared absolutely. A head exports ``(B, 4 + nc + extra, anchors)``, or
    ``(B, max_det, 6 + extra)`` ([box, score, class, extra]) when end-to-end; a Segment adds its prototypes; a
    classifier exports ``(B, nc)`` probabilities."""
    head = model.model[-1]
    if isinstance(head, Classify):
        return [(1, [])]
    e2e = bool(getattr(head, "end2end", False))
    axis, extra = (-1, 6) if e2e else (1, 4 + head.nc)
    pixels = list(range(4))
    if isinstance(head, Pose):
        ndim = head.kpt_shape[1]
        pixels += [extra + k * ndim + j for k in range(head.kpt_shape[0]) for j in (0, 1)]
    return [(axis, pixels)] + ([(1, [])] if isinstance(head, Segment) else [])


def validator_class(model: nn.Module | None = None, kind: str | None = None):
    """The Ultralytics validator of the model's task, or of ``kind`` (DetectionValidator, SegmentationValidator,
    ...)."""
    from ultralytics.models import yolo

    kind = kind or (task(model) if model is not None else "detect")
    return {"detect": yolo.detect.DetectionValidator, "segment": _segmentation_validator(),
            "pose": yolo.pose.PoseValidator, "obb": yolo.obb.OBBValidator,
            "classify": yolo.classify.ClassificationValidator}[kind]


def _segmentation_validator():
    """Ultralytics' SegmentationValidator, except that writing COCO JSON (masks as RLE, its own encoder) does not ask
    pip for faster-coco-eval, which only its COCO/LVIS scoring uses: yoloprune scores with pycocotools, offline."""
    from ultralytics.models.yolo.segment import SegmentationValidator
    from ultralytics.utils import ops

    class Validator(SegmentationValidator):
        def init_metrics(self, model: nn.Module) -> None:
            save_json, self.args.save_json = self.args.save_json, False
            try:
                super().init_metrics(model)
            finally:
                self.args.save_json = save_json
            if save_json:
                self.process = ops.process_mask_native  # as the parent chooses for JSON: masks at image size

    return Validator


def trainer_base(kind: str) -> type:
    """Ultralytics' own trainer of a task (DetectionTrainer, SegmentationTrainer, PoseTrainer, ...)."""
    from ultralytics.models import yolo

    return {"detect": yolo.detect.DetectionTrainer, "segment": yolo.segment.SegmentationTrainer,
            "pose": yolo.pose.PoseTrainer, "obb": yolo.obb.OBBTrainer,
            "classify": yolo.classify.ClassificationTrainer}[kind]


# Per task: the keys of the validator's results that hold its primary and secondary metric (defaults.TASK_METRICS)
VAL_KEYS: dict[str, tuple[str, str]] = {
    "detect": ("metrics/mAP50-95(B)", "metrics/mAP50(B)"),
    "segment": ("metrics/mAP50-95(M)", "metrics/mAP50(M)"),
    "pose": ("metrics/mAP50-95(P)", "metrics/mAP50(P)"),
    "obb": ("metrics/mAP50-95(B)", "metrics/mAP50(B)"),
    "classify": ("metrics/accuracy_top1", "metrics/accuracy_top5"),
}


def kpt_shape(model: nn.Module) -> tuple[int, int] | None:
    """A pose model's (keypoints, values per keypoint), read from its head; None for other tasks."""
    head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
    return tuple(head.kpt_shape) if isinstance(head, Pose) else None


def train_imgsz(ckpt: dict, key: str = "train_args") -> int | None:
    """The image size recorded in a checkpoint's training options (``train_args``; the original repository's
    ``opt`` is read with ``key="opt"``)."""
    args = ckpt.get(key)
    size = as_dict(args).get("imgsz") if isinstance(args, dict) or hasattr(args, "__dict__") else None
    if isinstance(size, (list, tuple)) and size:
        size = max(size)
    return size if isinstance(size, int) and size > 0 else None


def train_data(ckpt: dict, key: str = "train_args") -> str | None:
    """The data yaml recorded in a checkpoint's training options (``key`` as for ``train_imgsz``)."""
    args = ckpt.get(key)
    data = as_dict(args).get("data") if isinstance(args, dict) or hasattr(args, "__dict__") else None
    return data if isinstance(data, str) and data else None


def letterbox(image, imgsz: int):
    """One BGR image letterboxed to ``imgsz`` x ``imgsz`` as Ultralytics' validator does (the preprocessing both
    sources evaluate with)."""
    from ultralytics.data.augment import LetterBox

    return LetterBox((imgsz, imgsz), auto=False)(image=image)


class Validator:
    """A validator class of Ultralytics (or a subclass) run as an adapter's validator: one instance, so one
    dataloader, for many models; results read from the validator and handed over as plain data."""

    def __init__(self, cls: type, kind: str, settings: ValSettings, nms_iou: float) -> None:
        args = {"data": settings.data, "split": settings.split, "imgsz": settings.imgsz, "batch": settings.batch,
                "conf": settings.conf, "iou": nms_iou if settings.iou is None else settings.iou,
                "save_json": settings.coco_json, "plots": False, "verbose": False, "project": settings.folder,
                "name": "val", "exist_ok": True, "device": "cpu", "workers": 0}
        self.keys, self.coco_json = VAL_KEYS[kind], settings.coco_json
        self.validator = cls(args=args)

    def __call__(self, model: nn.Module | str) -> Validation:
        """Validate a model, or an exported file (its path; run by Ultralytics' AutoBackend)."""
        model = model if isinstance(model, str) else copy.deepcopy(model).float().eval()  # AutoBackend fuses in place
        stats = self.validator(model=model)
        preds = [_prediction(p) for p in self.validator.jdict] if self.coco_json else []
        return Validation(float(stats[self.keys[0]]), float(stats[self.keys[1]]), preds,
                          getattr(self.validator, "sigma", None))


def _prediction(p: dict) -> dict:
    """One of the validator's JSON predictions in the adapter's form: Ultralytics numbers non-COCO categories from
    1 and names images by file stem."""
    out = {"image": Path(p["file_name"]).stem, "category_id": int(p["category_id"]) - 1, "bbox": p["bbox"],
           "score": p["score"]}
    for key in ("segmentation", "keypoints"):
        if key in p:
            out[key] = p[key]
    return out
