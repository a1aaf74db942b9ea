"""Prune: apply a plan with genuine channel removal, calibrate (mean compensation, least-squares reconstruction,
BatchNorm recalibration), and reach a GFLOPs target, in one or several steps.

model in -> trace -> coupled units -> importance -> plan -> surgery -> model out. The model's source is reached
only through the ``ModelHooks`` the caller passes in (``yoloprune.api`` resolves them from the model).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, replace

import torch
from torch import nn

from yoloprune.engine.compensate import fold
from yoloprune.engine.costs import CostTable, weigh
from yoloprune.engine.graph import Graph
from yoloprune.engine.hooks import ModelHooks, example_input, trace_model
from yoloprune.engine.plan import (
    Amount,
    Plan,
    PruneConfig,
    Scored,
    allowed_removals,
    plan,
    score_groups,
    selection,
    step_target,
)
from yoloprune.engine.reconstruct import Reference, Refit, foreground, recalibrate_bn, reconstruct, record
from yoloprune.engine.report import Report, snapshot
from yoloprune.engine.solver import Curve, allocate, layer_costs, removal_curve, total_flops
from yoloprune.engine.surgery import channels, dead_blocks, filter_of, keep_channels, remove_blocks
from yoloprune.errors import BudgetError, ConfigError, UnsupportedModelError
from yoloprune.log import log
from yoloprune.targets import Cost, Gflops, Ratio


@torch.no_grad()
def prune_blocks_under(model: nn.Module, hooks: ModelHooks, threshold: float) -> list[str]:
    """Depth pruning for slimming: residual blocks whose branch's last BN has every |gamma| <= ``threshold`` are
    removed whole (their branch is zeroed first, so the block becomes the identity it nearly was)."""
    bns = {n: model.get_submodule(b.bn) for n, b in hooks.residual_blocks(model).items()}
    names = [n for n, bn in bns.items() if float(bn.weight.abs().max()) <= threshold]
    for n in names:
        bns[n].weight.zero_()
        bns[n].bias.zero_()
    remove_blocks(model, dead_blocks(model, hooks))
    return names


def apply(model: nn.Module, p: Plan, hooks: ModelHooks, means: dict[str, torch.Tensor] | None = None) -> None:
    """Physically remove the planned units from every layer they touch; with ``means`` (each consumer's input
    means), fold the removed channels' mean contribution into their consumers first (mean compensation)."""
    removed: dict[tuple[str, int], set[int]] = defaultdict(set)
    for unit in p.graph.units:
        if unit.id in p.remove:
            for m in unit.members:
                removed[(m.module, m.dim)].add(m.index)
    if means is not None:
        fold(model, {name: idx for (name, dim), idx in removed.items() if dim == 1}, means, p.graph.bn_after)
    modules = dict(model.named_modules())
    for (name, dim), idx in sorted(removed.items()):
        mod = modules[name]
        keep_channels(mod, dim, [i for i in range(channels(mod, dim)) if i not in idx])
    hooks.fix_widths(model)


@torch.no_grad()
def mask(model: nn.Module, p: Plan) -> None:
    """Soft-prune: zero the planned units (filters, biases, BN gamma and beta) without removing them."""
    modules = dict(model.named_modules())
    for unit in p.graph.units:
        if unit.id not in p.remove:
            continue
        for m in unit.producers:
            mod = modules[m.module]
            filter_of(mod, m.index).zero_()
            if mod.bias is not None:
                mod.bias[m.index] = 0


def apply_checked(model: nn.Module, p: Plan, hooks: ModelHooks, means: dict[str, torch.Tensor] | None = None) -> None:
    """Apply ``p`` to a copy first and run it; refuse (model untouched) if the pruned copy no longer runs.

    The graph freezes every op it does not understand, but a module can still read a width from one tensor's
    shape and use it on another (e.g. ``C = x.shape[1]`` then ``y.view(B, C, ...)``); this catches that.
    """
    trial = copy.deepcopy(model)
    apply(trial, p, hooks, means)
    try:
        with torch.no_grad():
            trial.eval()(example_input(trial, hooks))
    except Exception as e:  # any failure means the plan is unsafe for this model
        raise UnsupportedModelError(
            f"{type(model).__name__}: the pruned model no longer runs ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160]}); a layer reads a width the graph cannot see, so it was left unpruned"
        ) from None
    apply(model, p, hooks, means)


def _plan_for_budget(model: nn.Module, hooks: ModelHooks, graph: Graph, cfg: PruneConfig, measure, goal: float,
                     scored: Scored, orders: list[list[int]] | None, what: str) -> Plan:
    """Bisect the ratio until ``measure(pruned model)`` (GFLOPs, or a cost table's prediction) falls to ``goal``
    (the model scored once)."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        mid = (lo + hi) / 2
        try:
            candidate = plan(model, graph, cfg, mid, scored=scored, orders=orders)
        except ConfigError:  # above the bn method's safe maximum
            hi = mid
            continue
        trial = copy.deepcopy(model)
        apply(trial, candidate, hooks)
        if measure(trial) <= goal:
            best, hi = candidate, mid
        else:
            lo = mid
    if best is None:
        raise BudgetError(f"cannot reach {what} under these constraints")
    return best


def _curves(model: nn.Module, graph: Graph, cfg: PruneConfig, reference: Reference, scored: Scored) -> list[Curve]:
    """Each group's removal order (``cfg.selection``) and cumulative estimated damage, as far as it may go."""
    modules = dict(model.named_modules())
    return [removal_curve(units, modules, graph.bn_after, reference, scores, selection(cfg, True),
                          allowed_removals(len(units), cfg)[-1]) for units, scores in scored]


def _plan_by_damage(model: nn.Module, hooks: ModelHooks, graph: Graph, cfg: PruneConfig, target: Amount,
                    base: float, reference: Reference, scored: Scored, curves: list[Curve]) -> Plan:
    """Every group's width chosen together by estimated damage per GFLOP saved (``solver.allocate``); for a GFLOPs
    target, the estimated saving is raised until the pruned model, measured, meets it."""
    groups = [units for units, _ in scored]
    allowed = [allowed_removals(len(units), cfg) for units in groups]
    p0 = next(model.parameters())
    layers = layer_costs(model, torch.zeros(1, 3, cfg.imgsz, cfg.imgsz, dtype=p0.dtype, device=p0.device))

    def pick(budget: float, by_flops: bool) -> Plan:
        counts = allocate(groups, curves, allowed, copy.deepcopy(layers), budget, by_flops)
        return Plan(graph, frozenset(groups[g][i].id for g, n in enumerate(counts) for i in curves[g].order[:n]))

    if isinstance(target, Ratio):
        return pick(target.value * sum(len(units) for units in groups), by_flops=False)
    now, goal = hooks.gflops(model, cfg.imgsz), target.fraction * base
    share = max(now - goal, 0.0) / now  # of the estimate: the layers' multiply-adds are most of the GFLOPs
    for _ in range(8):
        candidate = pick(share * total_flops(layers), by_flops=True)
        trial = copy.deepcopy(model)
        apply(trial, candidate, hooks)
        got = hooks.gflops(trial, cfg.imgsz)
        if got <= goal:
            return candidate
        share += 1.05 * (got - goal) / now + 1e-3
    raise BudgetError(f"cannot reach {target.fraction:.0%} of the original GFLOPs under these constraints")


def _choose(model: nn.Module, hooks: ModelHooks, graph: Graph, cfg: PruneConfig, target: Amount, base: float,
            reference: Reference | None, threshold: float | None, costs: Budget | None = None) -> Plan:
    """The plan: widths by ``cfg.scope`` to ``target``, channels by ``cfg.selection``; with a
    cost table, the scores weighed by what a unit of each group costs (``costs.weigh``)."""
    scored = score_groups(model, graph, cfg, reference)
    if costs is not None and cfg.scope == "global":
        groups = [units for units, _ in scored]
        scored = list(zip(groups, weigh(groups, [s for _, s in scored], costs.table, cfg.cost_power), strict=True))
    obs = selection(cfg, reference is not None) == "obs"
    curves = _curves(model, graph, cfg, reference, scored) if cfg.scope == "damage" or obs else None
    if cfg.scope == "damage":
        return _plan_by_damage(model, hooks, graph, cfg, target, base, reference, scored, curves)
    orders = [c.order for c in curves] if curves is not None else None
    if isinstance(target, Cost):
        if costs is None:
            raise ConfigError("a cost target needs a cost table (a latency table) given beside the config")
        return _plan_for_budget(model, hooks, graph, cfg, costs.table.total, target.fraction * costs.base, scored,
                                orders, f"{target.fraction:.0%} of the original predicted cost")
    if isinstance(target, Gflops):
        return _plan_for_budget(model, hooks, graph, cfg, lambda m: hooks.gflops(m, cfg.imgsz),
                                target.fraction * base, scored, orders, f"{target.fraction:.0%} of the original GFLOPs")
    return plan(model, graph, cfg, target.value, threshold=threshold, scored=scored, orders=orders)


def refit_jobs(model: nn.Module, p: Plan, fixed: set[str] = frozenset()) -> dict[str, Refit]:
    """The conv/linear layers that reconstruction refits under ``p``: every one but ``fixed`` (e.g. the DFL's
    constant conv), since a layer that lost no channel still sees inputs that pruning upstream has changed. Each
    with the output channels it keeps (indices into its current outputs) and its BatchNorm. Call before ``apply``.
    Layers whose inputs did not change fit exactly as they are and are left alone."""
    modules = dict(model.named_modules())
    dropped = defaultdict(set)
    for unit in p.graph.units:
        if unit.id in p.remove:
            for m in unit.producers:
                dropped[m.module].add(m.index)
    jobs = {}
    for name, mod in modules.items():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and name not in fixed:
            keep = torch.tensor([i for i in range(channels(mod, 0)) if i not in dropped[name]], dtype=torch.long)
            bn = modules.get(p.graph.bn_after.get(name, ""))
            jobs[name] = Refit(keep, bn if isinstance(bn, nn.modules.batchnorm._BatchNorm) else None)
    return jobs


def record_reference(net: nn.Module, hooks: ModelHooks, images: torch.Tensor, graph: Graph | None = None,
                     focus: bool = True, warn: bool = True) -> Reference:
    """The unpruned model's Reference on calibration ``images``; with ``focus``, each layer's samples are drawn
    half where the head finds objects (``reconstruct.foreground``), so the refit spends its fit there."""
    graph = graph or trace_model(net, hooks)
    scores = foreground(net, images, list(hooks.head_outputs(net)), lambda out: hooks.scores(net, out))
    if warn:
        check_detects(scores, len(images))
    return record(net, images, graph.bn_after, focus=scores if focus else None)


DETECTS = 0.25  # a score the unpruned model must reach somewhere on an image for it to show what it detects
FEW_DETECTING = 0.1  # warn when fewer calibration images than this share do


def check_detects(scores: list[torch.Tensor], n: int) -> float:
    """The share of the ``n`` calibration images on which the unpruned model scores ``DETECTS`` or more somewhere
    (``scores``: per head level, (N, H, W)); a warning when it is under ``FEW_DETECTING``: calibration then fits
    the pruned model to scenes without the model's objects, and it loses its detections."""
    if not scores or not n:
        return 1.0
    best = torch.stack([s.reshape(len(s), -1).max(1).values for s in scores]).max(0).values
    share = float((best >= DETECTS).float().mean())
    if share < FEW_DETECTING:
        log.warning(f"warning: the unpruned model detects something (score >= {DETECTS}) on only "
                    f"{int((best >= DETECTS).sum())} of {n} calibration images: they do not show what it detects, "
                    "so the pruned model will lose its detections; give images of the model's own scenes")
    return share


def _recorded(net: nn.Module, hooks: ModelHooks, cfg: PruneConfig, graph: Graph, images: torch.Tensor | None,
              reference: Reference | None, fresh: bool, warn: bool = True) -> Reference | None:
    """The unpruned model's Reference on the calibration images: ``reference`` unless the model was changed since
    it was recorded (``fresh``), else recorded now (on ``images``, or the reference's own)."""
    if reference is not None and not fresh:
        return reference
    images = images if images is not None else getattr(reference, "images", None)
    return None if images is None else record_reference(net, hooks, images, graph, cfg.focus, warn)


@dataclass(frozen=True)
class Budget:
    """A cost table and the unpruned model's total by it (a ``Cost`` target is a fraction of that)."""

    table: CostTable
    base: float


@dataclass
class _Targets:
    """Reconstruction targets across steps: the original model's Reference, and for every layer which original
    output channel each of its current channels is."""

    ref: Reference
    origin: dict[str, torch.Tensor]


@dataclass(frozen=True)
class _Step:
    """What one prune step did."""

    graph: Graph
    plan: Plan
    blocks: list[str]
    refits: dict[str, Refit]


def _prune_step(net: nn.Module, hooks: ModelHooks, cfg: PruneConfig, target: Amount, gflops0: float,
                images: torch.Tensor | None,
                reference: Reference | None, targets: _Targets | None = None, costs: Budget | None = None,
                first: bool = True) -> _Step:
    """Trace, (remove dead-under-threshold blocks), calibrate, plan, apply, reconstruct, recalibrate. ``first``:
    the step that starts from the model as given (the only one whose recording checks the calibration images)."""
    graph = trace_model(net, hooks)
    blocks: list[str] = []
    threshold = None
    if cfg.blocks:  # plan first: it refuses above the safe maximum before the model is touched
        threshold = plan(net, graph, cfg, target.value).threshold
        blocks = prune_blocks_under(net, hooks, threshold)
        graph = trace_model(net, hooks)
    reference = _recorded(net, hooks, cfg, graph, images, reference, fresh=bool(blocks), warn=first)
    p = _choose(net, hooks, graph, cfg, target, gflops0, reference, threshold, costs)
    jobs = refit_jobs(net, p, hooks.fixed_layers(net)) if reference is not None and cfg.reconstruct else {}
    fit_ref = reference
    if targets is not None:  # aim at the original model: its outputs, at its channel indices
        for name, job in jobs.items():
            job.keep_out = targets.origin[name][job.keep_out]
        fit_ref = replace(reference, positions=targets.ref.positions, outputs=targets.ref.outputs,
                          bn_mean=targets.ref.bn_mean)
    apply_checked(net, p, hooks, reference.mean if reference is not None else None)
    refits: dict[str, Refit] = {}
    if jobs:
        done = reconstruct(net, fit_ref, jobs)
        refits = {n: j for n, j in done.items() if j.before > 0 or j.skipped}
        if targets is not None:
            targets.origin.update({n: j.keep_out for n, j in jobs.items()})
    if cfg.recalibrate_bn and reference is not None:
        recalibrate_bn(net, reference.images)
    return _Step(graph, p, blocks, refits)


def _protecting(cfg: PruneConfig, net: nn.Module, hooks: ModelHooks) -> PruneConfig:
    """``cfg`` with what the model's source protects (``hooks.protected``) among the ignored layers, unless
    ``cfg.protect`` is off; every prune and every estimate of one goes through it, so they agree."""
    if not cfg.protect:
        return cfg
    return replace(cfg, ignore=tuple(dict.fromkeys((*cfg.ignore, *hooks.protected(net)))))


def one_step_gflops(net: nn.Module, hooks: ModelHooks, cfg: PruneConfig, ratio: float, gflops0: float | None = None,
                    costs: Budget | None = None) -> float:
    """The GFLOPs fraction that pruning at ``ratio`` in one step reaches (planned on a copy, no calibration)."""
    gflops0 = gflops0 or hooks.gflops(net, cfg.imgsz)
    trial = copy.deepcopy(net)
    cfg = _protecting(replace(cfg, steps=1, reconstruct=False, recalibrate_bn=False), net, hooks)
    _prune_step(trial, hooks, cfg, Ratio(ratio), gflops0, None, None, costs=costs)
    return hooks.gflops(trial, cfg.imgsz) / gflops0


def _step_target(target: Amount, i: int, steps: int, gflops_ratio: float | None) -> Amount:
    """Step ``i`` (1-based) of ``steps``: the GFLOPs (or cost) target of the schedule (``step_target``) towards
    ``target``, or for a Ratio towards what one-step pruning at it would reach (``gflops_ratio``), so that the same
    ratio gives the same model size in any number of steps."""
    if steps == 1:
        return target
    if isinstance(target, Cost):
        return Cost(step_target(target.fraction, i, steps))
    return Gflops(step_target(gflops_ratio if isinstance(target, Ratio) else target.fraction, i, steps))


def _multi_step_targets(net: nn.Module, hooks: ModelHooks, cfg: PruneConfig, images: torch.Tensor | None,
                        reference: Reference | None) -> tuple[Reference | None, _Targets | None]:
    """For several steps with reconstruction: the original model's Reference (recorded now unless given) and the
    channel bookkeeping that lets every step aim at the original's outputs."""
    if cfg.steps == 1 or (images is None and reference is None) or not cfg.reconstruct:
        return reference, None
    reference = _recorded(net, hooks, cfg, trace_model(net, hooks), images, reference, fresh=False)
    origin = {n: torch.arange(channels(m, 0)) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    return reference, _Targets(reference, origin)


def prune(net: nn.Module, hooks: ModelHooks, cfg: PruneConfig, target: Amount | None = None,
          calibration: torch.Tensor | None = None, reference: Reference | None = None,
          costs: CostTable | None = None) -> Report:
    """Prune ``net`` in place to ``target`` (a Ratio, none: ratio 0; a Gflops fraction; a Cost fraction of the
    cost table's prediction) as ``cfg`` says.

    With ``calibration`` images (N, 3, H, W; no labels) or the unpruned model's recorded ``reference`` (reused
    across a sweep): mean compensation, least-squares reconstruction (``cfg.reconstruct``) and BatchNorm
    recalibration (``cfg.recalibrate_bn``), in ``cfg.steps`` steps; later steps record the model they start from
    afresh, and reconstruction always aims at the original model's outputs. Returns a Report with params and
    GFLOPs before/after, per-layer widths and the refit layers' errors; ``report.model`` is ``net``. With a cost
    table (``costs``, e.g. a latency table): a Cost target is a fraction of its prediction for ``net``, and
    the global threshold weighs each group's scores by its units' costs.
    """
    target = Ratio() if target is None else target
    cfg.validate(calibrated=calibration is not None or reference is not None, target=target)
    cfg = _protecting(cfg, net, hooks)
    before = snapshot(net, hooks, cfg.imgsz)
    budget = Budget(costs, costs.total(net)) if costs is not None else None
    if budget is not None and not budget.base > 0:
        raise ConfigError("the cost table names none of this model's layers (a table of another model?)")
    gflops_ratio = (one_step_gflops(net, hooks, cfg, target.value, before.gflops, budget)
                    if cfg.steps > 1 and isinstance(target, Ratio) else None)
    reference, targets = _multi_step_targets(net, hooks, cfg, calibration, reference)
    removed, blocks = 0, []
    for i in range(1, cfg.steps + 1):
        step = _prune_step(net, hooks, cfg, _step_target(target, i, cfg.steps, gflops_ratio), before.gflops,
                           calibration,
                           reference if i == 1 else None, targets, budget, first=i == 1)
        removed += len(step.plan.remove)
        blocks += step.blocks
    amount = {Gflops: lambda t: f"target_gflops={t.fraction}", Cost: lambda t: f"target_cost={t.fraction:.4g}",
              Ratio: lambda t: f"ratio={t.value}"}[type(target)](target)
    action = f"prune {cfg.method} {amount}" + (f" in {cfg.steps} steps" if cfg.steps > 1 else "")
    return Report.build(net, hooks, before, step.graph, removed=removed, imgsz=cfg.imgsz, action=action,
                        removed_blocks=blocks, refits=step.refits)
