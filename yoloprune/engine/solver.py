"""Widths chosen by estimated damage, and channels chosen by the refit's own objective (structured OBS).

Least-squares reconstruction refits every layer that loses inputs. What a removal costs is then what that refit
cannot recover: for a consumer with input covariance S (centred, on the calibration images) and weights W, removing
input channel j and refitting the rest raises the output error by ``sum_o,k W[o, j, k]^2 / P[j, j]``, P being the
inverse of S over the inputs still there (Optimal Brain Surgeon, per channel; a k x k kernel's taps are taken as
sharing the channel covariance). After a removal, P is downdated and W takes the refit's update, so a run of removals
adds up to exactly the error of removing the set at once. The error is measured in the consumer's BatchNorm-
normalised outputs (for a head's bare output conv: relative to each output's spread), so one number compares every
layer, and a unit's damage is the sum over all the layers that read it.

``removal_curve`` orders one coupled group's units (``select="obs"``: greedily, the least damaging next; ``"score"``:
by the criterion's scores) and gives the cumulative damage after each removal. ``allocate`` then chooses every
group's width at once under the budget (GFLOPs, or a count of units for a ratio): a greedy exchange that removes,
step by step, the ``round_to`` slice whose damage per GFLOP saved is lowest, with the GFLOPs of each layer computed
from its current input and output widths. The damage is a local estimate: what a layer's refit cannot recover, not
what the model's outputs lose.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from yoloprune.engine.graph import Unit
from yoloprune.engine.reconstruct import Reference

RIDGE = 1e-3  # relative to the mean diagonal of the covariance, as Reference.unexplained_std


@dataclass(frozen=True)
class Curve:
    """One group's removal order (indices into its units) and the cumulative damage after each removal
    (``damage[r]``: after the first r; ``damage[0] == 0``)."""

    order: list[int]
    damage: list[float]


class Consumer:
    """One layer reading a group's channels: its (output-normalised) weights and the inverse input covariance,
    both updated as channels are removed."""

    def __init__(self, mod: nn.Module, name: str, ref: Reference, scale: torch.Tensor | None) -> None:
        w = mod.weight.detach().double()
        self.depthwise = isinstance(mod, nn.Conv2d) and mod.groups > 1
        w = w.reshape(w.shape[0], w.shape[1], -1) if w.dim() > 2 else w[:, :, None]  # (out, in, taps)
        if scale is not None and not self.depthwise:
            w = w * scale.double()[:, None, None]
        self.scale = scale
        self.w = w
        cov = ref.cov[name].double()
        cov = cov + RIDGE * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(len(cov), dtype=cov.dtype)
        self.var = cov.diagonal().clone()
        self.p = torch.linalg.inv(cov)

    def costs(self) -> torch.Tensor:
        """Per input channel: the output error that removing it now adds, after the refit of the others."""
        if self.depthwise:  # input j feeds output j alone: nothing can take over
            s = self.scale.double() ** 2 if self.scale is not None else 1.0
            return self.w.pow(2).sum((1, 2)) * self.var * s
        diag = self.p.diagonal()
        return torch.where(diag > 0, self.w.pow(2).sum((0, 2)) / diag.clamp_min(1e-300), torch.zeros_like(diag))

    def remove(self, j: int) -> None:
        if self.depthwise:
            return
        pj, pjj = self.p[j].clone(), float(self.p[j, j])
        if pjj <= 0:
            return
        self.w -= self.w[:, j:j + 1] * (pj / pjj)[None, :, None]  # the refit's update of the other inputs
        self.p -= torch.outer(pj, pj) / pjj
        self.w[:, j] = 0


def _output_scale(mod: nn.Module, name: str, modules: dict, bn_after: dict, ref: Reference) -> torch.Tensor | None:
    """Per output channel of a consumer: its BatchNorm's |gamma| / std, or 1 / std of its output without one."""
    bn = modules.get(bn_after.get(name, ""))
    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
        gamma = bn.weight.detach().abs() if bn.weight is not None else torch.ones_like(bn.running_var)
        return (gamma / torch.sqrt(bn.running_var + bn.eps)).float()
    out = ref.outputs.get(name)
    return None if out is None else 1.0 / out.std(0).clamp_min(1e-6)


def removal_curve(units: list[Unit], modules: dict[str, nn.Module], bn_after: dict[str, str], ref: Reference,
                  scores: torch.Tensor, select: str, limit: int) -> Curve:
    """Remove up to ``limit`` of ``units`` one by one, in score order or (``obs``) the least damaging first."""
    consumers: dict[str, Consumer] = {}
    reads: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))  # consumer -> units, inputs
    cols: list[list[tuple[str, int]]] = []  # per unit: (consumer, input index) of each of its consumer members
    for pos, u in enumerate(units):
        mine = []
        for m in u.members:
            mod = modules[m.module]
            if m.dim != 1 or not isinstance(mod, (nn.Conv2d, nn.Linear)) or m.module not in ref.cov:
                continue
            if m.module not in consumers:
                consumers[m.module] = Consumer(mod, m.module, ref,
                                                _output_scale(mod, m.module, modules, bn_after, ref))
            mine.append((m.module, m.index))
            reads[m.module][0].append(pos)
            reads[m.module][1].append(m.index)
        cols.append(mine)
    index = {c: (torch.tensor(us), torch.tensor(js)) for c, (us, js) in reads.items()}
    gone = torch.zeros(len(units), dtype=torch.bool)
    by_score = [int(i) for i in scores.argsort(stable=True)]
    order, damage = [], [0.0]
    for r in range(min(limit, len(units))):
        if select == "obs":
            cost = torch.zeros(len(units), dtype=torch.float64)
            for c, (us, js) in index.items():
                cost.index_add_(0, us, consumers[c].costs()[js])
            pick = int(cost.masked_fill(gone, math.inf).argmin())
        else:
            pick = by_score[r]
        added = 0.0
        for c, j in cols[pick]:  # one at a time: a unit read twice by a layer costs what removing both does
            added += float(consumers[c].costs()[j])
            consumers[c].remove(j)
        damage.append(damage[-1] + added)
        gone[pick] = True
        order.append(pick)
    return Curve(order, damage)


@dataclass
class _Layer:
    """A conv or linear layer's FLOPs as a function of its current widths."""

    per: float  # multiply-adds per (input channel / groups) x output channel
    cin: int
    cout: int
    depthwise: bool

    def flops(self) -> float:
        return self.per * (1 if self.depthwise else self.cin) * self.cout


def layer_costs(model: nn.Module, example: torch.Tensor) -> dict[str, _Layer]:
    """Every conv and linear layer's multiply-adds per channel pair, from one forward pass at the budget's size."""
    layers: dict[str, _Layer] = {}
    hooks = []

    def hook(name):
        def record(mod, _args, out):
            taps = math.prod(mod.kernel_size) if isinstance(mod, nn.Conv2d) else 1
            spatial = math.prod(out.shape[2:]) if out.dim() > 2 else 1
            cin = mod.in_channels if isinstance(mod, nn.Conv2d) else mod.in_features
            cout = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
            dw = isinstance(mod, nn.Conv2d) and mod.groups > 1
            layers[name] = _Layer(taps * spatial, cin, cout, dw)
        return record

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return layers


def _touches(unit: Unit, layers: dict[str, _Layer]) -> dict[str, tuple[int, int]]:
    """Per layer: how many output and input channels one unit of this group holds there."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for m in unit.members:
        if m.module in layers:
            out[m.module][m.dim] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def allocate(groups: list[list[Unit]], curves: list[Curve], allowed: list[list[int]], layers: dict[str, _Layer],
             budget: float, by_flops: bool) -> list[int]:
    """How many units to remove from each group: greedily the step (to the group's next allowed count) with the
    least damage per unit of budget saved, until the saved total reaches ``budget`` (FLOPs, or units when not
    ``by_flops``). ``allowed[g]``: the removal counts the group may stop at, ascending, starting at 0."""
    touch = [_touches(us[0], layers) for us in groups]
    removed, step = [0] * len(groups), [0] * len(groups)
    saved = 0.0
    while saved < budget:
        best, best_rate, best_save = None, math.inf, 0.0
        for g, counts in enumerate(allowed):
            if step[g] + 1 >= len(counts):
                continue
            n = counts[step[g] + 1] - counts[step[g]]
            save = _saving(touch[g], layers, n) if by_flops else float(n)
            if save <= 0:
                continue
            rate = (curves[g].damage[counts[step[g] + 1]] - curves[g].damage[counts[step[g]]]) / save
            if rate < best_rate:
                best, best_rate, best_save = g, rate, save
        if best is None:
            break
        n = allowed[best][step[best] + 1] - allowed[best][step[best]]
        for name, (outs, ins) in touch[best].items():
            layers[name].cout -= outs * n
            layers[name].cin -= ins * n
        step[best] += 1
        removed[best] = allowed[best][step[best]]
        saved += best_save
    return removed


def _saving(touch: dict[str, tuple[int, int]], layers: dict[str, _Layer], n: int) -> float:
    total = 0.0
    for name, (outs, ins) in touch.items():
        layer = layers[name]
        after = _Layer(layer.per, layer.cin - ins * n, layer.cout - outs * n, layer.depthwise)
        total += layer.flops() - after.flops()
    return total


def total_flops(layers: dict[str, _Layer]) -> float:
    return sum(layer.flops() for layer in layers.values())


__all__ = ["Consumer", "Curve", "allocate", "layer_costs", "removal_curve", "total_flops"]
