"""The interface every model source implements: ``Adapter``.

An adapter is the only code that touches a source's internals (its model classes, checkpoint format, validator,
trainer and exporter). It is the engine's ``ModelHooks`` for that source's models, plus the verbs the workflows need
around the engine: load and save, the task and its contract, evaluation, training and ONNX export. The registry in
``yoloprune.sources`` picks the adapter for a file or a model; an adapter for a new source subclasses ``Adapter``,
implements every abstract method, and is registered there.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloprune.engine.hooks import ModelHooks


@dataclass(frozen=True)
class ValSettings:
    """One evaluation's settings, the same for every source."""

    data: str  # data yaml (or classification folder), absolute
    split: str
    imgsz: int
    batch: int
    conf: float
    iou: float | None  # NMS IoU; None: the source's own validation default
    coco_json: bool  # collect COCO-format predictions for pycocotools
    folder: str  # where the validator may write


@dataclass(frozen=True)
class Validation:
    """What one validator pass measured: the task's primary and secondary metric as the source's validator
    computes them, and (with ``coco_json``) its predictions in COCO form: ``image`` (the file stem),
    ``category_id`` (0-based), ``bbox`` in pixels, ``score``, and ``segmentation`` or ``keypoints`` where the task
    has them; ``sigmas``: the OKS sigmas of a pose validator."""

    primary: float
    secondary: float
    predictions: list[dict] = field(default_factory=list)
    sigmas: Any = None


@dataclass(frozen=True)
class TrainJob:
    """One training run, resolved by ``yoloprune.workflows.train``: the source's trainer runs it and writes ``out``."""

    model: str  # the checkpoint (its architecture is kept) or yaml given by the user
    out: Path
    overrides: dict  # the trainer's arguments (data, epochs, imgsz, model, ...)
    given: dict  # the checkpoint dict the model came from (empty for a yaml)
    data: str  # the data yaml as the user gave it
    epochs: int
    imgsz: int
    sr: float = 0.0  # network slimming: L1 strength on prunable BN gammas (0: plain training)
    sr_decay: bool = False
    teacher: str | None = None  # distillation teacher checkpoint
    projector_images: torch.Tensor | None = None  # distillation: images its projectors are fitted on


class Adapter(ModelHooks):
    """A model source. Stateless; every verb takes the model (or file) it acts on."""

    name: str = ""  # what the source is called in messages

    # -- recognising, loading and saving ---------------------------------------------------------------------
    @abstractmethod
    def claims(self, src: Any) -> bool:
        """Whether ``src`` (a model, a YOLO object, a checkpoint or yaml path) belongs to this source. The registry
        asks each adapter in turn; the last one, Ultralytics, takes whatever no other claimed and refuses, in one
        line, what it cannot prune."""

    @abstractmethod
    def load(self, src: Any) -> tuple[nn.Module, dict]:
        """``src`` as a checked FP32 model and its checkpoint dict (empty for a module or yaml). Paths are read,
        never written; every way a file can be broken is one CheckpointError naming it."""

    @abstractmethod
    def build(self, yaml: str | Path, nc: int | None = None) -> nn.Module:
        """A fresh model from one of this source's model yamls."""

    @abstractmethod
    def save(self, model: nn.Module, path: str | Path, ckpt: dict | None = None, meta: dict | None = None) -> Path:
        """Write ``model`` atomically in the source's own checkpoint format, loadable without yoloprune; keeps
        the training options of ``ckpt`` and puts ``meta`` (plain data) under the ``yoloprune`` key."""

    @abstractmethod
    def train_imgsz(self, ckpt: dict) -> int | None:
        """The image size a checkpoint was trained at, if it records one."""

    @abstractmethod
    def train_data(self, ckpt: dict) -> str | None:
        """The data yaml a checkpoint records as its training data (a path of the machine it was trained on)."""

    # -- what the model is -----------------------------------------------------------------------------------
    @abstractmethod
    def task(self, model: nn.Module) -> str:
        """detect, segment, pose, obb or classify."""

    @abstractmethod
    def num_classes(self, model: nn.Module) -> int:
        """The number of classes the model predicts."""

    @abstractmethod
    def kpt_shape(self, model: nn.Module) -> tuple[int, int] | None:
        """A pose model's (keypoints, values per keypoint); None for other tasks."""

    @abstractmethod
    def output_layout(self, model: nn.Module) -> list[tuple[int, list[int]]]:
        """Per exported output: its channel axis and which channels are pixel coordinates (the rest compare
        absolutely), in the order of ``contract_outputs``."""

    def objectness(self, model: nn.Module) -> bool:
        """Whether the first exported output is channels-last ``(B, anchors, 5 + classes ...)`` with an objectness
        score before the class scores (a detection's score is their product), as the original YOLOv5 writes it;
        otherwise a detector's is ``(B, 4 + classes ..., anchors)``."""
        return False

    # -- workflows on top of the engine ----------------------------------------------------------------------
    @abstractmethod
    def validator(self, model: nn.Module, settings: ValSettings) -> Callable[[nn.Module], Validation]:
        """A validator for models like ``model`` (same source and task) on ``settings``; it keeps its dataloader,
        so one validator evaluates many models."""

    @abstractmethod
    def train(self, job: TrainJob) -> Path:
        """Train with the source's trainer, keeping the model's (pruned) architecture, and write ``job.out``."""

    @abstractmethod
    def export_onnx(self, model: nn.Module, ckpt: dict, out: str | Path, imgsz: int, dynamic: bool,
                    simplify: bool) -> Path:
        """ONNX as the source's own exporter writes it, atomically at ``out``."""

    def exported_runner(self, path: str | Path):
        """A function running an exported model of this source on a batch (its first output); a source without
        one refuses."""
        from yoloprune.errors import ConfigError

        raise ConfigError(f"running exported {self.name or 'this source'} models is not offered")

    def exported_validator(self, kind: str, settings: ValSettings) -> Callable[[str], Validation]:
        """A validator of this source's exported files of task ``kind`` (FP32 or INT8 ONNX, read by the metadata
        its ``export_onnx`` writes: task, names, imgsz, source); a source without one refuses."""
        from yoloprune.errors import ConfigError

        raise ConfigError(f"exported {self.name} files cannot be scored")

    def export_format(self, model: nn.Module, ckpt: dict, out: str | Path, imgsz: int, fmt: str,
                      int8_data: str | None = None, fraction: float = 1.0) -> Path:
        """Another runtime's format (``openvino``, ``ncnn``), a folder at ``out``; with ``int8_data`` (a data yaml),
        quantized to INT8 by that runtime's tools, calibrated on ``fraction`` of its train split. A source without
        one refuses."""
        from yoloprune.errors import ConfigError

        raise ConfigError(f"--format {fmt} is not offered for {self.name or 'this source'}'s models; export ONNX")


__all__ = ["Adapter", "TrainJob", "ValSettings", "Validation"]
