"""Network slimming (Liu et al., ICCV 2017): L1 on BN gammas during training, then prune by a global |gamma|.

Only BatchNorms whose channels the coupling graph can prune are penalised: pushing a frozen channel's gamma to
zero would cost accuracy and buy nothing. The penalty is the subgradient ``sr * sign(gamma)``, added to the
gradient after the AMP grad scaler has unscaled it and after gradient clipping, so neither rescales the penalty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from yoloprune.engine.graph import Graph


def penalised_bns(model: nn.Module, graph: Graph) -> dict[str, torch.Tensor]:
    """BN name -> bool mask over its channels that belong to prunable (unfrozen) units of ``model``'s graph."""
    modules = dict(model.named_modules())
    masks: dict[str, torch.Tensor] = {}
    for unit in graph.units:
        if unit.frozen:
            continue
        for m in unit.producers:
            bn = modules[m.module]
            if isinstance(bn, nn.BatchNorm2d) and bn.weight is not None:
                masks.setdefault(m.module, torch.zeros(bn.num_features, dtype=torch.bool))[m.index] = True
    return masks


@torch.no_grad()
def add_l1_subgradient(model: nn.Module, masks: dict[str, torch.Tensor], sr: float) -> None:
    """grad(gamma) += sr * sign(gamma) on the masked channels (call it on unscaled gradients)."""
    for name, mask in masks.items():
        bn = model.get_submodule(name)
        if bn.weight.grad is None:
            continue
        g = bn.weight
        bn.weight.grad.add_(torch.sign(g) * mask.to(g.device, g.dtype), alpha=sr)


def gammas(model: nn.Module, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """|gamma| of the penalised channels, flattened (float32, CPU)."""
    parts = [model.get_submodule(n).weight.detach().abs().float().cpu()[m] for n, m in masks.items()]
    return torch.cat(parts) if parts else torch.zeros(0)


@dataclass
class GammaStats:
    mean_abs: float
    frac_below: float  # fraction of penalised gammas with |gamma| < threshold
    threshold: float = 1e-2

    def as_metrics(self) -> dict[str, float]:
        return {"slim/mean|gamma|": self.mean_abs, f"slim/frac|gamma|<{self.threshold:g}": self.frac_below}


def gamma_stats(model: nn.Module, masks: dict[str, torch.Tensor], threshold: float = 1e-2) -> GammaStats:
    g = gammas(model, masks)
    if not g.numel():
        return GammaStats(math.nan, math.nan, threshold)
    return GammaStats(float(g.mean()), float((g < threshold).float().mean()), threshold)
