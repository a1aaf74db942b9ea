"""The adapter for Ultralytics models (YOLOv5u / v8 / 11 / ..., and their segment, pose, obb and classify models).

``model.py`` holds what the adapter knows of Ultralytics' models and checkpoints, ``train.py`` its trainer
subclasses and distillation projectors; this class puts them behind the ``Adapter`` interface.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloprune.engine.graph import Branch
from yoloprune.engine.hooks import ResidualBranch
from yoloprune.sources.base import Adapter, TrainJob, Validation, ValSettings
from yoloprune.sources.ultralytics import export as ux
from yoloprune.sources.ultralytics import model as um


class UltralyticsAdapter(Adapter):
    """Ultralytics' models. Registered last: it takes whatever no other adapter claims, and refuses in one line
    what it cannot prune."""

    name = "Ultralytics"

    def claims(self, src: Any) -> bool:
        return True

    def load(self, src: Any) -> tuple[nn.Module, dict]:
        return um.load_model(src)

    def build(self, yaml: str | Path, nc: int | None = None) -> nn.Module:
        return um.build_model(yaml, nc)

    def save(self, model: nn.Module, path: str | Path, ckpt: dict | None = None, meta: dict | None = None) -> Path:
        return um.save_checkpoint(model, path, ckpt, meta)

    def train_imgsz(self, ckpt: dict) -> int | None:
        return um.train_imgsz(ckpt)

    def train_data(self, ckpt: dict) -> str | None:
        return um.train_data(ckpt)

    def task(self, model: nn.Module) -> str:
        return um.task(model)

    def num_classes(self, model: nn.Module) -> int:
        return um.num_classes(model)

    def kpt_shape(self, model: nn.Module) -> tuple[int, int] | None:
        return um.kpt_shape(model)

    def output_layout(self, model: nn.Module) -> list[tuple[int, list[int]]]:
        return um.output_layout(model)

    # the engine's hooks
    def max_stride(self, model: nn.Module) -> int:
        return um.max_stride(model)

    def gflops(self, model: nn.Module, imgsz: int) -> float:
        return um.gflops(model, imgsz)

    def contract_outputs(self, model: nn.Module, out: Any) -> list[torch.Tensor]:
        return um.contract_outputs(model, out)

    def training_branches(self, model: nn.Module) -> tuple[tuple[Branch, ...], tuple[str, ...]]:
        return um.training_branches(model)

    def residual_blocks(self, model: nn.Module) -> dict[str, ResidualBranch]:
        return um.residual_blocks(model)

    def fixed_layers(self, model: nn.Module) -> set[str]:
        return um.fixed_layers(model)

    def head_output_convs(self, model: nn.Module) -> set[str]:
        return um.head_output_convs(model)

    def head_outputs(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return um.head_outputs(model)

    def fix_widths(self, model: nn.Module) -> None:
        um.fix_widths(model)

    # workflows
    def validator(self, model: nn.Module, settings: ValSettings) -> Callable[[nn.Module], Validation]:
        return um.Validator(um.validator_class(model), um.task(model), settings, um.NMS_IOU)

    def exported_validator(self, kind: str, settings: ValSettings) -> Callable[[str], Validation]:
        """A validator of exported files of ``kind`` (ONNX, FP32 or INT8), run through Ultralytics' AutoBackend."""
        return um.Validator(um.validator_class(kind=kind), kind, settings, um.NMS_IOU)

    def train(self, job: TrainJob) -> Path:
        from yoloprune.sources.ultralytics.train import run

        return run(job, self)

    def export_onnx(self, model: nn.Module, ckpt: dict, out: str | Path, imgsz: int, dynamic: bool,
                    simplify: bool) -> Path:
        return ux.export_onnx(model, ckpt, out, imgsz, dynamic, simplify)

    def exported_runner(self, path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function running an exported model (ONNX, OpenVINO or ncnn folder) on a batch: its first output."""
        from ultralytics.nn.autobackend import AutoBackend

        backend = AutoBackend(str(path), device=torch.device("cpu"))

        def run(x: torch.Tensor) -> torch.Tensor:
            y = backend(x)
            return y[0] if isinstance(y, (list, tuple)) else y
        return run

    def export_format(self, model: nn.Module, ckpt: dict, out: str | Path, imgsz: int, fmt: str,
                      int8_data: str | None = None, fraction: float = 1.0) -> Path:
        """OpenVINO or ncnn through Ultralytics' exporter: a folder at ``out`` (INT8 calibrated on ``int8_data``)."""
        return ux.export_format(model, ckpt, out, imgsz, fmt, int8_data, fraction)


__all__ = ["UltralyticsAdapter"]
