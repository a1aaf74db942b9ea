"""``yoloprune info``: what a model is made of and what the graph would let a pruner touch."""

from __future__ import annotations

from collections import Counter

from yoloprune import api
from yoloprune.engine.compact import dead_units
from yoloprune.engine.plan import bn_safe_max
from yoloprune.engine.report import snapshot
from yoloprune.engine.slimming import gamma_stats, penalised_bns


def describe(model, imgsz: int = 640, verbose: bool = False) -> str:
    net, _ = api.load_model(model)
    hooks = api.hooks_for(net)
    snap = snapshot(net, hooks, imgsz)
    graph = api.trace_model(net)
    groups = graph.groups()
    frozen = Counter(r for u in graph.frozen_units() for r in u.frozen)
    frozen_layers = Counter()
    for u in graph.frozen_units():
        for m in u.producers:
            frozen_layers[m.module] += 1
    gam = gamma_stats(net, penalised_bns(net, graph))
    lines = [
        f"model: {model if isinstance(model, str) else type(model).__name__}",
        f"params: {snap.params:,}   GFLOPs@{imgsz}: {snap.gflops:.3f}   "
        f"weight sparsity: {snap.zeros / max(snap.weights, 1):.2%} ({snap.zeros:,} exact zeros)",
        f"channel units: {len(graph.units)} ({sum(len(v) for v in groups.values())} prunable in {len(groups)} "
        f"coupled groups, {len(graph.frozen_units())} frozen)",
        f"exactly-zero prunable units (removable by compact): {len(dead_units(net, graph))}",
        f"BN |gamma| of prunable channels: mean {gam.mean_abs:.3f}, {gam.frac_below:.1%} below {gam.threshold:g}; "
        f"bn pruning safe maximum ratio {bn_safe_max(net, graph):.3f}",
        f"frozen channel units by reason ({sum(frozen.values())} reasons for {len(graph.frozen_units())} units: "
        "a unit frozen for several reasons is listed under each):",
        *(f"  {n:6d}  {why}" for why, n in frozen.most_common()),
        "layers with frozen output channels:",
        *(f"  {name} ({n})" for name, n in sorted(frozen_layers.items()) if not name.endswith(".bn")),
    ]
    if verbose:
        lines += ["layer widths:", *(f"  {n:40} {w}" for n, w in snap.widths.items())]
    return "\n".join(lines)
