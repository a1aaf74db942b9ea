"""A sweep's settings (``SweepConfig``), validated, and the row layout every part of a sweep shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from yoloprune.defaults import CALIB_IMAGES, ROUND_TO, SWEEP_RATIOS, UNSTRUCTURED
from yoloprune.engine.criteria import names as criteria
from yoloprune.errors import ConfigError, check_ratio

KEY = ["method", "ratio", "finetune_epochs"]


COLUMNS = [*KEY, "status", "map50_95", "map50", "ultralytics_map50_95", "params", "params_ratio", "gflops",
           "gflops_ratio", "ckpt_mb", "onnx_mb", "latency_ms", "speedup", "blocks_removed", "seconds", "metric",
           "host", "cpu"]


FAILED = "failed"  # status prefix of a point that raised on a worker: retried when the sweep runs again


def sweep_methods() -> tuple[str, ...]:
    return (*criteria(), UNSTRUCTURED)


@dataclass
class SweepConfig:
    model: str
    data: str
    out: str
    ratios: list[float] = field(default_factory=lambda: list(SWEEP_RATIOS))
    methods: list[str] = field(default_factory=lambda: ["l1"])
    finetune_epochs: int = 0
    split: str = "val"
    imgsz: int = 320
    batch: int = 16
    workers: int = 2
    latency_runs: int = 30
    latency_threads: int = 1  # onnxruntime intra-op threads: 1 is the small-device case and steadiest when shared
    device: str = "cpu"  # where fine-tuning runs (Ultralytics device string)
    round_to: int = ROUND_TO  # keep pruned widths multiples of this (8 suits CPU kernels)
    keep_models: bool = True  # keep each row's checkpoint under out/models
    compensate: bool = True  # calibrate on train images: mean compensation (and data-aware criteria)
    reconstruct: bool = True  # with compensate: least-squares refit of the layers that lost inputs
    calib_images: int = CALIB_IMAGES
    distill: bool = False  # fine-tune points with the unpruned model as the teacher
    recover_epochs: int = 0  # label-free recovery of every pruned point for this many epochs, before any fine-tune
    steps: int = 1  # prune-and-reconstruct steps per point (PruneConfig.steps)
    layers: bool = False  # bn method: also remove residual blocks whose branch falls under the gamma threshold
    # Instead of ratios: points at these speed-ups over the unpruned model on onnxruntime, as the latency columns
    # are measured (prune --target-speedup; the table's ratio column then holds the target speed-up, 1 being the
    # unpruned model)
    speedups: list[float] | None = None
    int8: bool = False  # also quantize every point's ONNX export (export --int8): its mAP and latency

    @property
    def axis(self) -> str:
        return "speedup" if self.speedups else "ratio"

    @property
    def unpruned(self) -> float:
        """The point on this axis that is the unpruned model: ratio 0, or speed-up 1."""
        return 1.0 if self.axis == "speedup" else 0.0

    def pruned(self, ratio: float) -> bool:
        """Whether a point (a ratio, or a target speed-up) prunes anything."""
        return ratio != self.unpruned

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in sweep_methods()]
        if bad or not self.methods:
            raise ConfigError(f"unknown method {bad[0] if bad else ''!r}; choose from {', '.join(sweep_methods())}")
        if self.speedups is not None:
            if not self.speedups or any(not x >= 1 for x in self.speedups):
                raise ConfigError(f"target speed-ups must be >= 1 (1: the unpruned model), got {self.speedups}")
            if UNSTRUCTURED in self.methods or self.layers:
                raise ConfigError("speed-up targets are reached by channel pruning: not with unstructured sparsity "
                                  "or block removal")
        elif not self.ratios:
            raise ConfigError("give at least one ratio")
        for r in self.ratios if self.speedups is None else ():
            check_ratio(r)
        if self.recover_epochs < 0:
            raise ConfigError("recover_epochs must be >= 0")
        if self.finetune_epochs < 0:
            raise ConfigError("finetune_epochs must be >= 0")
        if self.layers and "bn" not in self.methods:
            raise ConfigError("layers (block removal) needs the bn method")

    def recipe(self) -> dict:
        """The settings that change every row's figures: rows made with other settings are not reused."""
        return {"model": str(Path(self.model).resolve()), "split": self.split, "imgsz": self.imgsz,
                "round_to": self.round_to, "calibration": self.compensate, "reconstruct": self.reconstruct,
                "calib_images": self.calib_images, "steps": self.steps, "distill": self.distill,
                "recover_epochs": self.recover_epochs,
                "layers": self.layers, "axis": self.axis, "int8": self.int8}

    def jobs(self) -> list[tuple[str, float, int]]:
        return [(m, round(float(r), 4), self.finetune_epochs) for m in self.methods
                for r in (self.speedups or self.ratios)]


def title(cfg: SweepConfig) -> str:
    return f"{Path(cfg.model).name} on {Path(cfg.data).stem} {cfg.split}, {cfg.imgsz} px"


def by_speedup(df: pd.DataFrame) -> bool:
    """The rows are points of a speed-up sweep: their ratio column holds target speed-ups."""
    return "axis" in df.columns and len(df) > 0 and bool((df["axis"] == "speedup").all())
