"""Checkpoints of the original YOLOv5 repository: unpickled with a class remap, saved back under the original names.

Each pickled ``models.common`` block maps onto the Ultralytics block of the same name where that block has the same
attributes and forward (checked one by one), onto a small class of ``model.py`` otherwise, and ``models.yolo`` onto
``AnchorDetect`` and ``YOLOv5Model``. Saving reverses the remap, so the file is pickled under the original names
again and the user's own clone of the original repository loads it (``detect.py``, ``val.py``, ``export.py``);
nothing of yoloprune or Ultralytics is needed to unpickle it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
import types
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics.nn import modules as um

from yoloprune import __version__
from yoloprune.atomic import atomic_write
from yoloprune.errors import UNREADABLE_CHECKPOINT, CheckpointError
from yoloprune.sources.safe_pickle import load as safe_load
from yoloprune.sources.yolov5.model import (
    COMMON,
    AnchorDetect,
    AnchorSegment,
    CenterCrop,
    ClassifyHead,
    CrossConv,
    ToTensor,
    YOLOv5ClassifyModel,
    YOLOv5Model,
    YOLOv5SegmentModel,
)

ORIGINAL: dict[tuple[str, str], type] = {("models.common", k): v for k, v in COMMON.items()}
ORIGINAL.update({("models.experimental", "CrossConv"): CrossConv,  # v6.1 and older
                 ("models.experimental", "GhostConv"): um.GhostConv,  # v5.0 and older
                 ("models.experimental", "GhostBottleneck"): um.GhostBottleneck,
                 ("models.yolo", "Detect"): AnchorDetect,
                 ("models.yolo", "DetectionModel"): YOLOv5Model,
                 ("models.yolo", "Model"): YOLOv5Model,  # v6.1 and older
                 ("models.yolo", "Segment"): AnchorSegment,  # v7.0
                 ("models.yolo", "SegmentationModel"): YOLOv5SegmentModel,
                 ("models.yolo", "ClassificationModel"): YOLOv5ClassifyModel,  # v6.2 on
                 # a classifier's ``transforms`` (torchvision's Compose around the repository's own steps)
                 ("utils.augmentations", "CenterCrop"): CenterCrop, ("utils.augmentations", "ToTensor"): ToTensor})
PICKLED_AS: dict[type, list[tuple[str, str]]] = {}  # every name a class was pickled under; the first is the default
for _key, _cls in ORIGINAL.items():
    PICKLED_AS.setdefault(_cls, []).append(_key)
# The repository's export-friendly activations (v3.0 to v5.0) compute what torch's do; read as torch's, saved so.
ORIGINAL.update({("utils.activations", "Hardswish"): nn.Hardswish, ("utils.activations", "SiLU"): nn.SiLU})


def _standin(module: str, name: str) -> type:
    if (module, name) in ORIGINAL:
        return ORIGINAL[(module, name)]
    raise CheckpointError(f"unknown class {module}.{name} in an original YOLOv5 checkpoint; yoloprune cannot load it")


PIP_PREFIX = "yolov5."  # the ``yolov5`` PyPI package ships the repository's code as ``yolov5.models.*``


def _remap(module: str, name: str) -> type | None:
    """The stand-in for a class of the original repository (never imported from it); None for other names.
    The ``yolov5`` package's paths are the repository's own with the prefix."""
    module = module.removeprefix(PIP_PREFIX)
    if module == "models" or module.startswith(("models.", "utils.")):
        return _standin(module, name)
    return None


def _is_original_module(module: str) -> bool:
    module = module.removeprefix(PIP_PREFIX)
    return module == "models" or module.startswith("models.")


def _pickle_globals(path: Path) -> set[tuple[str, str]]:
    """The (module, name) globals a torch zip checkpoint's pickle refers to, read without unpickling anything."""
    import pickletools

    with zipfile.ZipFile(path) as z:
        name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if name is None:
            return set()
        data = z.read(name)
    found, strings = set(), []
    with contextlib.suppress(Exception):  # a truncated pickle still names what it reached
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.add(tuple(str(arg).split(" ", 1)))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add((strings[-2], strings[-1]))
            elif isinstance(arg, str):
                strings.append(arg)
    return {g for g in found if len(g) == 2}


def is_original(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint of the original YOLOv5 repository (it pickles ``models.*`` classes)."""
    try:
        return any(_is_original_module(m) for m, _ in _pickle_globals(Path(path)))
    except (zipfile.BadZipFile, OSError, KeyError):
        return False


MODELS = (YOLOv5Model, YOLOv5ClassifyModel)


def read_checkpoint(path: Path) -> dict:
    try:
        ckpt = safe_load(path, _remap)
    except UNREADABLE_CHECKPOINT as e:
        raise CheckpointError(f"not a readable original YOLOv5 checkpoint: {path} ({type(e).__name__})") from None
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, MODELS):
        raise CheckpointError(f"not an original YOLOv5 checkpoint (no models.yolo.DetectionModel, "
                              f"SegmentationModel or ClassificationModel): {path}")
    check(model, str(path))
    head = model.model[-1]
    if "anchor_grid" in head._buffers:
        ckpt["yoloprune"] = {**(ckpt.get("yoloprune") or {}), "anchor_grid_buffer": True}
    # saved back under the names it was read by: Model (v6.1 and older) or DetectionModel, the package's prefix
    names = sorted(f"{m}.{n}" for m, n in _pickle_globals(path) if _is_original_module(m))
    ckpt["yoloprune"] = {**(ckpt.get("yoloprune") or {}), "pickled_as": names}
    return ckpt


_INPLACE = (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardsigmoid)


def upgrade(model: YOLOv5Model) -> YOLOv5Model:
    """Bring a model unpickled from an older release, or pickled by an older torch, to what today's forward reads,
    in place: v5.0 and older kept the anchor grid as a buffer (a cache since v6.0) and no ``inplace`` flags;
    torch before 1.7 pickled ``Upsample`` without ``recompute_scale_factor`` and activations without
    ``inplace``."""
    for m in model.modules():
        if isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
        elif isinstance(m, _INPLACE) and not hasattr(m, "inplace"):
            m.inplace = False
    head = model.model[-1]
    head._buffers.pop("anchor_grid", None)
    head.grid = [torch.empty(0) for _ in range(head.nl)]
    head.anchor_grid = [torch.empty(0) for _ in range(head.nl)]
    for attr, value in (("inplace", True), ("nl", len(head.m)), ("no", head.nc + 5)):
        if not hasattr(head, attr):
            setattr(head, attr, value)
    if not hasattr(model, "inplace"):
        model.inplace = head.inplace
    model.names = _names(getattr(model, "names", None), head.nc)
    return model


def load(path: Path) -> tuple[YOLOv5Model, dict]:
    """An FP32 model in eval mode and the checkpoint dict (its other keys are kept for saving)."""
    ckpt = read_checkpoint(path)
    model = ckpt.get("ema") or ckpt["model"]
    if isinstance(model, YOLOv5ClassifyModel):
        model = model.float().eval()
        model.names = _names(model.names, model.model[-1].linear.out_features)
        return model, ckpt
    model = upgrade(model).float().eval()
    model.stride = model.model[-1].stride
    return model, ckpt


def _names(names: Any, nc: int) -> dict[int, str]:
    if isinstance(names, (list, tuple)):
        return {i: str(n) for i, n in enumerate(names)}
    return {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {i: str(i) for i in range(nc)}


def check(model: nn.Module, where: str = "model") -> nn.Module:
    """``model`` if it is an original YOLOv5 model whose last layer is its kind's head (Detect, Segment,
    Classify)."""
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if isinstance(model, YOLOv5Model) and isinstance(head, AnchorDetect) \
            or isinstance(model, YOLOv5ClassifyModel) and isinstance(head, ClassifyHead):
        return model
    raise CheckpointError(f"{where} is not an original YOLOv5 model with its head (Detect, Segment or Classify) "
                          "last")


# Attributes the original repository sets on its DetectionModel (the rest are added by Ultralytics' trainer or
# validator, e.g. ``args`` and ``criterion``, and would pickle Ultralytics classes).
_MODEL_ATTRS = {"yaml", "yaml_file", "save", "names", "inplace", "stride", "nc", "hyp", "class_weights", "gr"}
_ALLOWED_MODULES = ("torch", "torchvision", "collections", "builtins", "__builtin__", "pathlib", "copyreg", "_codecs",
                    "numpy")


class _Pickler(pickle._Pickler):
    """Pickles the stand-in classes under their original names (with ``prefix``, the ``yolov5`` package's);
    refuses any class of yoloprune or Ultralytics."""

    prefix = ""
    seen: frozenset[str] = frozenset()  # "module.name" of the file read: its names are kept where a class has two

    def save_global(self, obj, name=None):
        names = PICKLED_AS.get(obj) if isinstance(obj, type) else None
        if names is not None:
            target = next((k for k in names if f"{self.prefix}{k[0]}.{k[1]}" in self.seen), names[0])
            self.write(pickle.GLOBAL + f"{self.prefix}{target[0]}\n{target[1]}\n".encode())
            self.memoize(obj)
            return
        module = getattr(obj, "__module__", "") or ""
        if module.split(".")[0] not in _ALLOWED_MODULES:
            raise CheckpointError(f"cannot save {module}.{getattr(obj, '__qualname__', obj)} in an original YOLOv5 "
                                  "checkpoint: the original repository could not load it")
        super().save_global(obj, name)


def _pickle_module(prefix: str, seen: frozenset[str] = frozenset()) -> types.SimpleNamespace:
    pickler = type("_Pickler", (_Pickler,), {"prefix": prefix, "seen": frozenset(seen)})
    return types.SimpleNamespace(Pickler=pickler, __name__="yoloprune_yolov5_pickle")


def _plain(model: nn.Module, anchor_grid_buffer: bool = False) -> nn.Module:
    """An FP16 eval-mode copy without what Ultralytics' trainer attached; with ``anchor_grid_buffer``, the anchor
    grid as the buffer releases before v6.0 read."""
    model = copy.deepcopy(model).cpu()
    for k in [k for k in vars(model) if not k.startswith("_") and k not in _MODEL_ATTRS and k != "training"]:
        delattr(model, k)
    for p in model.parameters():
        p.requires_grad_(False)
    model.names = {int(k): str(v) for k, v in dict(model.names).items()}
    head = model.model[-1]
    head.__dict__.pop("export", None)
    model = model.half().eval()
    if isinstance(head, AnchorDetect):
        head.grid = [torch.empty(0) for _ in range(head.nl)]
        head.anchor_grid = [torch.empty(0) for _ in range(head.nl)]
        if anchor_grid_buffer:  # as v5.0 and older keep it (their forward reads it; v6.0 on drop it on loading)
            del head.anchor_grid
            grid = (head.anchors * head.stride.view(-1, 1, 1)).view(head.nl, 1, head.na, 1, 1, 2)
            head.register_buffer("anchor_grid", grid.half())
    return model


def save(model: nn.Module, path: str | Path, ckpt: dict | None = None, meta: dict | None = None) -> Path:
    """Write ``model`` as the original repository's ``train.py`` writes a finished run (FP16 model, ``ema`` and
    ``optimizer`` None, ``epoch`` -1), keeping the input checkpoint's ``opt`` and ``git``, atomically. yoloprune's
    own metadata (plain data) goes in one extra key that the original loaders ignore."""
    ckpt = ckpt or {}
    grid = bool((ckpt.get("yoloprune") or {}).get("anchor_grid_buffer"))
    out = {"model": _plain(check(model), grid), "ema": None, "epoch": -1, "best_fitness": ckpt.get("best_fitness"),
           "updates": None, "optimizer": None, "opt": ckpt.get("opt") or {}, "git": ckpt.get("git") or {},
           "date": datetime.now().isoformat(),
           "yoloprune": {**(ckpt.get("yoloprune") or {}), **(meta or {}), "version": __version__}}
    buf = io.BytesIO()
    seen = frozenset(out["yoloprune"].get("pickled_as") or ())
    prefix = PIP_PREFIX if any(n.startswith(PIP_PREFIX) for n in seen) else ""
    torch.save(out, buf, pickle_module=_pickle_module(prefix, seen))
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def from_trainer_checkpoint(path: str | Path) -> YOLOv5Model:
    """The model (EMA when present) from a checkpoint that Ultralytics' trainer wrote while training it."""
    ckpt = safe_load(path, _remap)
    return check((ckpt.get("ema") or ckpt["model"]).float(), str(path))
