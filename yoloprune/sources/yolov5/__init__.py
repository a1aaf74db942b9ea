"""The adapter for checkpoints of the original YOLOv5 repository (github.com/ultralytics/yolov5): anchor-based
detection models, pickled as ``models.yolo.DetectionModel`` / ``models.common.C3`` ...

``model.py`` builds them, ``checkpoint.py`` reads and writes their files (a class remap, reversed on saving, so the
user's own clone of the original repository loads what yoloprune writes), ``loss.py`` is their training criterion
and ``train.py`` runs Ultralytics' trainer and validator on them. Their blocks are Ultralytics' block classes (or
subclasses of them), so the block-level hooks are the Ultralytics adapter's own functions.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloprune.atomic import atomic_write
from yoloprune.engine.graph import Branch
from yoloprune.engine.hooks import ResidualBranch
from yoloprune.errors import CheckpointError, ConfigError
from yoloprune.sources.base import Adapter, TrainJob, Validation, ValSettings
from yoloprune.sources.ultralytics import model as ultra
from yoloprune.sources.yolov5 import checkpoint
from yoloprune.sources.yolov5.model import YOLOv5Model

_YAML = (".yaml", ".yml")


def is_original_yaml(path: Path) -> bool:
    """An original YOLOv5 model yaml names its anchors; Ultralytics' yamls (YOLOv5u included) do not."""
    import yaml

    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(d, dict) and "anchors" in d and "depth_multiple" in d


class YOLOv5Adapter(Adapter):
    """Original YOLOv5 detection models: one output ``(B, N, 5 + nc)``, NMS at IoU 0.6 as its ``val.py``."""

    name = "original YOLOv5"

    def claims(self, src: Any) -> bool:
        if isinstance(src, nn.Module):
            return isinstance(src, YOLOv5Model)
        if not isinstance(src, (str, Path)) or not Path(src).is_file():
            return False
        path = Path(src)
        return is_original_yaml(path) if path.suffix in _YAML else checkpoint.is_original(path)

    def load(self, src: Any) -> tuple[nn.Module, dict]:
        if isinstance(src, nn.Module):
            return checkpoint.check(src), {}
        path = Path(src)
        if path.suffix in _YAML:
            return self.build(path).eval(), {}
        return checkpoint.load(path)

    def build(self, yaml: str | Path, nc: int | None = None) -> nn.Module:
        try:
            return YOLOv5Model(yaml, nc=nc)
        except Exception as e:  # an unknown yaml is user input: report it in one line
            raise CheckpointError(f"cannot build a model from {yaml}: {e}") from None

    def save(self, model: nn.Module, path: str | Path, ckpt: dict | None = None, meta: dict | None = None) -> Path:
        return checkpoint.save(model, path, ckpt, meta)

    def train_imgsz(self, ckpt: dict) -> int | None:
        """``opt.imgsz`` (v6.0 on), ``opt.img_size`` (v5.0 and older, when the checkpoint keeps its ``opt``)."""
        opt = ultra.as_dict(ckpt.get("opt")) if isinstance(ckpt.get("opt"), dict) or hasattr(ckpt.get("opt"),
                                                                                              "__dict__") else {}
        return ultra.train_imgsz({"opt": {"imgsz": opt.get("imgsz", opt.get("img_size"))}}, key="opt")

    def train_data(self, ckpt: dict) -> str | None:
        return ultra.train_data(ckpt, key="opt")

    def task(self, model: nn.Module) -> str:
        return "detect"  # segmentation and classification checkpoints are refused on loading

    def num_classes(self, model: nn.Module) -> int:
        return int(model.model[-1].nc)

    def kpt_shape(self, model: nn.Module) -> tuple[int, int] | None:
        return None

    def output_layout(self, model: nn.Module) -> list[tuple[int, list[int]]]:
        """One output, (batch, anchors x cells, 5 + classes): box in pixels, then objectness and class scores."""
        return [(-1, [0, 1, 2, 3])]

    # the engine's hooks
    def max_stride(self, model: nn.Module) -> int:
        return ultra.max_stride(model)

    def gflops(self, model: nn.Module, imgsz: int) -> float:
        """Through the (thop) counter Ultralytics uses, on a 3-channel image: Ultralytics' ``get_flops`` takes the
        channel count from the first weight, 12 behind a Focus stem (v5.0 and older), and answers 0."""
        import thop

        p = next(model.parameters())
        im = torch.empty(1, int(getattr(model, "yaml", {}).get("ch", 3)), imgsz, imgsz, dtype=p.dtype, device=p.device)
        stride = max(self.max_stride(model), 32)
        return float(thop.profile(model, inputs=[im], stride=stride, verbose=False)[0] / 1e9 * 2)

    def contract_outputs(self, model: nn.Module, out: Any) -> list[torch.Tensor]:
        """Eval mode returns ``(predictions, raw maps)``; the predictions are the contract."""
        return ultra.contract_outputs(model, out)

    def training_branches(self, model: nn.Module) -> tuple[tuple[Branch, ...], tuple[str, ...]]:
        return (), ()

    def residual_blocks(self, model: nn.Module) -> dict[str, ResidualBranch]:
        return ultra.residual_blocks(model)  # Bottleneck and CrossConv are Ultralytics' Bottleneck

    def fixed_layers(self, model: nn.Module) -> set[str]:
        return set()

    def head_output_convs(self, model: nn.Module) -> set[str]:
        """The Detect head's 1x1 output convs."""
        i = len(model.model) - 1
        return {f"model.{i}.m.{j}" for j in range(len(model.model[-1].m))}

    def head_outputs(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Each level's 1x1 conv to ``na * (5 + nc)`` channels: per anchor a box (values), then objectness and
        class logits."""
        head = model.model[-1]
        return {name: torch.arange(head.na * head.no) % head.no >= 4 for name in sorted(self.head_output_convs(model))}

    def scores(self, model: nn.Module, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Objectness times the best class probability, the highest over the anchors (the class logits alone are
        conditional on an object, high in the background too)."""
        head = model.model[-1]
        out = {}
        for name, t in outputs.items():
            if t.dim() == 4 and t.shape[1] == head.na * head.no:
                p = t.float().reshape(t.shape[0], head.na, head.no, *t.shape[2:]).sigmoid()
                out[name] = (p[:, :, 4] * p[:, :, 5:].amax(2)).amax(1)
        return out

    def fix_widths(self, model: nn.Module) -> None:
        ultra.fix_widths(model)

    # workflows
    def validator(self, model: nn.Module, settings: ValSettings) -> Callable[[nn.Module], Validation]:
        from yoloprune.sources.yolov5.train import NMS_IOU, YOLOv5Validator

        return ultra.Validator(YOLOv5Validator, "detect", settings, NMS_IOU)

    def train(self, job: TrainJob) -> Path:
        from yoloprune.sources.yolov5.train import run

        return run(job, self)

    def export_onnx(self, model: nn.Module, ckpt: dict, out: str | Path, imgsz: int, dynamic: bool,
                    simplify: bool) -> Path:
        """ONNX as the original repository's ``export.py`` writes it: the legacy (TorchScript) exporter, opset 17,
        input ``images``, one output ``output0`` of shape ``(B, N, 5 + nc)``."""
        if simplify:
            raise ConfigError("--simplify is not offered for original YOLOv5 models; export without it")
        net = copy.deepcopy(checkpoint.check(model)).float().eval()
        net.model[-1].export = True
        im = torch.zeros(1, 3, imgsz, imgsz)
        axes = ({"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}}
                if dynamic else None)

        def write(tmp: str) -> None:
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(net, im, tmp, opset_version=17, input_names=["images"], output_names=["output0"],
                                  dynamic_axes=axes, do_constant_folding=True, dynamo=False)

        return atomic_write(out, write)


__all__ = ["YOLOv5Adapter", "is_original_yaml"]
