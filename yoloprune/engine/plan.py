"""Plan: which coupled units to remove, from a ratio (global threshold or uniform) and a criterion; and the
schedule that spreads a GFLOPs target over several steps.

A PruneConfig says how to prune; the calibration images and the unpruned model's recorded ``Reference`` are data,
passed beside it. A Plan is built once and not changed after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from yoloprune.defaults import METHOD, ROUND_TO
from yoloprune.engine.graph import Graph, Unit
from yoloprune.engine.importance import ScoreContext, entry, group_scores
from yoloprune.engine.reconstruct import Reference
from yoloprune.errors import ConfigError
from yoloprune.targets import Cost, Gflops, Ratio


@dataclass
class PruneConfig:
    """How to prune: the criterion, how widths and channels are chosen, rounding, and what calibration images do.
    How much to prune is a target given beside it (``yoloprune.targets``: ``Ratio``, ``Gflops``, ``Cost``; the
    API also takes ``Speedup`` and ``Latency``, which it turns into one of these by timing)."""

    method: str = METHOD
    # "global": one score threshold across groups; "uniform": the same ratio in every group; "damage": every
    # group's width chosen together by the estimated damage per GFLOP saved (engine.solver; needs calibration)
    scope: str = "global"
    # within a group: "score": the criterion's lowest; "obs": what the refit absorbs best (structured OBS; needs
    # calibration); "auto": obs when calibration images are given, else score
    selection: str = "auto"
    round_to: int = ROUND_TO  # keep each group's width a multiple of this
    min_channels: int = 1  # never keep fewer units than this in a group
    ignore: tuple[str, ...] = ()  # module names (or prefixes) whose channels are left alone
    protect: bool = True  # also leave alone what the model's source protects (ModelHooks.protected)
    # With a cost table and a Cost target: weigh scores by (unit cost / mean) ** cost_power
    cost_power: float = 0.0  # 0.25 cost 7.8 points of mAP50-95 at 1.3x on the tea-bud yolov8n, 1.0 cost 28
    imgsz: int = 640  # image size for GFLOPs
    blocks: bool = False  # bn method: also remove residual blocks whose branch's |gamma| all fall under the threshold
    # With calibration images (given beside the config): removed channels' means are folded into their consumers
    # (mean compensation), data-aware criteria read them, and the options below use them.
    reconstruct: bool = True  # least-squares refit of every layer that lost inputs
    focus: bool = True  # draw half of each layer's fitting samples where the head finds objects (else uniformly)
    recalibrate_bn: bool = False  # re-estimate BatchNorm statistics on the calibration images afterwards
    steps: int = 1  # reach the target in this many prune-and-reconstruct steps (no training)

    def validate(self, calibrated: bool = False, target: Amount | None = None) -> None:
        """Refuse impossible settings; ``calibrated``: calibration images (or a recorded reference) are given;
        ``target``: what the config is to reach (a Ratio unless given), for the combinations it rules out."""
        if entry(self.method).needs_data and not calibrated:
            raise ConfigError(f"method {self.method!r} is data-aware: give calibration images (--calib-data)")
        if self.scope not in ("global", "uniform", "damage"):
            raise ConfigError(f"unknown scope {self.scope!r}; choose global, uniform or damage")
        if self.selection not in ("auto", "score", "obs"):
            raise ConfigError(f"unknown selection {self.selection!r}; choose auto, score or obs")
        if (self.scope == "damage" or self.selection == "obs") and not calibrated:
            raise ConfigError("damage-based widths and obs selection are data-aware: give calibration images "
                              "(--calib-data)")
        if self.round_to < 1 or self.min_channels < 1:
            raise ConfigError("round_to and min_channels must be >= 1")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {self.steps}")
        if not (isinstance(self.cost_power, (int, float)) and math.isfinite(self.cost_power) and self.cost_power >= 0):
            raise ConfigError(f"cost_power must be a finite number >= 0, got {self.cost_power!r}")
        target = Ratio() if target is None else target
        if not isinstance(target, (Ratio, Gflops, Cost)):
            raise ConfigError(f"the engine prunes to a Ratio, Gflops or Cost target, not {target!r}")
        if self.blocks and (self.method != "bn" or self.scope != "global" or not isinstance(target, Ratio)
                            or self.steps > 1):
            raise ConfigError("block removal (blocks/--layers) works with the global bn method and a ratio, in one step")
        if isinstance(target, Cost) and self.scope == "damage":
            raise ConfigError("a cost target is reached by the global or uniform scope (not damage widths)")


Amount = Ratio | Gflops | Cost  # what the engine prunes to


def selection(cfg: PruneConfig, calibrated: bool) -> str:
    """The channel selection ``cfg`` asks for: ``auto`` is obs with calibration data, else score."""
    return ("obs" if calibrated else "score") if cfg.selection == "auto" else cfg.selection


@dataclass(frozen=True)
class Plan:
    """Units to remove, by id, with the graph they index into."""

    graph: Graph
    remove: frozenset[int] = frozenset()
    threshold: float | None = None  # the global score threshold it was cut at (global scope)


def step_target(target: float, i: int, steps: int) -> float:
    """The GFLOPs fraction to reach after step ``i`` of ``steps`` (1-based) on the way to ``target``: equal
    fractions per step, ``target ** (i / steps)``."""
    return target ** (i / steps)


def _ignored(unit: Unit, prefixes: tuple[str, ...]) -> bool:
    return any(m.module == p or m.module.startswith(p + ".") for m in unit.members for p in prefixes)


def _n_keep(n: int, n_remove: int, cfg: PruneConfig) -> int:
    keep = max(n - n_remove, min(cfg.min_channels, n), 1)
    if cfg.round_to > 1:
        keep = min(n, math.ceil(keep / cfg.round_to) * cfg.round_to)
    return keep


def allowed_removals(n: int, cfg: PruneConfig) -> list[int]:
    """How many of a group's ``n`` units may be removed, ascending from 0: the widths left are multiples of
    ``cfg.round_to`` (or ``n``), at least ``cfg.min_channels`` and 1."""
    return sorted({n - _n_keep(n, r, cfg) for r in range(n + 1)})


Scored = list[tuple[list[Unit], torch.Tensor]]  # each coupled group's units and their scores


def score_groups(model: nn.Module, graph: Graph, cfg: PruneConfig, reference: Reference | None = None) -> Scored:
    """Every coupled group not ignored by ``cfg``, with its units' scores by ``cfg.method``."""
    ctx = ScoreContext(dict(model.named_modules()), graph.bn_after, reference)
    groups = [us for us in graph.groups().values() if not any(_ignored(u, cfg.ignore) for u in us)]
    return [(us, group_scores(us, ctx, cfg.method)) for us in groups]


def bn_safe_max(model: nn.Module, graph: Graph) -> float:
    """The highest ratio that global bn pruning (as ``plan`` does it) accepts for this model."""
    return safe_max_ratio([s for _, s in score_groups(model, graph, PruneConfig(method="bn"))])


def global_threshold(scored: Scored, ratio: float) -> float:
    """The score at or under which the lowest ``ratio`` of all units fall."""
    every = torch.cat([s for _, s in scored]) if scored else torch.zeros(0)
    k = int(ratio * every.numel())
    return every.sort().values[k - 1].item() if k > 0 else -math.inf


def plan(model: nn.Module, graph: Graph, cfg: PruneConfig, ratio: float = 0.0, threshold: float | None = None,
         scored: Scored | None = None, reference: Reference | None = None,
         orders: list[list[int]] | None = None) -> Plan:
    """Choose how many units each group loses, under one global threshold (from ``ratio`` unless given) or the
    same fraction of every group, and which: the lowest-scoring, or the first of each group's ``orders`` (removal
    orders by position, as ``solver.removal_curve`` gives them). ``scored``: reuse ``score_groups`` (scores do not
    depend on the ratio)."""
    scored = scored if scored is not None else score_groups(model, graph, cfg, reference)
    if cfg.method == "bn" and cfg.scope == "global":
        safe = safe_max_ratio([s for _, s in scored])  # already bn scores: the same as bn_safe_max
        if ratio > safe:
            raise ConfigError(f"ratio {ratio} is above the safe maximum {safe:.3f} for bn pruning of this model: "
                              "a global |gamma| threshold that high would empty a layer")
    if cfg.scope == "global" and threshold is None:
        threshold = global_threshold(scored, ratio)
    remove: set[int] = set()
    for g, (units, scores) in enumerate(scored):
        n_remove = int((scores <= threshold).sum()) if cfg.scope == "global" else int(ratio * len(units))
        order = orders[g] if orders is not None else scores.argsort(stable=True).tolist()
        drop = order[: len(units) - _n_keep(len(units), n_remove, cfg)]
        remove.update(units[i].id for i in drop)
    return Plan(graph, frozenset(remove), threshold)


def safe_max_ratio(scores_by_group: list[torch.Tensor]) -> float:
    """Highest global ratio that keeps at least one unit in every group under one threshold on these scores.

    A threshold wipes a group when it reaches the group's best score, so it must stay below the smallest of
    the groups' best scores; the ratio is the fraction of scores under that.
    """
    every = torch.cat(scores_by_group) if scores_by_group else torch.zeros(0)
    maxima = [float(s.max()) for s in scores_by_group if s.numel() and math.isfinite(float(s.max()))]
    if not maxima:
        return 0.0
    return float((every < min(maxima)).sum()) / every.numel()
