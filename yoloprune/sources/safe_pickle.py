"""Checkpoints are untrusted input: unpickle them against an allow-list, so that loading never runs a file's code.

A PyTorch checkpoint is a pickle, and a pickle can name any importable callable (``os.system``) and call it while it
loads. ``torch.load(weights_only=True)`` refuses every class, so it cannot read a model checkpoint at all; plain
``torch.load`` runs whatever the file names. ``load`` sits between: each global the file names is looked up in the
allow-list below before anything is built, and the first one outside it stops the load, naming it, before any of
the file's objects is made.

Allowed (``ALLOWED`` and the rules in ``_allowed``):
- torch's tensor, parameter and storage rebuilds, ``torch.Size``, ``torch.device``, dtypes and layouts;
- ``nn.Module`` subclasses defined in ``torch.nn.modules`` and in ``ultralytics.nn`` (old ``ultralytics.yolo.*``
  paths mapped as Ultralytics' own loader maps them); the original YOLOv5 repository's classes go through that
  source's remap (``sources.yolov5.checkpoint``) and are never imported;
- Ultralytics' loss and assigner classes (some checkpoints keep the criterion), its ``IterableSimpleNamespace``,
  and the torchvision transforms its classification checkpoints keep;
- plain containers and values (``collections.OrderedDict``, ``set``, ``frozenset``, ``slice``, ``complex``, ...),
  numpy arrays, scalars and dtypes, ``pathlib`` paths (either OS's, read as this one's), ``datetime`` values,
  ``argparse.Namespace`` and ``types.SimpleNamespace``;
- ``getattr`` only as checkpoints use it: a method of a module class or an enum member.

A user whose own checkpoints hold other classes loads them with ``--trust-checkpoint`` or
``YOLOPRUNE_TRUST_CHECKPOINT=1`` (plain ``torch.load``, which runs what the file names).
"""

from __future__ import annotations

import enum
import importlib
import os
import pickle
import pickletools
import types
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloprune.defaults import TRUST_ENV
from yoloprune.errors import CheckpointError

# (module, name) -> where to find it today, as Ultralytics' own loader (torch_safe_load) maps old paths
RENAMED: dict[tuple[str, str], tuple[str, str]] = {
    ("ultralytics.nn.modules.block", "Silence"): ("torch.nn.modules.linear", "Identity"),  # YOLOv9e
    ("ultralytics.nn.tasks", "YOLOv10DetectionModel"): ("ultralytics.nn.tasks", "DetectionModel"),
    ("ultralytics.utils.loss", "v10DetectLoss"): ("ultralytics.utils.loss", "E2EDetectLoss"),
}
MODULES_RENAMED = {"ultralytics.yolo.utils": "ultralytics.utils", "ultralytics.yolo.v8": "ultralytics.models.yolo",
                   "ultralytics.yolo.data": "ultralytics.data"}

ALLOWED: set[tuple[str, str]] = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("_codecs", "encode"),
    *(("builtins", n) for n in ("set", "frozenset", "slice", "range", "complex", "bytearray", "tuple", "list",
                                "dict", "int", "float", "bool", "str", "bytes")),
    *(("pathlib", n) for n in ("Path", "PurePath", "PurePosixPath", "PureWindowsPath")),  # concrete paths: below
    *(("datetime", n) for n in ("datetime", "date", "time", "timedelta", "timezone")),
    ("argparse", "Namespace"), ("types", "SimpleNamespace"),
    ("torch", "Size"), ("torch", "device"),
    *(("torch._utils", n) for n in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                                    "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy")),
    ("torch._tensor", "_rebuild_from_type_v2"), ("torch.nn.parameter", "Parameter"), ("torch.nn.parameter", "Buffer"),
    ("torch.serialization", "_get_layout"), ("torch.storage", "UntypedStorage"), ("torch.storage", "TypedStorage"),
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("ultralytics.utils", "IterableSimpleNamespace"),
    *(("torchvision.transforms.transforms", n) for n in ("Compose", "Normalize", "Resize", "CenterCrop", "ToTensor")),
    ("torchvision.transforms.functional", "InterpolationMode"),
}
# nn.Module subclasses defined under these are allowed (yoloprune's own: the original YOLOv5 stand-ins, which the
# Ultralytics trainer pickles under their yoloprune names while it fine-tunes such a model)
_MODULE_PACKAGES = ("torch.nn.modules", "ultralytics.nn", "yoloprune.sources")
_CLASS_MODULES = ("ultralytics.utils.loss", "ultralytics.utils.tal")  # classes defined there (a kept criterion)


def trusted() -> bool:
    """Whether the user trusts every checkpoint (``--trust-checkpoint`` sets the variable for the command)."""
    return os.environ.get(TRUST_ENV, "") not in ("", "0")


def _resolve(module: str, name: str) -> tuple[str, str]:
    module, name = RENAMED.get((module, name), (module, name))
    for old, new in MODULES_RENAMED.items():
        if module == old or module.startswith(old + "."):
            module = new + module[len(old):]
    if module == "pathlib._local":  # Python 3.13 pickles paths there
        module = "pathlib"
    if module == "__builtin__":  # protocol-2 pickles written by Python 2 style names
        module = "builtins"
    return module, name


def _getattr(obj: Any, name: str) -> Any:
    """``getattr`` as checkpoints use it (a module class's method, an enum member), nothing else."""
    if isinstance(obj, type) and not name.startswith("__") and issubclass(obj, (nn.Module, enum.Enum)):
        return getattr(obj, name)
    if isinstance(obj, nn.Module) and name in ("forward", "forward_fuse"):
        return getattr(type(obj), name).__get__(obj)
    raise CheckpointError(f"refused getattr({type(obj).__name__}, {name!r}) in the checkpoint")


def _allowed(module: str, name: str) -> Any:
    """The object a pickle's global (module, name) stands for, if the allow-list admits it; else None."""
    if (module, name) == ("builtins", "getattr"):
        return _getattr
    if (module, name) in ALLOWED:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj
    if module == "pathlib" and name in ("PosixPath", "WindowsPath"):
        return type(Path())
    if module in ("torch", "torch.storage") and name.endswith("Storage"):  # FloatStorage, HalfStorage, ...
        obj = getattr(torch, name, None)
        return obj if isinstance(obj, type) else None
    if module == "torch":  # torch.float16, torch.strided, ...
        obj = getattr(torch, name, None)
        return obj if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)) else None
    if module == "numpy.dtypes" and name.endswith("DType"):
        import numpy.dtypes

        return getattr(numpy.dtypes, name, None)
    if module.startswith(_MODULE_PACKAGES) or module.startswith(_CLASS_MODULES):
        try:
            obj = getattr(importlib.import_module(module), name, None)
        except ImportError:
            return None
        if not isinstance(obj, type):
            return None
        if module.startswith(_CLASS_MODULES):
            return obj if obj.__module__.startswith(_CLASS_MODULES) else None
        return obj if issubclass(obj, nn.Module) and obj.__module__.startswith(_MODULE_PACKAGES) else None
    return None


def refusal(path: str | Path, module: str, name: str) -> CheckpointError:
    return CheckpointError(f"{path}: refused to load: the file names {module}.{name}, which is outside the allow-list "
                           f"of what checkpoints hold (loading it could run the file's code); if you trust this file, "
                           f"pass --trust-checkpoint or set {TRUST_ENV}=1")


def load(path: str | Path, remap: Callable[[str, str], Any | None] | None = None) -> Any:
    """``torch.load`` of ``path`` on the CPU against the allow-list (any global, when trusted; old names mapped
    either way). A refused global raises CheckpointError, naming the file, before the file's objects are built."""
    check_structure(path)
    return torch.load(path, map_location="cpu", weights_only=False,
                      pickle_module=_unpickler(path, remap or (lambda _m, _n: None), trusted()))


_MEMO_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


def check_structure(path: str | Path) -> None:
    """Read the opcodes of a zip checkpoint's ``data.pkl`` before unpickling it; a damaged one raises
    ``pickle.UnpicklingError``. Python's unpickler sizes its memo by the largest index a file names, so one flipped
    byte in a ``LONG_BINPUT`` asks for tens of GB before any object is built; here an index past the number of
    opcodes (a real pickle numbers its memo from 0, one entry per opcode at most) stops the load instead."""
    if not zipfile.is_zipfile(path):
        return  # torch's legacy format (or not a checkpoint at all: torch.load says which)
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(names) != 1:
            return  # torch.load names what is missing
        data = z.read(names[0])
    n_ops = 0
    try:
        for op, arg, _ in pickletools.genops(data):
            n_ops += 1
            if op.name in _MEMO_OPS and int(arg) > n_ops:
                raise pickle.UnpicklingError(f"memo index {arg} at opcode {n_ops} (damaged data.pkl)")
    except (ValueError, UnicodeDecodeError) as e:  # unknown opcode, a bad literal, a truncated argument
        raise pickle.UnpicklingError(f"damaged data.pkl: {e}"[:120]) from None


def _unpickler(path: str | Path, remap: Callable[[str, str], Any | None], trust_all: bool) -> types.SimpleNamespace:
    """A ``pickle_module`` for ``torch.load``: ``remap(module, name)`` gives a source's own stand-in classes first
    (None: not one of its names); everything else must pass the allow-list unless ``trust_all``."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                got = remap(module, name)
            except CheckpointError as e:  # a source refusing one of its own names: say which file
                raise CheckpointError(f"{path}: {e}") from None
            if got is not None:
                return got
            mod, nm = _resolve(module, name)
            if trust_all:
                return super().find_class(mod, nm)
            obj = _allowed(mod, nm)
            if obj is None:
                raise refusal(path, module, name)
            return obj

    return types.SimpleNamespace(Unpickler=Unpickler, load=pickle.load, __name__="yoloprune_unpickle")


__all__ = ["ALLOWED", "TRUST_ENV", "check_structure", "load", "refusal", "trusted"]
