"""yoloprune: structured pruning for YOLO detectors (Ultralytics models and original YOLOv5 checkpoints).

model in -> trace -> coupled channel units -> importance -> plan -> surgery -> model out.

The public names below are imported lazily, on first use, so that ``import yoloprune`` loads neither Ultralytics
nor torch and changes nothing in the caller's process.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "calibration_images": "compensate",
    "CheckpointError": "errors", "ConfigError": "errors", "DataError": "errors",
    "UnsupportedModelError": "errors", "YoloPruneError": "errors",
    "EvalResult": "evaluate", "Evaluator": "evaluate", "evaluate": "evaluate",
    "ExportConfig": "export", "export": "export", "export_onnx": "export",
    "Graph": "graph", "Unit": "graph", "trace": "graph",
    "PruneConfig": "prune", "compact": "prune", "mask": "prune", "plan": "prune", "prune": "prune",
    "Report": "report",
    "SparsifyConfig": "sparsity", "sparsify": "sparsity",
    "SweepConfig": "sweep", "sweep": "sweep",
    "load_model": "sources", "save_checkpoint": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"yoloprune.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'yoloprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


class _Package(types.ModuleType):
    """Importing a submodule binds it on its package; ``prune``, ``evaluate``, ``export`` and ``sweep`` are
    submodules and public functions at once, and the public function keeps the name (as with eager imports)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
