"""yoloprune: structured pruning for YOLO detectors (Ultralytics models and original YOLOv5 checkpoints).

model in -> trace -> coupled channel units -> importance -> plan -> surgery -> model out.

The public names below are imported lazily, on first use, so that ``import yoloprune`` loads neither Ultralytics
nor torch and changes nothing in the caller's process. The package's layers, each importing only those before it:
``errors``/``defaults``/``atomic``/``targets`` <- ``engine`` <- ``sources`` <- ``speed``, ``data`` <- ``api`` <-
``workflows`` <- ``cli``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "apply": "api", "compact": "api", "load_model": "api", "prune": "api", "save_checkpoint": "api",
    "sparsify": "api", "trace_model": "api", "gflops": "api",
    "CostTable": "engine.costs", "build_table": "speed.search", "search_speedup": "speed.search",
    "Ratio": "targets", "Gflops": "targets", "Cost": "targets", "Speedup": "targets", "Latency": "targets",
    "calibration_images": "data.images",
    "CheckpointError": "errors", "ConfigError": "errors", "DataError": "errors",
    "UnsupportedModelError": "errors", "YoloPruneError": "errors",
    "Graph": "engine.graph", "Unit": "engine.graph", "trace": "engine.graph",
    "PruneConfig": "engine.plan", "plan": "engine.plan", "mask": "engine.prune", "Report": "engine.report",
    "SparsifyConfig": "engine.sparsity",
    "EvalResult": "workflows.evaluate", "Evaluator": "workflows.evaluate", "evaluate": "workflows.evaluate",
    "ExportConfig": "workflows.export", "export": "workflows.export", "export_onnx": "workflows.export",
    "SweepConfig": "workflows.sweep", "sweep": "workflows.sweep",
    "OptimizeConfig": "workflows.optimize", "optimize": "workflows.optimize",
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
