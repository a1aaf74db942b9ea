"""A per-layer cost table: what each conv (or linear) layer costs at the widths it may be pruned to.

The engine does not measure anything: a caller builds the table (``speed.table`` times every conv on
the runtime the model is deployed with) and passes it beside the config. The engine reads it two ways:

- ``total``: the predicted cost of a model at its current widths (bilinear in a layer's input and output widths
  between the measured grid points), the budget of a ``Cost`` target;
- ``unit_cost``: what removing one unit of a coupled group saves (the table's slope, summed over the layers the
  unit touches), by which ``weigh`` divides the group's importance scores, so that a global threshold removes
  first what costs most time per unit of importance (as hardware-aware pruning does, e.g. HALP).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from torch import nn

from yoloprune.engine.graph import Unit


@dataclass
class LayerCost:
    """One layer's measured cost on a grid of input and output widths (``values[i][j]``: at ``cin[i]``,
    ``cout[j]``). A depthwise layer's widths move together: ``cin == cout`` and only the diagonal is used."""

    cin: list[int]
    cout: list[int]
    values: list[list[float]]
    depthwise: bool = False

    def at(self, cin: int, cout: int) -> float:
        if self.depthwise:
            return max(_interp(self.cout, [self.values[k][k] for k in range(len(self.cout))], cout), 0.0)
        rows = [_interp(self.cout, row, cout) for row in self.values]
        return max(_interp(self.cin, rows, cin), 0.0)

    def slope(self, dim: int) -> float:
        """Cost saved per channel removed at full width, along outputs (``dim`` 0) or inputs (1): the secant to
        the next grid point down (a depthwise layer's whole cost goes with its outputs)."""
        if self.depthwise:
            if dim == 1:
                return 0.0
            if len(self.cout) < 2:
                return self.values[-1][-1] / self.cout[-1]
            return max(self.values[-1][-1] - self.values[-2][-2], 0.0) / (self.cout[-1] - self.cout[-2])
        ws = self.cout if dim == 0 else self.cin
        full = self.values[-1][-1]
        if len(ws) < 2:  # one measured width: cost in proportion to it
            return full / ws[-1]
        lower = self.values[-1][-2] if dim == 0 else self.values[-2][-1]
        return max(full - lower, 0.0) / (ws[-1] - ws[-2])


def _interp(xs: list[int], ys: list[float], x: float) -> float:
    """Linear interpolation on ascending ``xs``, extrapolated linearly beyond either end."""
    if len(xs) == 1:
        return ys[0] * x / xs[0]  # one measured width: cost in proportion
    k = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1 = xs[k - 1], xs[k]
    return ys[k - 1] + (ys[k] - ys[k - 1]) * (x - x0) / (x1 - x0)


@dataclass
class CostTable:
    """Per layer name, its ``LayerCost``; ``unit`` names what the numbers are (``ms`` for a latency table)."""

    layers: dict[str, LayerCost]
    unit: str = "ms"
    meta: dict = field(default_factory=dict)

    def total(self, model: nn.Module) -> float:
        """The predicted cost of ``model`` at its current widths (layers the table lacks cost nothing)."""
        out = 0.0
        for name, mod in model.named_modules():
            cost = self.layers.get(name)
            if cost is not None:
                out += cost.at(*_widths(mod))
        return out

    def unit_cost(self, unit: Unit) -> float:
        return sum(self.layers[m.module].slope(m.dim) for m in unit.members if m.module in self.layers)


def _widths(mod: nn.Module) -> tuple[int, int]:
    if isinstance(mod, nn.Conv2d):
        return mod.in_channels, mod.out_channels
    return mod.in_features, mod.out_features


def layer_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Every conv and linear layer's (input, output) widths."""
    return {n: _widths(m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def weigh(groups: list[list[Unit]], scores: list, table: CostTable, power: float) -> list:
    """Each group's scores divided by (its unit cost / the mean unit cost) ** ``power``: with one global
    threshold, a group whose channels save more cost each loses more of them."""
    costs = [table.unit_cost(units[0]) for units in groups]
    positive = [c for c in costs if c > 0]
    if not positive or power == 0:
        return scores
    mean = sum(positive) / len(positive)
    floor = 0.05 * mean  # a unit that saves (almost) nothing measurable is not made infinitely precious
    return [s / (max(c, floor) / mean) ** power for s, c in zip(scores, costs, strict=True)]


__all__ = ["CostTable", "LayerCost", "layer_widths", "weigh"]
