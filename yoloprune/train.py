"""Training through the Ultralytics trainer: baselines from a yaml, and fine-tuning a pruned model in place.

Ultralytics' trainer rebuilds its model from the yaml and copies over only shape-matching weights, which would
undo pruning. ``PrunedDetectionTrainer`` instead hands the trainer the pruned model from the checkpoint file
itself, so every process (and each DDP worker) rebuilds the same pruned architecture from the path alone.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ultralytics.models.yolo.detect import DetectionTrainer

from yoloprune.atomic import atomic_write
from yoloprune.ultra import YOLO, load_model


@dataclass
class TrainConfig:
    """One training run. ``model`` is a yaml (from scratch) or a checkpoint (fine-tune, architecture kept)."""

    model: str
    data: str
    out: str
    epochs: int = 50
    imgsz: int = 320
    batch: int = 16
    workers: int = 2
    lr0: float | None = None
    device: str = "cpu"
    seed: int = 0
    patience: int = 100
    time: float | None = None  # hours; overrides epochs and anneals the LR schedule to fit (Ultralytics `time=`)
    project: str | None = None
    extra: dict = field(default_factory=dict)

    def overrides(self) -> dict:
        o = {
            "data": str(Path(self.data).resolve()), "epochs": self.epochs, "imgsz": self.imgsz,
            "batch": self.batch, "workers": self.workers, "device": self.device, "seed": self.seed,
            "patience": self.patience, "plots": False, "exist_ok": True, "verbose": False,
            "project": self.project or tempfile.mkdtemp(prefix="yoloprune-train-"), "name": "run",
        }
        if self.lr0 is not None:
            o["lr0"] = self.lr0
        if self.time is not None:
            o["time"] = self.time
        return {**o, **self.extra}


class PrunedDetectionTrainer(DetectionTrainer):
    """DetectionTrainer whose model is the checkpoint's own (pruned) module, not one rebuilt from its yaml."""

    def get_model(self, cfg=None, weights=None, verbose=True):
        model, _ = load_model(self.args.model)
        for p in model.parameters():
            p.requires_grad_(True)
        return model


def train(cfg: TrainConfig) -> Path:
    """Train and copy the best checkpoint to ``cfg.out`` atomically. Returns the output path."""
    is_yaml = Path(cfg.model).suffix in (".yaml", ".yml")
    if is_yaml:
        results_dir = _run(YOLO(cfg.model), cfg, trainer=None)
    else:
        load_model(cfg.model)  # refuse bad checkpoints before the trainer starts
        results_dir = _run(YOLO(cfg.model), cfg, trainer=PrunedDetectionTrainer)
    best = results_dir / "weights" / "best.pt"
    atomic_write(cfg.out, lambda tmp: shutil.copyfile(best, tmp))
    return Path(cfg.out)


def _run(yolo: YOLO, cfg: TrainConfig, trainer) -> Path:
    overrides = cfg.overrides()
    if trainer is not None:
        overrides["model"] = str(Path(cfg.model).resolve())
        yolo.train(trainer=trainer, **overrides)
    else:
        yolo.train(**overrides)
    return Path(yolo.trainer.save_dir)
