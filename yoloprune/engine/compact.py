"""Exact compaction: remove what is already fixed, the model's outputs unchanged. Fake pruning (zeroed kernels
still in place) made real: residual blocks whose branch is dead (depth), channels that are zero across their whole
coupled group, and constant channels whose consumers can absorb the constant exactly (width)."""

from __future__ import annotations

from torch import nn

from yoloprune.engine.compensate import input_means
from yoloprune.engine.graph import Graph, Unit
from yoloprune.engine.hooks import ModelHooks, example_input, trace_model
from yoloprune.engine.plan import Plan
from yoloprune.engine.prune import apply_checked
from yoloprune.engine.report import Report, snapshot
from yoloprune.engine.surgery import bn_channel_zero, dead_blocks, layer_channel_zero, remove_blocks


def dead_units(model: nn.Module, graph: Graph) -> list[Unit]:
    """Prunable units whose channels are exactly zero everywhere: every producing conv/BN chain outputs 0."""
    modules = dict(model.named_modules())
    return [u for u in graph.units if not u.frozen and u.zero_preserving and _unit_is_zero(u, modules, graph)]


def _unit_is_zero(unit: Unit, modules: dict[str, nn.Module], graph: Graph) -> bool:
    bns = {m.module: m.index for m in unit.producers if isinstance(modules[m.module], nn.BatchNorm2d)}
    fed = {graph.bn_source.get(b) for b in bns}
    for m in unit.producers:
        mod = modules[m.module]
        if isinstance(mod, nn.BatchNorm2d):
            src = graph.bn_source.get(m.module)
            if not bn_channel_zero(mod, m.index, modules[src] if src is not None else None):
                return False
        elif m.module not in fed and not layer_channel_zero(mod, m.index):
            return False
    return True


def constant_units(model: nn.Module, graph: Graph) -> list[Unit]:
    """Prunable units that are the same value everywhere (every producing conv filter is zero, so each channel is
    a bias, BN shift or function of them) and that every consumer reads through an unpadded conv or a linear layer
    with a bias or BatchNorm to absorb the constant. Removing them with mean compensation is exact."""
    modules = dict(model.named_modules())
    return [u for u in graph.units if not u.frozen and u.producers
            and all(_constant_ok(modules[m.module], m, graph.bn_after) for m in u.members)]


def _constant_ok(mod: nn.Module, m, bn_after: dict[str, str]) -> bool:
    if m.dim == 0:
        if isinstance(mod, nn.BatchNorm2d):
            return True
        return isinstance(mod, nn.Conv2d) and mod.groups == 1 and not bool(mod.weight.detach()[m.index].any())
    if isinstance(mod, nn.Linear):
        return mod.bias is not None
    if not isinstance(mod, nn.Conv2d) or mod.groups != 1 or (mod.bias is None and m.module not in bn_after):
        return False
    pad = mod.padding
    return pad == "valid" or (not isinstance(pad, str) and all(p == 0 for p in pad))


def compact(net: nn.Module, hooks: ModelHooks, imgsz: int = 640) -> Report:
    """Remove what is already fixed from ``net``, in place, outputs unchanged: residual blocks whose branch is dead
    (depth), channels that are zero across their whole coupled group, and constant channels (zero filters behind a
    BN shift) whose consumers can absorb the constant exactly (width). ``imgsz``: for the report's GFLOPs."""
    before = snapshot(net, hooks, imgsz)
    blocks = dead_blocks(net, hooks)
    remove_blocks(net, blocks)
    graph = trace_model(net, hooks)
    dead = dead_units(net, graph)
    ids = {u.id for u in dead}
    const = [u for u in constant_units(net, graph) if u.id not in ids]
    p = Plan(graph, frozenset(ids | {u.id for u in const}))
    means = None
    if const:  # every removed channel is constant, so one blank image measures the values exactly
        consumers = {m.module for u in const for m in u.members if m.dim == 1}
        means = input_means(net, example_input(net, hooks), consumers)
    apply_checked(net, p, hooks, means)
    return Report.build(net, hooks, before, graph, removed=len(p.remove), imgsz=imgsz, action="compact",
                        removed_blocks=blocks)
