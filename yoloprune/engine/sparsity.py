"""Global or per-layer unstructured L1 sparsity (as YOLOv5's ``utils.prune``): fake pruning, zeros in place.

Weights are zeroed with ``torch.nn.utils.prune`` and the masks are made permanent at once, so no
``weight_orig``/``weight_mask`` or forward pre-hook is left behind. The tensors keep their shapes: this buys a
smaller *compressed* checkpoint and nothing at inference on dense kernels. ``compact`` (or channel pruning)
is what makes a model smaller and faster.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from yoloprune.engine.hooks import ModelHooks
from yoloprune.errors import ConfigError, check_ratio


@dataclass
class SparsifyConfig:
    amount: float = 0.3  # fraction of the selected conv weights set to zero
    scope: str = "global"  # "global": one magnitude threshold across layers; "layer": the same amount in every layer
    include_head: bool = False  # also sparsify the Detect head's output convs (box/class/DFL)

    def validate(self) -> None:
        check_ratio(self.amount, "amount")
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"unknown scope {self.scope!r}; choose global or layer")


@dataclass
class SparsityReport:
    """What sparsity did: overall and per-layer zero fractions, whole-zero filters, and compressed size."""

    config: SparsifyConfig
    params: int
    sparsity_before: float
    sparsity: float  # zero fraction over the selected conv weights
    layers: dict[str, float] = field(default_factory=dict)  # layer -> zero fraction
    zero_filters: dict[str, int] = field(default_factory=dict)  # layer -> output filters that became all zero
    compressed_before: int = 0  # bytes of the FP16 state dict after zlib
    compressed_after: int = 0
    model: nn.Module | None = field(default=None, repr=False)
    ckpt: dict = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        return {"amount": self.config.amount, "scope": self.config.scope, "params": self.params,
                "sparsity_before": round(self.sparsity_before, 4), "sparsity": round(self.sparsity, 4),
                "zero_filters": sum(self.zero_filters.values()),
                "compressed_bytes_before": self.compressed_before, "compressed_bytes_after": self.compressed_after}

    def table(self, max_rows: int = 40) -> str:
        lines = [
            f"sparsify {self.config.scope} amount={self.config.amount}: {len(self.layers)} conv layers, "
            f"params {self.params:,} (unchanged: fake pruning keeps every tensor's shape)",
            f"zero weights: {self.sparsity_before:.1%} -> {self.sparsity:.1%}",
            f"compressed FP16 weights: {self.compressed_before / 1e6:.2f} MB -> {self.compressed_after / 1e6:.2f} MB",
            f"filters now all zero: {sum(self.zero_filters.values())} (`yoloprune compact` removes those it can "
            "remove exactly)", "", f"{'layer':40}{'zeros':>8}{'all-zero filters':>18}",
        ]
        rows = list(self.layers.items())
        lines += [f"{n:40}{s:>8.1%}{self.zero_filters.get(n, 0):>18}" for n, s in rows[:max_rows]]
        if len(rows) > max_rows:
            lines.append(f"... and {len(rows) - max_rows} more layers")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def target_convs(model: nn.Module, hooks: ModelHooks, include_head: bool = False) -> dict[str, nn.Conv2d]:
    """The conv layers sparsity acts on: all of them, less the head's output convs unless asked."""
    skip = set() if include_head else hooks.head_output_convs(model)
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n not in skip}


def compressed_size(model: nn.Module) -> int:
    """Bytes of the model's FP16 state dict after zlib: what zeros buy on disk or over the wire."""
    buf = io.BytesIO()
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, buf)
    return len(zlib.compress(buf.getvalue(), 6))


def _zero_fraction(convs: dict[str, nn.Conv2d]) -> float:
    total = sum(m.weight.numel() for m in convs.values())
    return sum(int((m.weight == 0).sum()) for m in convs.values()) / max(total, 1)


def sparsify(net: nn.Module, hooks: ModelHooks, cfg: SparsifyConfig) -> SparsityReport:
    """Zero the smallest-magnitude conv weights of ``net`` in place and make it permanent."""
    cfg.validate()
    convs = target_convs(net, hooks, cfg.include_head)
    before, size_before = _zero_fraction(convs), compressed_size(net)
    if cfg.amount > 0:
        pairs = [(m, "weight") for m in convs.values()]
        if cfg.scope == "global":
            tprune.global_unstructured(pairs, pruning_method=tprune.L1Unstructured, amount=cfg.amount)
        else:
            for m, name in pairs:
                tprune.l1_unstructured(m, name, amount=cfg.amount)
        for m, name in pairs:
            tprune.remove(m, name)  # bake the mask into the weight; no weight_orig, mask or hook remains
    layers = {n: float((m.weight == 0).float().mean()) for n, m in convs.items()}
    zero_filters = {n: int((m.weight.flatten(1) == 0).all(1).sum()) for n, m in convs.items()}
    return SparsityReport(cfg, sum(p.numel() for p in net.parameters()), before, _zero_fraction(convs), layers,
                          {n: k for n, k in zero_filters.items() if k}, size_before, compressed_size(net), net)
