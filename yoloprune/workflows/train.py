"""Training: baselines from a yaml, fine-tuning a pruned model with its architecture kept, distillation, and
sparsity training for network slimming. This module resolves a run (its settings, the data check, the teacher)
into a ``TrainJob``; the model source's adapter runs it on the source's own trainer
(``yoloprune.sources.ultralytics.train`` and ``yoloprune.sources.yolov5.train``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from yoloprune import sources
from yoloprune.data.images import calibration_images
from yoloprune.data.spec import load_data
from yoloprune.defaults import DISTILL_WEIGHT
from yoloprune.errors import ConfigError
from yoloprune.sources import TrainJob

# Fine-tuning a trained (pruned) model: a tenth of the from-scratch SGD rate and no warm-up. Ultralytics' default
# warm-up starts biases at lr 0.1, and its "auto" optimizer ignores lr0; both would first wreck what pruning kept.
FINETUNE_DEFAULTS = {"optimizer": "SGD", "lr0": 0.002, "lrf": 0.1, "momentum": 0.937, "warmup_epochs": 0.0,
                     "close_mosaic": 0}
PROJECTOR_IMAGES = 16  # calibration images on which distillation projectors are fitted


@dataclass
class TrainConfig:
    """One training run. ``model`` is a yaml (from scratch) or a checkpoint (its architecture is kept)."""

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
    project: str | None = None  # run folder parent (default: runs/ in the working directory, as Ultralytics)
    name: str | None = None  # run folder name (default: the kind of run, numbered if taken: finetune, finetune2, ...)
    finetune: bool = False  # use FINETUNE_DEFAULTS (explicit options still win)
    sr: float = 0.0  # network slimming: L1 strength on prunable BN gammas (0: plain training)
    sr_decay: bool = False  # decay sr linearly to 10% over the run
    teacher: str | None = None  # knowledge distillation from this checkpoint (Ultralytics' distill_model)
    dis: float | None = None  # distillation loss weight (DISTILL_WEIGHT when None)
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.sr < 0:
            raise ConfigError(f"sr must be >= 0, got {self.sr}")
        if self.time is not None and self.time <= 0:
            raise ConfigError(f"time must be > 0 hours, got {self.time}")
        if self.dis is not None and self.dis < 0:
            raise ConfigError(f"dis must be >= 0, got {self.dis}")

    def overrides(self) -> dict:
        o = dict(FINETUNE_DEFAULTS) if self.finetune else {}
        o.update({
            "data": str(Path(self.data).resolve()), "epochs": self.epochs, "imgsz": self.imgsz,
            "batch": self.batch, "workers": self.workers, "device": self.device, "seed": self.seed,
            "patience": self.patience, "plots": False, "verbose": False,
            "project": str(Path(self.project or "runs").resolve()),
            "name": self.name or ("train-sparse" if self.sr else "finetune" if self.finetune else "train"),
            "exist_ok": self.name is not None,
        })
        if self.lr0 is not None:
            o["lr0"] = self.lr0
        if self.time is not None:
            o["time"] = self.time
        if self.sr:
            o.update(sr=self.sr, sr_decay=self.sr_decay)
        if self.teacher:
            o["distill_model"] = str(Path(self.teacher).resolve())
            o["dis"] = DISTILL_WEIGHT if self.dis is None else self.dis
        return {**o, **self.extra}


def default_teacher(model: str) -> str | None:
    """The checkpoint a pruned model was pruned from, when its metadata names it and the file is unchanged."""
    if Path(model).suffix in (".yaml", ".yml"):
        return None
    _, ckpt = sources.load_model(model)
    src = sources.recorded_source(ckpt)
    return str(src) if src is not None else None


def _source_model(cfg: TrainConfig, spec) -> tuple[torch.nn.Module | None, dict]:
    """The model to train, loaded and checked before the trainer starts (bad checkpoints fail in one line); None
    for an Ultralytics yaml, which the trainer builds for the data's classes."""
    path = Path(cfg.model)
    if path.suffix in (".yaml", ".yml") and not (path.is_file() and sources.is_original_yaml(path)):
        return None, {}
    model, given = sources.load_model(cfg.model)
    spec.check_model(model)
    return model, given


def train(cfg: TrainConfig) -> Path:
    """Train through the source's trainer and write the result to ``cfg.out`` atomically. Returns the output path."""
    cfg.validate()
    for split in ("train", "val"):  # broken data files fail here in one line, not deep inside the trainer
        spec = load_data(cfg.data, split)
    model, given = _source_model(cfg, spec)
    projector_images = None
    if cfg.teacher:
        teacher, _ = sources.load_model(cfg.teacher)
        spec.check_model(teacher)
        projector_images = calibration_images(cfg.data, cfg.imgsz, PROJECTOR_IMAGES)
    overrides = cfg.overrides()
    overrides["model"] = str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model
    job = TrainJob(model=cfg.model, out=Path(cfg.out), overrides=overrides, given=given, data=cfg.data,
                   epochs=cfg.epochs, imgsz=cfg.imgsz, sr=cfg.sr, sr_decay=cfg.sr_decay, teacher=cfg.teacher,
                   projector_images=projector_images)
    return sources.adapter_for(model if model is not None else cfg.model).train(job)
