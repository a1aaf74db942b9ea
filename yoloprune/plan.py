"""Plan: which coupled units to remove, from a ratio (global threshold or uniform) and a criterion.

Part of the engine: imports torch and yoloprune's engine modules only, never a model source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from yoloprune.errors import ConfigError
from yoloprune.graph import Graph, Unit
from yoloprune.importance import ScoreContext, entry, group_scores
from yoloprune.reconstruct import Reference, Refit


@dataclass
class PruneConfig:
    """How to prune. ``ratio`` is the fraction of prunable units (coupled channels) removed."""

    ratio: float = 0.0
    method: str = "l1"
    scope: str = "global"  # "global": one threshold across groups; "uniform": the same ratio in every group
    round_to: int = 1  # keep each group's width a multiple of this
    min_channels: int = 1  # never keep fewer units than this in a group
    ignore: tuple[str, ...] = ()  # module names (or prefixes) whose channels are left alone
    target_gflops: float | None = None  # instead of ratio: prune until GFLOPs <= this fraction of the original
    imgsz: int = 640  # image size for GFLOPs
    blocks: bool = False  # bn method: also remove residual blocks whose branch's |gamma| all fall under the threshold
    # Calibration images (N, 3, H, W), no labels needed: removed channels' means are folded into their consumers
    # (mean compensation), data-aware criteria read them, and the options below use them.
    calibration: torch.Tensor | None = None
    reconstruct: bool = True  # least-squares refit of every layer that lost inputs (needs calibration)
    recalibrate_bn: bool = False  # re-estimate BatchNorm statistics on the calibration images afterwards
    reference: Reference | None = None  # the unpruned model recorded on ``calibration`` (reused across a sweep)
    steps: int = 1  # reach the ratio or GFLOPs target in this many prune-and-reconstruct steps (no training)

    def validate(self) -> None:
        if not isinstance(self.ratio, (int, float)) or not math.isfinite(self.ratio) or not 0 <= self.ratio < 1:
            raise ConfigError(f"ratio must be in [0, 1), got {self.ratio}")
        if entry(self.method).needs_data and self.calibration is None and self.reference is None:
            raise ConfigError(f"method {self.method!r} is data-aware: give calibration images (--calib-data)")
        if self.scope not in ("global", "uniform"):
            raise ConfigError(f"unknown scope {self.scope!r}; choose global or uniform")
        if self.round_to < 1 or self.min_channels < 1:
            raise ConfigError("round_to and min_channels must be >= 1")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {self.steps}")
        if self.blocks and (self.method != "bn" or self.scope != "global" or self.target_gflops is not None
                            or self.steps > 1):
            raise ConfigError("block removal (blocks/--layers) works with the global bn method and a ratio, in one step")
        if self.target_gflops is not None and not 0 < self.target_gflops <= 1:
            raise ConfigError(f"target_gflops is a fraction of the original GFLOPs in (0, 1], got {self.target_gflops}")


@dataclass
class Plan:
    """Units to remove, by id, with the graph they index into."""

    graph: Graph
    remove: set[int] = field(default_factory=set)
    means: dict[str, torch.Tensor] | None = None  # consumer input means for mean compensation (None: off)
    threshold: float | None = None  # the global score threshold it was cut at (global scope)
    refits: dict[str, Refit] = field(default_factory=dict)  # layers refit by reconstruction, with their errors


def _ignored(unit: Unit, prefixes: tuple[str, ...]) -> bool:
    return any(m.module == p or m.module.startswith(p + ".") for m in unit.members for p in prefixes)


def _n_keep(n: int, n_remove: int, cfg: PruneConfig) -> int:
    keep = max(n - n_remove, min(cfg.min_channels, n), 1)
    if cfg.round_to > 1:
        keep = min(n, math.ceil(keep / cfg.round_to) * cfg.round_to)
    return keep


def _scored(model: nn.Module, graph: Graph, cfg: PruneConfig) -> list[tuple[list[Unit], torch.Tensor]]:
    ctx = ScoreContext(dict(model.named_modules()), graph.bn_after, cfg.reference)
    groups = [us for us in graph.groups().values() if not any(_ignored(u, cfg.ignore) for u in us)]
    return [(us, group_scores(us, ctx, cfg.method)) for us in groups]


def bn_safe_max(model: nn.Module, graph: Graph) -> float:
    """The highest ratio that global bn pruning (as ``plan`` does it) accepts for this model."""
    return safe_max_ratio([s for _, s in _scored(model, graph, PruneConfig(method="bn"))])


def global_threshold(scored: list[tuple[list[Unit], torch.Tensor]], ratio: float) -> float:
    """The score at or under which the lowest ``ratio`` of all units fall."""
    every = torch.cat([s for _, s in scored]) if scored else torch.zeros(0)
    k = int(ratio * every.numel())
    return every.sort().values[k - 1].item() if k > 0 else -math.inf


def plan(model: nn.Module, graph: Graph, cfg: PruneConfig, threshold: float | None = None,
         scored: list[tuple[list[Unit], torch.Tensor]] | None = None) -> Plan:
    """Choose the lowest-scoring units: under one global threshold (from ``cfg.ratio`` unless given), or the same
    fraction of every group."""
    scored = scored if scored is not None else _scored(model, graph, cfg)  # scores do not depend on the ratio
    if cfg.method == "bn" and cfg.scope == "global":
        safe = safe_max_ratio([s for _, s in scored])  # already bn scores: the same as bn_safe_max
        if cfg.ratio > safe:
            raise ConfigError(f"ratio {cfg.ratio} is above the safe maximum {safe:.3f} for bn pruning of this model: "
                              "a global |gamma| threshold that high would empty a layer")
    if cfg.scope == "global" and threshold is None:
        threshold = global_threshold(scored, cfg.ratio)
    out = Plan(graph, threshold=threshold)
    for units, scores in scored:
        n_remove = int((scores <= threshold).sum()) if cfg.scope == "global" else int(cfg.ratio * len(units))
        order = scores.argsort(stable=True)
        drop = order[: len(units) - _n_keep(len(units), n_remove, cfg)]
        out.remove.update(units[i].id for i in drop.tolist())
    return out


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
