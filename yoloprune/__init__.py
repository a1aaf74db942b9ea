"""yoloprune: structured pruning for Ultralytics YOLO detectors.

model in -> trace -> coupled channel units -> importance -> plan -> surgery -> model out.
"""

__version__ = "0.1.0"

from yoloprune.compensate import calibration_images  # noqa: E402
from yoloprune.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    UnsupportedModelError,
    YoloPruneError,
)
from yoloprune.evaluate import EvalResult, Evaluator, evaluate  # noqa: E402
from yoloprune.export import ExportConfig, export, export_onnx  # noqa: E402
from yoloprune.graph import Graph, Unit, trace  # noqa: E402
from yoloprune.prune import PruneConfig, compact, mask, plan, prune  # noqa: E402
from yoloprune.report import Report  # noqa: E402
from yoloprune.sparsity import SparsifyConfig, sparsify  # noqa: E402
from yoloprune.sweep import SweepConfig, sweep  # noqa: E402
from yoloprune.ultra import load_model, save_checkpoint  # noqa: E402

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "EvalResult", "Evaluator", "ExportConfig", "Graph", "PruneConfig",
    "Report", "SparsifyConfig", "SweepConfig", "Unit", "UnsupportedModelError", "YoloPruneError", "calibration_images",
    "compact",
    "evaluate", "export", "export_onnx", "load_model", "mask", "plan", "prune", "save_checkpoint", "sparsify",
    "sweep", "trace",
]
