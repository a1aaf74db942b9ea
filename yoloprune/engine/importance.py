"""Channel importance per pruning unit, from a registry of criteria.

A unit's score aggregates over every layer in its coupled group. Built in:

- ``l1``/``l2``: the mean norm of the unit's effective (BN-scaled) filters, over the layers that produce it;
- ``bn``: the mean |gamma| of its BatchNorms (network slimming);
- ``act``: data-aware. What removing the channel takes away from the layers that read it once reconstruction
  has let the remaining channels take over: sum over consumers of ``||W_eff[:, c]|| * s_c``, with ``W_eff`` the
  consumer's weights scaled by its BatchNorm (or by 1/std of its output, for a head's bare output conv) and
  ``s_c`` the standard deviation of the part of channel c that the consumer's other inputs cannot predict
  linearly, on calibration images. It is measured in the consumers' normalised outputs, so one threshold
  compares every layer.

The registry (names, flags, help) is ``engine.criteria``; add a criterion with ``@register("name")`` on a
function ``(unit, ctx) -> float``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from yoloprune.engine.criteria import CRITERIA, entry, names, register
from yoloprune.engine.graph import Member, Unit
from yoloprune.engine.surgery import inputs_of, surgery_for
from yoloprune.errors import ConfigError


@dataclass
class ScoreContext:
    """What criteria may read: the model's modules, conv -> following BatchNorm, and (data-aware criteria) the
    calibration reference with per-channel input moments of every layer (``yoloprune.engine.reconstruct.Reference``)."""

    modules: dict[str, nn.Module]
    bn_after: dict[str, str]
    reference: Any | None = None
    cache: dict = field(default_factory=dict, repr=False)  # per-layer figures computed once per scoring

    def filter_norms(self, name: str, p: int) -> list[float]:
        """The L``p`` norm of each output filter of layer ``name``, scaled by its BatchNorm's |gamma| / std."""
        key = ("norms", name, p)
        if key not in self.cache:
            mod = self.modules[name]
            rows = mod.weight.detach().movedim(surgery_for(mod).out_axis, 0).flatten(1)
            norms = (rows.abs().sum(1) if p == 1 else rows.pow(2).sum(1).sqrt()).tolist()
            if name in self.bn_after:
                scale = _bn_scale(self.modules[self.bn_after[name]]).tolist()
                norms = [n * s for n, s in zip(norms, scale, strict=True)]
            self.cache[key] = norms
        return self.cache[key]

    def gammas(self, name: str) -> list[float]:
        """|gamma| of each channel of BatchNorm ``name``."""
        key = ("gammas", name)
        if key not in self.cache:
            self.cache[key] = self.modules[name].weight.detach().abs().tolist()
        return self.cache[key]


Criterion = Callable[[Unit, ScoreContext], float]


def _is_bn(mod: nn.Module) -> bool:
    return isinstance(mod, nn.modules.batchnorm._BatchNorm)


def _bn_scale(bn: nn.Module) -> torch.Tensor:
    """|gamma| / sqrt(var + eps) per channel: how much a BatchNorm scales its input in eval mode."""
    gamma = bn.weight.detach().abs() if bn.weight is not None else torch.ones_like(bn.running_var)
    return (gamma / torch.sqrt(bn.running_var + bn.eps)).float()


def _norm(unit: Unit, ctx: ScoreContext, p: int) -> float:
    scores = [ctx.filter_norms(m.module, p)[m.index] for m in unit.producers if not _is_bn(ctx.modules[m.module])]
    return sum(scores) / len(scores) if scores else math.inf


def l1(unit: Unit, ctx: ScoreContext) -> float:
    return _norm(unit, ctx, 1)


def l2(unit: Unit, ctx: ScoreContext) -> float:
    return _norm(unit, ctx, 2)


def bn(unit: Unit, ctx: ScoreContext) -> float:
    gammas = [ctx.gammas(m.module)[m.index] for m in unit.producers
              if _is_bn(ctx.modules[m.module]) and ctx.modules[m.module].weight is not None]
    return sum(gammas) / len(gammas) if gammas else math.inf


def _consumer_column(mod: nn.Module, m: Member, bn_scale: torch.Tensor | None) -> float:
    """||W_eff[:, c]||: the weights with which a consumer reads its input channel c, rows scaled by its BN."""
    w = mod.weight.detach().float()
    if isinstance(mod, nn.Conv2d) and mod.groups > 1:
        col = w[m.index].reshape(1, -1)  # depthwise: channel c feeds output c alone
        scale = bn_scale[m.index:m.index + 1] if bn_scale is not None else None
    else:
        col = inputs_of(mod, m.index).detach().float()  # (out, ...)
        col = col.reshape(col.shape[0], -1)
        scale = bn_scale
    if scale is not None:
        col = col * scale[:, None]
    return float(col.norm())


def _output_scale(ref, name: str) -> torch.Tensor | None:
    """1 / std of each output channel of a layer with no BatchNorm after it (a head's output conv), so that its
    consumers' columns measure a relative change of that output, as BatchNorm's scale does for the others."""
    out = ref.outputs.get(name)
    return None if out is None else 1.0 / out.std(0).clamp_min(1e-6)


def act(unit: Unit, ctx: ScoreContext) -> float:
    ref = ctx.reference
    total, seen = 0.0, False
    for m in unit.members:
        if m.dim != 1 or ref is None or m.module not in ref.var:
            continue
        mod = ctx.modules[m.module]
        bn_name = ctx.bn_after.get(m.module)
        scale = _bn_scale(ctx.modules[bn_name]) if bn_name else _output_scale(ref, m.module)
        total += _consumer_column(mod, m, scale) * float(ref.unexplained_std(m.module)[m.index])
        seen = True
    return total if seen else math.inf


def group_scores(units: list[Unit], ctx: ScoreContext, method: str) -> torch.Tensor:
    """Scores of one group's units, normalised by the group mean where the criterion asks for it."""
    e = entry(method)
    if e.needs_data and ctx.reference is None:
        raise ConfigError(f"method {method!r} needs calibration images (--calib-data)")
    fn = e.fn
    s = torch.tensor([fn(u, ctx) for u in units], dtype=torch.float64)
    if e.normalise:
        finite = s[torch.isfinite(s)]
        mean = finite.mean() if finite.numel() else torch.tensor(1.0, dtype=torch.float64)
        s = s / mean.clamp_min(1e-12)
    return s


__all__ = ["CRITERIA", "ScoreContext", "entry", "group_scores", "names", "register"]
