"""Channel-coupling graph from one real forward pass.

Every channel of every 4-D (NCHW) or 2-D (NC) tensor carries an integer label. A conv or linear layer mints fresh
labels for its output channels; BN, activations, pooling and upsampling pass labels through; an element-wise op
(residual add, gating multiply) unites the labels of its operands position by position; ``cat`` on the channel
dim concatenates label lists; ``chunk`` slices them and unites its equal pieces position by position (so the
pieces stay equal after pruning). Any other op that touches labelled channels freezes them, and its outputs get
fresh frozen labels. Union-find over labels gives the atomic pruning units: one *unit* is a set of channels
that must be removed together, and it records every (module, dim, index) it touches.

A trace uses ``TorchFunctionMode``, so it needs no hooks and sees functional calls inside any module. It
restores the model's train/eval mode and leaves no state behind.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from yoloprune.engine.traced_ops import _flat_tensors, _has_tensor, _spans_channels, _Width, _widths, handler_for
from yoloprune.errors import UnsupportedModelError

# Ops that keep each channel where it is and act on it alone. The second flag says f(0) == 0 (zero-preserving),
# which exact compaction needs: a channel that is zero before such an op is zero after it.
_CHANNELWISE: dict[str, bool] = {
    "silu": True, "relu": True, "relu_": True, "relu6": True, "leaky_relu": True, "hardswish": True,
    "gelu": True, "mish": True, "tanh": True, "elu": True, "celu": True, "selu": True, "hardtanh": True,
    "max_pool2d": True, "avg_pool2d": True, "adaptive_avg_pool2d": True, "adaptive_max_pool2d": True,
    "interpolate": True, "upsample": True, "upsample_nearest2d": True, "upsample_bilinear2d": True,
    "dropout": True, "dropout2d": True, "detach": True, "contiguous": True, "clone": True, "float": True,
    "half": True, "to": True, "type": True, "type_as": True, "neg": True, "__neg__": True, "abs": True,
    "sigmoid": False, "hardsigmoid": False, "softplus": False, "exp": False, "cos": False,
}
_ELEMENTWISE = {
    "add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__rsub__", "__isub__", "sub_",
    "mul", "__mul__", "__rmul__", "__imul__", "mul_", "div", "__truediv__", "__rtruediv__", "__itruediv__",
    "div_", "maximum", "minimum",
}
# Ops that return no tensor or do not read channel values in a layout-dependent way.
_IGNORED = {"size", "dim", "numel", "__get__", "__len__", "__format__", "__repr__", "requires_grad_", "is_floating_point",
            "__bool__", "__iter__", "item", "tolist", "data_ptr", "__hash__", "__eq__", "__ne__", "get_device", "__setstate__",
            "__reduce_ex__", "element_size", "stride", "storage_offset", "is_contiguous"}


@dataclass
class Member:
    """One channel of one module touched by a unit: dim 0 = output channels, dim 1 = input channels."""

    module: str
    dim: int
    index: int


@dataclass
class Unit:
    """Channels that must be removed together. ``frozen`` says why they never are (empty: prunable)."""

    id: int
    members: list[Member] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    zero_preserving: bool = True

    @property
    def producers(self) -> list[Member]:
        return [m for m in self.members if m.dim == 0]

    def key(self) -> tuple:
        """Units with equal keys touch the same modules the same way: they form one layer-level group."""
        return tuple(sorted({(m.module, m.dim) for m in self.members}))


@dataclass
class Graph:
    """The traced coupling structure of one model."""

    units: list[Unit]
    module_types: dict[str, type]
    bn_source: dict[str, str]  # BatchNorm name -> conv name whose output it normalises directly
    frozen_ops: dict[str, int]  # op description -> number of channels frozen by it

    @property
    def bn_after(self) -> dict[str, str]:
        """conv name -> the BatchNorm that directly normalises its output (``bn_source`` inverted)."""
        return {conv: bn for bn, conv in self.bn_source.items()}

    def groups(self) -> dict[tuple, list[Unit]]:
        """Prunable units grouped by the set of modules they touch (a residual chain, a conv's filters, ...)."""
        out: dict[tuple, list[Unit]] = defaultdict(list)
        for u in self.units:
            if not u.frozen:
                out[u.key()].append(u)
        return dict(out)

    def frozen_units(self) -> list[Unit]:
        return [u for u in self.units if u.frozen]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.frozen: dict[int, list[str]] = {}
        self.nonzero_preserving: set[int] = set()

    def new(self, n: int, frozen: str | None = None) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        if frozen:
            for i in range(start, start + n):
                self.frozen[i] = [frozen]
        return list(range(start, start + n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def freeze(self, labels: list[int], why: str) -> None:
        for i in labels:
            self.frozen.setdefault(i, []).append(why)


def _fname(func) -> str:
    return getattr(func, "__name__", None) or str(func)


class _Tracer(TorchFunctionMode):
    """Records channel labels of every tensor that flows through the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.uf = _UnionFind()
        self.labels: dict[int, list[int]] = {}
        self.keep: list[torch.Tensor] = []  # keep traced tensors alive so ids are never reused
        self.param_owner = {id(p): name for name, m in model.named_modules() for p in m.parameters(recurse=False)}
        self.leaves = {name for name, m in model.named_modules() if isinstance(m, _PARAM_LEAVES)}
        self.members: list[tuple[int, Member]] = []
        self.visited: set[str] = set()
        self.producer: dict[int, str] = {}  # id(tensor) -> conv that produced it
        self.bn_source: dict[str, str] = {}
        self.frozen_ops: dict[str, int] = defaultdict(int)

    # -- label bookkeeping -------------------------------------------------------------------------------------
    def _get(self, t) -> list[int] | None:
        return self.labels.get(id(t)) if isinstance(t, torch.Tensor) else None

    def _set(self, t: torch.Tensor, labels: list[int]) -> None:
        self.labels[id(t)] = labels
        self.keep.append(t)

    def _record(self, owner: str, dim: int, labels: list[int]) -> None:
        """Channel i of ``owner`` along ``dim`` carries ``labels[i]``."""
        self.members.extend((label, Member(owner, dim, i)) for i, label in enumerate(labels))

    def _fresh(self, t, why: str | None = None) -> None:
        if isinstance(t, torch.Tensor) and t.dim() in (2, 4):
            self._set(t, self.uf.new(t.shape[1], frozen=why))

    def _freeze_all(self, tensors: list, outputs: list, why: str) -> None:
        for t in tensors:
            lab = self._get(t)
            if lab:
                self.uf.freeze(lab, why)
                self.frozen_ops[why] += len(lab)
        for o in outputs:
            self._fresh(o, why)

    def _freeze_layer(self, owner: str, w: torch.Tensor, why: str) -> None:
        """Layer ``owner`` (weight ``w``: out, in, ...) reached with every input and output channel frozen."""
        self.visited.add(owner)
        self._record(owner, 1, self.uf.new(w.shape[1], frozen=why))
        self._record(owner, 0, self.uf.new(w.shape[0], frozen=why))
        self.frozen_ops[why] += w.shape[0]

    def _freeze_layers(self, tensors: list, why: str) -> None:
        """Layers whose weights an op we do not know reads as a whole (attention's ``multi_head_attention_forward``
        reads its projections): reached, every channel frozen."""
        for t in tensors:
            owner = self.param_owner.get(id(t))
            if owner in self.leaves and owner not in self.visited and t.dim() >= 2:
                self._freeze_layer(owner, t, why)

    # -- dispatch ---------------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _fname(func)
        for w in _widths(args, kwargs):
            self.uf.freeze(w.labels, "width read from a shape")
            self.frozen_ops["width read from a shape"] += len(w.labels)
        if name in ("__get__", "size") and args:
            return self._shape(args, out)
        if name in _IGNORED or not _has_tensor(out):
            return out
        handler = handler_for(name)
        ins = _flat_tensors(args, kwargs)
        if handler is not None and handler(self, args, kwargs, out) is not False:
            return out
        if name in _CHANNELWISE and self._passthrough(args[0] if args else None, out, name):
            return out
        if name in _ELEMENTWISE and self._elementwise(args, out):
            return out
        outs = out if isinstance(out, (list, tuple)) else [out]
        self._freeze_layers(ins, f"op '{name}'")
        if any(self._get(t) for t in ins):
            self._freeze_all(ins, outs, f"op '{name}'")
        else:
            for o in outs:
                self._fresh(o)  # constants (anchors, grids): no labels to couple
        return out

    def _shape(self, args, out):
        """``x.shape`` / ``x.size()`` / ``x.size(1)`` of a labelled tensor: the channel count comes back as a _Width."""
        lab = self._get(args[0])
        if lab is None:
            return out
        if isinstance(out, torch.Size) and len(out) >= 2:
            return torch.Size([out[0], _Width(out[1], lab), *out[2:]])
        if isinstance(out, int) and len(args) > 1 and isinstance(args[1], int):
            if args[1] % args[0].dim() == 1:
                return _Width(out, lab)
        return out

    def _passthrough(self, x, out, name: str) -> bool:
        lab = self._get(x)
        if lab is None or not isinstance(out, torch.Tensor) or out.dim() != x.dim() or out.shape[1] != len(lab):
            return False
        if not _CHANNELWISE[name]:
            self.uf.nonzero_preserving.update(lab)
        self._set(out, lab)
        return True

    def _elementwise(self, args, out) -> bool:
        if not isinstance(out, torch.Tensor) or out.dim() not in (2, 4):
            return False
        c = out.shape[1]
        result: list[int] | None = None
        for a in args[:2]:
            lab = self._get(a)
            if lab is not None and len(lab) == c:
                if result is None:
                    result = lab
                else:
                    for i, j in zip(result, lab, strict=True):
                        self.uf.union(i, j)
            elif _spans_channels(a, out):
                return False  # a per-channel operand we cannot couple (a parameter, a constant): freeze
        if result is None:
            return False
        self._set(out, result)
        return True


_PARAM_LEAVES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)


@dataclass(frozen=True)
class Branch:
    """A training-only module that inference skips (a loss's auxiliary head): it reads the input
    (``at="input"``) or the output (``at="output"``) of module ``reads``. The trace runs it there, so that its
    input channels are coupled with what it reads, and freezes its outputs, which are that loss's contract."""

    module: str
    reads: str
    at: str = "output"


def _branch_hooks(model: nn.Module, branches: tuple[Branch, ...], side: list) -> list:
    """Hooks that run each branch on what it reads during the traced forward pass, collecting its outputs."""
    hooks = []
    for b in branches:
        run = model.get_submodule(b.module)
        reads = model.get_submodule(b.reads)
        if b.at == "input":
            hooks.append(reads.register_forward_pre_hook(lambda _m, args, run=run: side.append(run(args[0]))))
        else:
            hooks.append(reads.register_forward_hook(lambda _m, _a, out, run=run: side.append(run(out))))
    return hooks


def trace(model: nn.Module, example: torch.Tensor | None = None, imgsz: int = 64,
          outputs: Callable[[Any], list[torch.Tensor]] | None = None, branches: tuple[Branch, ...] = (),
          unused: tuple[str, ...] = ()) -> Graph:
    """Trace one forward pass and return the coupling graph. The model's mode and state are left as they were.

    ``outputs`` picks from the model's return value the tensors whose channels are its contract (they are
    frozen); by default every returned tensor. ``branches`` are training-only modules run beside the pass (their
    outputs frozen too); ``unused`` names modules (and their children) that read no traced channel at all, such as
    a loss's own network, which the pass may skip.
    """
    was_training = model.training
    if example is None:
        p = next(model.parameters())
        example = torch.zeros(1, 3, imgsz, imgsz, dtype=p.dtype, device=p.device)
    tracer = _Tracer(model)
    side: list[torch.Tensor] = []
    hooks = _branch_hooks(model, branches, side)
    model.eval()
    try:
        with torch.no_grad(), tracer:
            x = example.clone()
            tracer._set(x, tracer.uf.new(x.shape[1], frozen="network input"))
            out = model(x)
        tracer._freeze_all((outputs or _flat_outputs)(out), [], "network output")
        tracer._freeze_all(side, [], "training-only output")
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return _build_graph(model, tracer, unused)


def _flat_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat_outputs(v)]
    return []


def _build_graph(model: nn.Module, tr: _Tracer, unused: tuple[str, ...] = ()) -> Graph:
    types = {name: type(m) for name, m in model.named_modules()}
    missed = [n for n, m in model.named_modules() if isinstance(m, _PARAM_LEAVES) and n not in tr.visited
              and not any(n == u or n.startswith(u + ".") for u in unused)]
    if missed:
        raise UnsupportedModelError(
            f"{len(missed)} layer(s) were not reached by the traced forward pass (e.g. {missed[0]}); "
            "their channel coupling is unknown, so pruning would not be safe")
    by_root: dict[int, Unit] = {}
    for label, member in tr.members:
        root = tr.uf.find(label)
        unit = by_root.setdefault(root, Unit(id=len(by_root)))
        unit.members.append(member)
    for label, reasons in tr.uf.frozen.items():
        unit = by_root.get(tr.uf.find(label))
        if unit is not None:
            unit.frozen.extend(r for r in reasons if r not in unit.frozen)
    for label in tr.uf.nonzero_preserving:
        unit = by_root.get(tr.uf.find(label))
        if unit is not None:
            unit.zero_preserving = False
    for unit in by_root.values():
        if not unit.producers:  # input channels of nothing we can remove (e.g. image channels)
            unit.frozen.append("no producing layer")
    return Graph(list(by_root.values()), types, tr.bn_source, dict(tr.frozen_ops))


__all__ = ["Branch", "Graph", "Member", "Unit", "trace"]
