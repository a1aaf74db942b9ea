"""yoloprune: structured pruning for Ultralytics YOLO detectors.

model in -> trace -> coupled channel units -> importance -> plan -> surgery -> model out.
"""

__version__ = "0.1.0"

from yoloprune.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    UnsupportedModelError,
    YoloPruneError,
)
from yoloprune.graph import Graph, Unit, trace  # noqa: E402
from yoloprune.prune import PruneConfig, compact, mask, plan, prune  # noqa: E402
from yoloprune.report import Report  # noqa: E402
from yoloprune.ultra import load_model, save_checkpoint  # noqa: E402

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "Graph", "PruneConfig", "Report", "Unit",
    "UnsupportedModelError", "YoloPruneError", "compact", "load_model", "mask", "plan", "prune",
    "save_checkpoint", "trace",
]
