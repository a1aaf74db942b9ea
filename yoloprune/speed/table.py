"""Latency tables: every conv of a model timed alone on the deployment runtime at the widths pruning can leave.

Each conv (with its BatchNorm folded, as exports have it, and its SiLU when a BatchNorm follows it) is built as a
one-layer model at its input resolution and timed at a grid of input and output widths (``FRACTIONS`` of its own,
rounded to ``round_to``). The table (``engine.costs.CostTable``) predicts a pruned model's latency and tells the
planner which channels cost the most time. It is cached per model architecture, image size, runtime, threads and
machine (``speed.cache``), so a second prune on the same machine reuses it; any change in those builds a new one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from yoloprune.engine.costs import CostTable, LayerCost
from yoloprune.speed import cache, timing

FRACTIONS = (1.0, 0.75, 0.5, 0.25)  # of a layer's width, plus the narrowest width pruning may leave
VERSION = 1  # of the table's measurement; a change makes old caches stale


@dataclass(frozen=True)
class ConvSpec:
    """One conv as the runtime sees it: widths, kernel, resolution of its input, and a SiLU after it or not."""

    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    height: int
    width: int
    act: bool

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.cin == self.cout

    @property
    def grouped(self) -> bool:
        """Grouped but not depthwise: its widths are not pruned (the graph freezes such convs)."""
        return self.groups > 1 and not self.depthwise

    def at(self, cin: int, cout: int) -> ConvSpec:
        groups = cout if self.depthwise else self.groups
        return ConvSpec(cin, cout, self.kernel, self.stride, self.padding, self.dilation, groups, self.height,
                        self.width, self.act)


def conv_specs(model: nn.Module, imgsz: int, activated: set[str]) -> dict[str, ConvSpec]:
    """Every plain conv of ``model`` at ``imgsz`` (from one forward pass), by name; ``activated``: the convs a
    BatchNorm (and so an activation) follows."""
    specs: dict[str, ConvSpec] = {}
    hooks = []

    def hook(name):
        def record(mod, args, _out):
            h, w = args[0].shape[2:]
            specs[name] = ConvSpec(mod.in_channels, mod.out_channels, tuple(mod.kernel_size), tuple(mod.stride),
                                   tuple(mod.padding), tuple(mod.dilation), mod.groups, int(h), int(w),
                                   name in activated)
        return record

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and isinstance(mod.padding, tuple):
            hooks.append(mod.register_forward_hook(hook(name)))
    p = next(model.parameters())
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, imgsz, imgsz, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return specs


def grid(width: int, round_to: int) -> list[int]:
    """The widths a layer of ``width`` channels is timed at: ``FRACTIONS`` of it and the narrowest, rounded up
    to multiples of ``round_to``, ascending."""
    def up(x: float) -> int:
        return min(width, max(round_to, -(-int(round(x)) // round_to) * round_to))
    return sorted({up(f * width) for f in FRACTIONS} | {up(1)})


def _cache_key(specs: dict[str, ConvSpec], imgsz: int, rt, round_to: int) -> str:
    return cache.digest({"table": VERSION, "fractions": FRACTIONS, "round_to": round_to, "imgsz": imgsz,
                         "runtime": rt.key(), **cache.host(), "layers": {n: asdict(s) for n, s in specs.items()}})


@dataclass
class Built:
    table: CostTable
    path: Path  # the cache file
    cached: bool  # read from the cache, not measured now
    seconds: float  # spent measuring (0 when cached)


def latency_table(model: nn.Module, imgsz: int, activated: set[str], rt, round_to: int = 8,
                  runs: int = 15) -> Built:
    """The latency table of ``model``'s convs at ``imgsz`` on ``rt``: read from the cache when this model
    architecture, size, runtime and machine were timed before, else measured (layers with the same shape timed
    once) and cached."""
    specs = conv_specs(model, imgsz, activated)
    path = cache.cache_dir() / f"{_cache_key(specs, imgsz, rt, round_to)}.json"
    saved = cache.read(path)
    if saved is not None:
        try:
            return Built(_from_json(saved), path, True, 0.0)
        except (KeyError, TypeError):
            pass  # a damaged cache file is measured again and replaced
    t0 = time.perf_counter()
    timed: dict[ConvSpec, float] = {}
    layers: dict[str, LayerCost] = {}
    for name, spec in specs.items():
        cins, couts = grid(spec.cin, round_to), grid(spec.cout, round_to)
        if spec.depthwise:
            cins = couts
        elif spec.grouped:  # timed at its own widths alone
            cins, couts = [spec.cin], [spec.cout]
        values = []
        for ci in cins:
            row = []
            for co in couts:
                if spec.depthwise and ci != co:
                    row.append(0.0)
                    continue
                s = spec.at(ci, co)
                if s not in timed:
                    timed[s] = rt.block_ms(s, runs)
                row.append(timed[s])
            values.append(row)
        layers[name] = LayerCost(cins, couts, values, spec.depthwise)
    table = CostTable(layers, "ms", {"imgsz": imgsz, **rt.key(), "machine": timing.machine(), "blocks": len(timed)})
    cache.write(path, _to_json(table))
    return Built(table, path, False, time.perf_counter() - t0)


def _to_json(table: CostTable) -> dict:
    return {"unit": table.unit, "meta": table.meta, "layers": {n: asdict(c) for n, c in table.layers.items()}}


def _from_json(data: dict) -> CostTable:
    return CostTable({n: LayerCost(**c) for n, c in data["layers"].items()}, data["unit"], data["meta"])




__all__ = ["FRACTIONS", "Built", "ConvSpec", "conv_specs", "grid", "latency_table"]
