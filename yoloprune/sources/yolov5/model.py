"""Models of the original YOLOv5 repository (github.com/ultralytics/yolov5), built from its yamls or unpickled
from its checkpoints (``checkpoint.py``): the anchor-based head ``AnchorDetect``, the model ``YOLOv5Model``, and
stand-ins for the ``models.common`` blocks that Ultralytics has no same-named equivalent of. Nothing of that
repository (nor the ``yolov5`` PyPI package) is needed.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics.nn import modules as um
from ultralytics.nn.tasks import BaseModel
from ultralytics.utils.torch_utils import initialize_weights

from yoloprune.errors import CheckpointError


class AnchorDetect(nn.Module):
    """YOLOv5's anchor-based head: one 1x1 conv per level to ``na * (5 + nc)`` channels.

    Train mode returns the raw maps ``(B, na, H, W, 5 + nc)``; eval mode returns ``(y, maps)`` with ``y`` of shape
    ``(B, N, 5 + nc)``: xywh in pixels, objectness and class scores, sigmoid-decoded with the grid and anchors
    (``anchors`` are in units of each level's stride). With ``export`` set it returns ``(y,)``.
    """

    stride = None
    dynamic = False
    export = False

    def __init__(self, nc: int = 80, anchors: Any = (), ch: tuple = (), inplace: bool = True) -> None:
        super().__init__()
        self.nc, self.no, self.nl = nc, nc + 5, len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    def forward(self, x: list[torch.Tensor]):
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                if self.dynamic or self.grid[i].shape[2:4] != x[i].shape[2:4]:
                    self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
                z.append(self._decode(x[i], i).view(bs, self.na * nx * ny, self.no))
        if self.training:
            return x
        return (torch.cat(z, 1),) if self.export else (torch.cat(z, 1), x)

    def _decode(self, p: torch.Tensor, i: int) -> torch.Tensor:
        """One level's raw outputs (B, na, H, W, no) decoded: xywh in pixels, then sigmoid scores."""
        xy, wh, conf = p.sigmoid().split((2, 2, self.nc + 1), 4)
        xy = (xy * 2 + self.grid[i]) * self.stride[i]
        wh = (wh * 2) ** 2 * self.anchor_grid[i]
        return torch.cat((xy, wh, conf), 4)

    def _make_grid(self, nx: int, ny: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        d, t = self.anchors[i].device, self.anchors[i].dtype
        shape = 1, self.na, ny, nx, 2
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t),
                                indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


class AnchorSegment(AnchorDetect):
    """v7.0's ``Segment`` head: an anchor head whose per-anchor outputs end in ``nm`` mask coefficients (left
    undecoded), and a ``Proto`` on the first level's input making ``nm`` prototypes at stride 4. Eval mode returns
    ``(y, protos, maps)``; with ``export`` set, ``(y, protos)``."""

    def __init__(self, nc: int = 80, anchors: Any = (), nm: int = 32, npr: int = 256, ch: tuple = (),
                 inplace: bool = True) -> None:
        super().__init__(nc, anchors, ch, inplace)
        self.nm, self.npr, self.no = nm, npr, 5 + nc + nm
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.proto = _proto(ch[0], npr, nm)
        self.detect = AnchorDetect.forward  # v7.0's Segment.forward calls it; pickled as models.yolo.Detect.forward

    def forward(self, x: list[torch.Tensor]):
        p = self.proto(x[0])
        out = AnchorDetect.forward(self, x)
        if self.training:
            return out, p
        return (out[0], p) if self.export else (out[0], p, out[1])

    def _decode(self, p: torch.Tensor, i: int) -> torch.Tensor:
        """As Detect's, the mask coefficients left raw."""
        xy, wh, conf, mask = p.split((2, 2, self.nc + 1, self.nm), 4)
        xy = (xy.sigmoid() * 2 + self.grid[i]) * self.stride[i]
        wh = (wh.sigmoid() * 2) ** 2 * self.anchor_grid[i]
        return torch.cat((xy, wh, conf.sigmoid(), mask), 4)


def _proto(c1: int, c_: int = 256, c2: int = 32) -> nn.Module:
    """``models.common.Proto``: Ultralytics' Proto (same attributes and forward) with the original's nearest
    upsampling instead of a transposed conv."""
    m = um.Proto(c1, c_, c2)
    m.upsample = nn.Upsample(scale_factor=2, mode="nearest")
    return m


class ClassifyHead(um.Classify):
    """``models.common.Classify`` (v6.2 on): conv to 1280, pool, dropout, linear; returns logits in every mode
    (Ultralytics' Classify returns softmax probabilities in eval mode)."""

    def forward(self, x):
        if isinstance(x, list):
            x = torch.cat(x, 1)
        return self.linear(self.drop(self.pool(self.conv(x)).flatten(1)))


class CenterCrop:
    """``utils.augmentations.CenterCrop`` (v6.2 on), kept on a classifier as ``model.transforms``: the largest
    centred square of an HWC image, resized to ``h`` x ``w``."""

    def __init__(self, size: int | tuple[int, int] = 640) -> None:
        self.h, self.w = (size, size) if isinstance(size, int) else size

    def __call__(self, im):
        import cv2

        imh, imw = im.shape[:2]
        m = min(imh, imw)
        top, left = (imh - m) // 2, (imw - m) // 2
        return cv2.resize(im[top : top + m, left : left + m], (self.w, self.h), interpolation=cv2.INTER_LINEAR)


class ToTensor:
    """``utils.augmentations.ToTensor`` (v6.2 on): an HWC BGR uint8 image to a CHW RGB tensor in [0, 1]."""

    def __init__(self, half: bool = False) -> None:
        self.half = half

    def __call__(self, im):
        import numpy as np

        t = torch.from_numpy(np.ascontiguousarray(im.transpose((2, 0, 1))[::-1]))
        return (t.half() if self.half else t.float()) / 255.0


class YOLOv5ClassifyModel(BaseModel):
    """An original YOLOv5 classification model (v6.2 on): a detection backbone cut at ``cutoff`` layers and a
    ``Classify`` head, as the original ``ClassificationModel._from_detection_model`` makes it. Returns logits;
    inputs are normalised with ImageNet's mean and std."""

    def __init__(self, detector: YOLOv5Model | None = None, nc: int = 1000, cutoff: int = 10) -> None:
        nn.Module.__init__(self)
        if detector is None:
            return
        layers = detector.model[:cutoff]
        last = layers[-1]
        c1 = last.conv.in_channels if hasattr(last, "conv") else last.cv1.conv.in_channels
        head = ClassifyHead(c1, nc)
        head.i, head.f, head.type = last.i, last.f, "models.common.Classify"
        layers[-1] = head
        self.model, self.stride, self.save, self.nc = layers, detector.stride, [], nc
        self.names = {i: str(i) for i in range(nc)}


class YOLOv5Model(BaseModel):
    """An original YOLOv5 detection model: ``model`` (the layers, each with ``f``/``i``), ``save``, ``names``,
    ``stride``, ``yaml``. Ultralytics' ``BaseModel`` supplies the forward, ``fuse`` and ``loss`` plumbing, so
    Ultralytics' trainer and validator run it; the criterion is the anchor-based YOLOv5 loss."""

    def __init__(self, cfg: dict | str | Path, nc: int | None = None) -> None:
        nn.Module.__init__(self)
        self.yaml = copy.deepcopy(cfg) if isinstance(cfg, dict) else _read_yaml(cfg)
        if nc is not None:
            self.yaml["nc"] = nc
        self.model, self.save = _parse(copy.deepcopy(self.yaml), self.yaml.get("ch", 3))
        if self.yaml.get("activation"):
            _set_activation(self.model, self.yaml["activation"])
        self.names = {i: str(i) for i in range(self.yaml["nc"])}
        self.inplace = self.yaml.get("inplace", True)
        head = self.model[-1]
        s = 256
        head.inplace = self.inplace
        out = self.forward(torch.zeros(1, self.yaml.get("ch", 3), s, s))
        maps = out[0] if isinstance(head, AnchorSegment) else out
        head.stride = torch.tensor([s / x.shape[-2] for x in maps])
        _check_anchor_order(head)
        head.anchors /= head.stride.view(-1, 1, 1)
        self.stride = head.stride
        self._initialize_biases()
        initialize_weights(self)

    def _initialize_biases(self) -> None:
        """Objectness prior of 8 objects per 640 image, class prior 0.6/nc (the original repository's init)."""
        head = self.model[-1]
        for mi, s in zip(head.m, head.stride, strict=True):
            b = mi.bias.view(head.na, -1)
            b.data[:, 4] += math.log(8 / (640 / s) ** 2)
            b.data[:, 5 : 5 + head.nc] += math.log(0.6 / (head.nc - 0.99999))
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)

    def _apply(self, fn):
        nn.Module._apply(self, fn)
        head = self.model[-1]
        if isinstance(head, AnchorDetect):
            head.stride = fn(head.stride)
            # the grids are caches, rebuilt on the next forward in the new device and dtype (releases before
            # v6.0 kept the anchor grid as a buffer)
            head._buffers.pop("anchor_grid", None)
            head.grid = [torch.empty(0) for _ in range(head.nl)]
            head.anchor_grid = [torch.empty(0) for _ in range(head.nl)]
        return self

    def init_criterion(self):
        from yoloprune.sources.yolov5.loss import YOLOv5Loss

        return YOLOv5Loss(self)

    end2end = False  # read by Ultralytics' validator: NMS is needed

    def set_head_attr(self, **kwargs) -> None:
        """Called by Ultralytics' trainer (e.g. ``max_det``); the anchor head has no such settings, NMS applies them."""
        head = self.model[-1]
        for k, v in kwargs.items():
            if hasattr(head, k):
                setattr(head, k, v)


class YOLOv5SegmentModel(YOLOv5Model):
    """v7.0's ``SegmentationModel``: a detection model whose head is ``Segment``."""


def _read_yaml(path: str | Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"cannot read model yaml {path}: {e}") from None


def _set_activation(layers: nn.Module, spec: str) -> None:
    """A yaml's ``activation`` (e.g. ``nn.LeakyReLU(0.1)``) replaces the default SiLU of every Conv, as the original
    repository's ``Conv.default_act`` does; parsed, never evaluated."""
    import re

    match = re.fullmatch(r"\s*nn\.(\w+)\(([-+0-9.eE, ]*)\)\s*", str(spec))
    if not match or not isinstance(getattr(nn, match[1], None), type):
        raise CheckpointError(f"model yaml: unsupported activation {spec!r}")
    args = [float(a) for a in match[2].split(",") if a.strip()]
    for m in layers.modules():
        if isinstance(m, um.Conv) and isinstance(m.act, nn.SiLU):
            m.act = getattr(nn, match[1])(*args)


def _check_anchor_order(head: AnchorDetect) -> None:
    """Anchor sizes must grow with the stride, as the original repository ensures at build time."""
    a = head.anchors.prod(-1).mean(-1).view(-1)
    da, ds = a[-1] - a[0], head.stride[-1] - head.stride[0]
    if da and (da.sign() != ds.sign()):
        head.anchors[:] = head.anchors.flip(0)


class CrossConv(um.Bottleneck):
    """``models.common.CrossConv``: cv1 (1xk), cv2 (kx1), ``add`` shortcut; Ultralytics' Bottleneck forward."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, g: int = 1, e: float = 1.0,
                 shortcut: bool = False) -> None:
        nn.Module.__init__(self)
        c_ = int(c2 * e)
        self.cv1 = um.Conv(c1, c_, (1, k), (1, s))
        self.cv2 = um.Conv(c_, c2, (k, 1), (s, 1), g=g)
        self.add = shortcut and c1 == c2


class C3SPP(um.C3):
    """``models.common.C3SPP``: a C3 whose ``m`` is an SPP; C3's forward."""

    def __init__(self, c1: int, c2: int, k: tuple = (5, 9, 13), n: int = 1, shortcut: bool = True, g: int = 1,
                 e: float = 0.5) -> None:
        super().__init__(c1, c2, n, shortcut, g, e)
        self.m = um.SPP(int(c2 * e), int(c2 * e), k)


# The original constructors where Ultralytics' same-named ones build something else (the forward is the same):
# its Bottleneck defaults to a 3x3 cv1 (the original's is 1x1), BottleneckCSP builds its inner blocks so, and its
# SPPF's cv1 has no activation unless its own yaml parser puts SiLU back.
def _bottleneck(c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5) -> nn.Module:
    return um.Bottleneck(c1, c2, shortcut, g, k=(1, 3), e=e)


def _bottleneck_csp(c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5) -> nn.Module:
    m = um.BottleneckCSP(c1, c2, n, shortcut, g, e)
    c_ = int(c2 * e)
    m.m = nn.Sequential(*(_bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))
    return m


def _sppf(c1: int, c2: int, k: int = 5) -> nn.Module:
    m = um.SPPF(c1, c2, k)
    m.cv1.act = um.Conv.default_act
    for extra in ("n", "add"):  # Ultralytics-only settings; its forward defaults to the original's behaviour
        m.__dict__.pop(extra, None)
    return m


_BUILD = {"Bottleneck": _bottleneck, "BottleneckCSP": _bottleneck_csp, "SPPF": _sppf}


class Contract(nn.Module):
    """``models.common.Contract``: width-height into channels by ``gain``."""

    def __init__(self, gain: int = 2) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        s = self.gain
        x = x.view(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(b, c * s * s, h // s, w // s)


class Expand(nn.Module):
    """``models.common.Expand``: channels into width-height by ``gain``."""

    def __init__(self, gain: int = 2) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        s = self.gain
        x = x.view(b, s, s, c // s**2, h, w).permute(0, 3, 4, 1, 5, 2).contiguous()
        return x.view(b, c // s**2, h * s, w * s)


# Pickled original name -> the class that stands in for it. Ultralytics blocks are used where their attributes and
# forward are the original's (compared one by one against models/common.py of the original repository).
COMMON = {name: getattr(um, name) for name in (
    "Conv", "DWConv", "DWConvTranspose2d", "TransformerLayer", "TransformerBlock", "Bottleneck", "BottleneckCSP",
    "C3", "C3x", "C3TR", "C3Ghost", "SPP", "SPPF", "Focus", "GhostConv", "GhostBottleneck", "Concat")}
COMMON.update({"CrossConv": CrossConv, "C3SPP": C3SPP, "Contract": Contract, "Expand": Expand, "Proto": um.Proto,
               "Classify": ClassifyHead})

def _parse(d: dict, ch_in: int) -> tuple[nn.Sequential, list[int]]:
    """Layers of an original YOLOv5 model yaml, built with the stand-in classes and tagged as the original does."""
    nc, gd, gw = d["nc"], d["depth_multiple"], d["width_multiple"]
    anchors = d["anchors"]
    na = len(anchors[0]) // 2 if isinstance(anchors, list) else anchors
    no, ch_mul = na * (nc + 5), d.get("channel_multiple") or 8
    layers, save, ch = [], [], [ch_in]
    for i, (f, n, name, args) in enumerate(d["backbone"] + d["head"]):
        args = [nc if a == "nc" else anchors if a == "anchors" else None if a == "None" else a for a in args]
        n = max(round(n * gd), 1) if n > 1 else n
        m, c2, args, n = _layer(name, f, n, args, ch, gw, no, ch_mul)
        m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        m_.i, m_.f, m_.np = i, f, sum(p.numel() for p in m_.parameters())
        m_.type = _type_name(name, m)
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        ch = [] if i == 0 else ch
        ch.append(c2)
    return nn.Sequential(*layers), sorted(save)


_CHANNEL_BLOCKS = {"Conv", "GhostConv", "Bottleneck", "GhostBottleneck", "SPP", "SPPF", "DWConv", "Focus",
                   "CrossConv", "BottleneckCSP", "C3", "C3TR", "C3SPP", "C3Ghost", "nn.ConvTranspose2d",
                   "DWConvTranspose2d", "C3x"}
_REPEATED = {"BottleneckCSP", "C3", "C3TR", "C3Ghost", "C3x"}


def _layer(name: str, f, n: int, args: list, ch: list[int], gw: float, no: int, ch_mul: int):
    """(class, output channels, constructor args, repeats) of one yaml row, by the original parse rules."""
    if name in _CHANNEL_BLOCKS:
        m = nn.ConvTranspose2d if name == "nn.ConvTranspose2d" else _BUILD.get(name) or COMMON[name]
        c1, c2 = ch[f], args[0]
        if c2 != no:
            c2 = math.ceil(c2 * gw / ch_mul) * ch_mul
        args = [c1, c2, *args[1:]]
        if name in _REPEATED:
            args.insert(2, n)
            n = 1
        return m, c2, args, n
    if name == "Concat":
        return COMMON[name], sum(ch[x] for x in f), args, n
    if name in ("Detect", "Segment"):
        args.append([ch[x] for x in f])
        if isinstance(args[1], int):
            args[1] = [list(range(args[1] * 2))] * len(f)
        if name == "Segment":
            args[3] = math.ceil(args[3] * gw / 8) * 8
        return (AnchorDetect if name == "Detect" else AnchorSegment), None, args, n
    if name in ("Contract", "Expand"):
        c = ch[f] * args[0] ** 2 if name == "Contract" else ch[f] // args[0] ** 2
        return COMMON[name], c, args, n
    if name.startswith("nn.") and hasattr(nn, name[3:]):
        m = getattr(nn, name[3:])
        return m, ch[f], ([ch[f]] if m is nn.BatchNorm2d else args), n
    raise CheckpointError(f"model yaml: unknown module {name!r}")


def _type_name(name: str, m) -> str:
    if m in (AnchorDetect, AnchorSegment):
        return f"models.yolo.{'Detect' if m is AnchorDetect else 'Segment'}"
    if name.startswith("nn."):
        return f"{m.__module__}.{m.__name__}"
    return f"models.common.{name}"
