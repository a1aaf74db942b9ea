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
from yoloprune.sources.yolov5.model import (
    AnchorDetect,
    AnchorSegment,
    ClassifyHead,
    YOLOv5Model,
    YOLOv5SegmentModel,
    _read_yaml,
)

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
    """Original YOLOv5 models: detection (one output ``(B, N, 5 + nc)``, NMS at IoU 0.6 as its ``val.py``),
    segmentation (v7.0: ``(B, N, 5 + nc + nm)`` and prototypes) and classification (v6.2 on: logits)."""

    name = "original YOLOv5"

    def claims(self, src: Any) -> bool:
        if isinstance(src, nn.Module):
            return isinstance(src, checkpoint.MODELS)
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
            cfg = _read_yaml(Path(yaml))
            segment = any(row[2] == "Segment" for row in cfg.get("head", []))
            return (YOLOv5SegmentModel if segment else YOLOv5Model)(cfg, nc=nc)
        except CheckpointError:
            raise
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
        head = model.model[-1]
        return "classify" if isinstance(head, ClassifyHead) else "segment" if isinstance(head, AnchorSegment) \
            else "detect"

    def num_classes(self, model: nn.Module) -> int:
        head = model.model[-1]
        return int(head.linear.out_features if isinstance(head, ClassifyHead) else head.nc)

    def kpt_shape(self, model: nn.Module) -> tuple[int, int] | None:
        return None

    def output_layout(self, model: nn.Module) -> list[tuple[int, list[int]]]:
        """Detection: one output, (batch, anchors x cells, 5 + classes [+ mask coefficients]): box in pixels, then
        objectness and class scores; a segmentation model's prototypes (B, nm, H, W) follow; a classifier's
        logits (B, nc)."""
        task = self.task(model)
        if task == "classify":
            return [(1, [])]
        return [(-1, [0, 1, 2, 3])] + ([(1, [])] if task == "segment" else [])

    def objectness(self, model: nn.Module) -> bool:
        return self.task(model) in ("detect", "segment")

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

    def protected(self, model: nn.Module) -> tuple[str, ...]:
        """The last conv of each layer the anchor head reads (a C3's ``cv3``, a BottleneckCSP's ``cv4``), with the
        channels it reads and writes. The head's 1x1 output convs read those channels directly, with no layer of
        their own in between to absorb a removal: on the tea-bud yolov5n at 0.7x GFLOPs, pruning them kept 81% of
        val mAP50-95, leaving them alone 92%."""
        head = model.model[-1]
        if isinstance(head, ClassifyHead):
            return ()
        out = []
        for f in head.f:
            block = model.model[f]
            last = "cv4" if hasattr(block, "cv4") else "cv3" if hasattr(block, "cv3") else None
            out.append(f"model.{f}.{last}" if last else f"model.{f}")
        return tuple(out)

    def head_output_convs(self, model: nn.Module) -> set[str]:
        """The Detect head's 1x1 output convs (and a Segment's prototype conv); a classifier's final Linear."""
        i, head = len(model.model) - 1, model.model[-1]
        if isinstance(head, ClassifyHead):
            return {f"model.{i}.linear"}
        proto = {f"model.{i}.proto.cv3.conv"} if isinstance(head, AnchorSegment) else set()
        return {f"model.{i}.m.{j}" for j in range(len(head.m))} | proto

    def head_outputs(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Each level's 1x1 conv to ``na * (5 + nc [+ nm])`` channels: per anchor a box (values), then objectness
        and class logits, then a Segment's mask coefficients (values); prototypes and a classifier's logits are
        values."""
        head, out = model.model[-1], {}
        for name in sorted(self.head_output_convs(model)):
            layer = model.get_submodule(name)
            if isinstance(head, AnchorDetect) and name.split(".")[2] == "m":
                k = torch.arange(head.na * head.no) % head.no
                out[name] = (k >= 4) & (k < 5 + head.nc)
            else:
                out[name] = torch.zeros(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels,
                                        dtype=torch.bool)
        return out

    def scores(self, model: nn.Module, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Objectness times the best class probability, the highest over the anchors (the class logits alone are
        conditional on an object, high in the background too)."""
        head = model.model[-1]
        out = {}
        for name, t in outputs.items():
            if isinstance(head, AnchorDetect) and t.dim() == 4 and t.shape[1] == head.na * head.no:
                p = t.float().reshape(t.shape[0], head.na, head.no, *t.shape[2:])[:, :, 4 : 5 + head.nc].sigmoid()
                out[name] = (p[:, :, 0] * p[:, :, 1:].amax(2)).amax(1)
        return out

    def fix_widths(self, model: nn.Module) -> None:
        ultra.fix_widths(model)

    # workflows
    def validator(self, model: nn.Module, settings: ValSettings) -> Callable[[nn.Module], Validation]:
        from yoloprune.sources.yolov5.train import NMS_IOU, VALIDATORS

        task = self.task(model)
        return ultra.Validator(VALIDATORS[task], task, settings, NMS_IOU)

    def train(self, job: TrainJob) -> Path:
        from yoloprune.sources.yolov5.train import run

        model = job.given.get("ema") or job.given.get("model")
        if isinstance(model, checkpoint.MODELS) and self.task(model) != "detect":
            raise ConfigError(f"training original YOLOv5 {self.task(model)} models is not offered (their loss is "
                              "not implemented here); prune them one-shot with calibration, or train them with "
                              "the original repository")
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
        task = self.task(net)
        names = ["output0", "output1"] if task == "segment" else ["output0"]
        axes = None
        if dynamic:
            axes = {"images": {0: "batch", 2: "height", 3: "width"},
                    "output0": {0: "batch"} if task == "classify" else {0: "batch", 1: "anchors"}}
            if task == "segment":
                axes["output1"] = {0: "batch", 2: "mask_height", 3: "mask_width"}

        labels = getattr(net, "names", None) or [f"class{i}" for i in range(self.num_classes(net))]
        labels = dict(labels) if isinstance(labels, dict) else dict(enumerate(labels))
        meta = {"description": "original YOLOv5, exported by yoloprune", "source": self.name, "task": task,
                "stride": str(self.max_stride(net)), "batch": "1", "imgsz": str([imgsz, imgsz]),
                "names": str({int(k): str(v) for k, v in labels.items()})}

        def write(tmp: str) -> None:
            import onnx

            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(net, im, tmp, opset_version=17, input_names=["images"], output_names=names,
                                  dynamic_axes=axes, do_constant_folding=True, dynamo=False)
            written = onnx.load(tmp)  # the metadata the original export.py and Ultralytics' AutoBackend read
            for key, value in meta.items():
                written.metadata_props.add(key=key, value=value)
            onnx.save(written, tmp)

        return atomic_write(out, write)

    def exported_validator(self, kind: str, settings: ValSettings) -> Callable[[str], Validation]:
        """Exported files (FP32 or INT8 ONNX, read by their metadata) through Ultralytics' AutoBackend and the
        validator of their layout (score = objectness x class)."""
        from yoloprune.sources.yolov5.train import NMS_IOU, VALIDATORS

        return ultra.Validator(VALIDATORS[kind], kind, settings, NMS_IOU)


__all__ = ["YOLOv5Adapter", "is_original_yaml"]
