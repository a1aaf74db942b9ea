"""Channel importance per pruning unit: filter norms (l1, l2) or |BN gamma| (network slimming).

A unit's score aggregates over every layer in its coupled group: the mean filter norm over the conv (or linear)
layers that produce it, or the mean |gamma| over its BatchNorms.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from yoloprune.graph import Unit

METHODS = ("l1", "l2", "bn")


def _filter_norm(module: nn.Module, index: int, p: int) -> float:
    w = module.weight.detach()
    row = w[:, index] if isinstance(module, nn.ConvTranspose2d) else w[index]
    return float(row.abs().sum()) if p == 1 else float(row.pow(2).sum().sqrt())


def _bn_scale(bn: nn.Module, index: int) -> float:
    """|gamma| / sqrt(var + eps): how much a BatchNorm scales its input channel in eval mode."""
    gamma = bn.weight.detach()[index].abs() if bn.weight is not None else 1.0
    return float(gamma / torch.sqrt(bn.running_var[index] + bn.eps))


def unit_score(unit: Unit, modules: dict[str, nn.Module], method: str, bn_after: dict[str, str] | None = None) -> float:
    """Importance of one unit; ``inf`` where the method has nothing to measure (never pruned first).

    l1/l2 measure the *effective* filter: a conv followed by a BatchNorm has its norm multiplied by the BN's
    scale, because BN rescales whatever the raw filter produces (the norm of the conv+BN fused filter)."""
    scores = []
    bn_after = bn_after or {}
    for m in unit.producers:
        mod = modules[m.module]
        is_bn = isinstance(mod, nn.modules.batchnorm._BatchNorm)
        if method == "bn" and is_bn and mod.weight is not None:
            scores.append(float(mod.weight.detach()[m.index].abs()))
        elif method in ("l1", "l2") and not is_bn:
            norm = _filter_norm(mod, m.index, 1 if method == "l1" else 2)
            if m.module in bn_after:
                norm *= _bn_scale(modules[bn_after[m.module]], m.index)
            scores.append(norm)
    return sum(scores) / len(scores) if scores else math.inf


def group_scores(units: list[Unit], modules: dict[str, nn.Module], method: str,
                 bn_after: dict[str, str] | None = None) -> torch.Tensor:
    """Scores of one group's units. l1/l2 are divided by the group mean so that a global threshold compares
    layers of different fan-in fairly; |gamma| is already on a common scale (BN), so bn scores stay raw."""
    s = torch.tensor([unit_score(u, modules, method, bn_after) for u in units], dtype=torch.float64)
    if method in ("l1", "l2"):
        finite = s[torch.isfinite(s)]
        mean = finite.mean() if finite.numel() else torch.tensor(1.0, dtype=torch.float64)
        s = s / mean.clamp_min(1e-12)
    return s
