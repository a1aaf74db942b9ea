"""Prune: plan (``yoloprune.plan``), apply the plan with genuine channel removal, calibrate, and compact
fake-pruned models. Reaches the model's source only through ``yoloprune.sources``.

model in -> trace -> coupled units -> importance -> plan -> surgery -> model out.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, replace

import torch
from torch import nn

from yoloprune import sources
from yoloprune.compensate import fold, input_means
from yoloprune.errors import ConfigError, UnsupportedModelError
from yoloprune.graph import Graph, Unit
from yoloprune.layers import dead_blocks, remove_blocks
from yoloprune.plan import Plan, PruneConfig, _scored, bn_safe_max, global_threshold, plan  # noqa: F401
from yoloprune.reconstruct import Reference, Refit, recalibrate_bn, reconstruct, record
from yoloprune.report import Report, snapshot
from yoloprune.surgery import bn_channel_zero, channels, keep_channels, layer_channel_zero


@torch.no_grad()
def prune_blocks_under(model: nn.Module, threshold: float) -> list[str]:
    """Depth pruning for slimming: residual blocks whose branch's last BN has every |gamma| <= ``threshold`` are
    removed whole (their branch is zeroed first, so the block becomes the identity it nearly was)."""
    names = [n for n, b in sources.residual_blocks(model).items() if float(b.cv2.bn.weight.abs().max()) <= threshold]
    for n in names:
        bn = model.get_submodule(n).cv2.bn
        bn.weight.zero_()
        bn.bias.zero_()
    remove_blocks(model, dead_blocks(model))
    return names


def apply(model: nn.Module, p: Plan) -> None:
    """Physically remove the planned units from every layer they touch."""
    removed: dict[tuple[str, int], set[int]] = defaultdict(set)
    for unit in p.graph.units:
        if unit.id in p.remove:
            for m in unit.members:
                removed[(m.module, m.dim)].add(m.index)
    if p.means is not None:
        fold(model, {name: idx for (name, dim), idx in removed.items() if dim == 1}, p.means, p.graph.bn_after)
    modules = dict(model.named_modules())
    for (name, dim), idx in sorted(removed.items()):
        mod = modules[name]
        keep_channels(mod, dim, [i for i in range(channels(mod, dim)) if i not in idx])
    sources.fix_widths(model)


@torch.no_grad()
def mask(model: nn.Module, p: Plan) -> None:
    """Soft-prune: zero the planned units (filters, biases, BN gamma and beta) without removing them."""
    modules = dict(model.named_modules())
    for unit in p.graph.units:
        if unit.id not in p.remove:
            continue
        for m in unit.producers:
            mod = modules[m.module]
            if isinstance(mod, nn.ConvTranspose2d):
                mod.weight[:, m.index] = 0
            else:
                mod.weight[m.index] = 0
            if mod.bias is not None:
                mod.bias[m.index] = 0


def _example(model: nn.Module) -> torch.Tensor:
    p = next(model.parameters())
    size = 2 * sources.max_stride(model)
    return torch.zeros(1, 3, size, size, dtype=p.dtype, device=p.device)


def apply_checked(model: nn.Module, p: Plan) -> None:
    """Apply ``p`` to a copy first and run it; refuse (model untouched) if the pruned copy no longer runs.

    The graph freezes every op it does not understand, but a module can still read a width from one tensor's
    shape and use it on another (e.g. ``C = x.shape[1]`` then ``y.view(B, C, ...)``); this catches that.
    """
    trial = copy.deepcopy(model)
    apply(trial, p)
    try:
        with torch.no_grad():
            trial.eval()(_example(trial))
    except Exception as e:  # any failure means the plan is unsafe for this model
        raise UnsupportedModelError(
            f"{type(model).__name__}: the pruned model no longer runs ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160]}); a layer reads a width the graph cannot see, so it was left unpruned"
        ) from None
    apply(model, p)


_trace = sources.trace_model


def _plan_for_gflops(model: nn.Module, graph: Graph, cfg: PruneConfig, base: float) -> Plan:
    """Bisect the ratio until GFLOPs fall to ``cfg.target_gflops`` of the original (the model scored once)."""
    scored = _scored(model, graph, cfg)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        mid = (lo + hi) / 2
        try:
            candidate = plan(model, graph, replace(cfg, ratio=mid), scored=scored)
        except ConfigError:  # above the bn method's safe maximum
            hi = mid
            continue
        trial = copy.deepcopy(model)
        apply(trial, candidate)
        if sources.gflops(trial, cfg.imgsz) <= cfg.target_gflops * base:
            best, hi = candidate, mid
        else:
            lo = mid
    if best is None:
        raise ConfigError(f"cannot reach {cfg.target_gflops:.0%} of the original GFLOPs under these constraints")
    return best


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


def _calibrated(net: nn.Module, graph: Graph, cfg: PruneConfig, fresh: bool) -> PruneConfig:
    """``cfg`` with the unpruned model's Reference recorded on the calibration images (unless one was given and
    the model was not changed since, ``fresh`` False)."""
    if cfg.reference is not None and not fresh:
        return cfg
    images = cfg.calibration if cfg.calibration is not None else getattr(cfg.reference, "images", None)
    if images is None:
        return cfg
    return replace(cfg, reference=record(net, images, graph.bn_after))


def _step_config(cfg: PruneConfig, i: int, gflops_ratio: float | None) -> PruneConfig:
    """Step ``i`` (1-based) of ``cfg.steps``: the GFLOPs target ``T ** (i / steps)`` of the original, where T is
    ``cfg.target_gflops`` or what one-step pruning at ``cfg.ratio`` would reach (``gflops_ratio``), so that the
    same ratio gives the same model size in any number of steps. Later steps record the moments of the model they
    start from afresh; reconstruction always aims at the original model's outputs."""
    if cfg.steps == 1:
        return cfg
    target = cfg.target_gflops or gflops_ratio
    return replace(cfg, target_gflops=target ** (i / cfg.steps), reference=cfg.reference if i == 1 else None)


@dataclass
class _Targets:
    """Reconstruction targets across steps: the original model's Reference, and for every layer which original
    output channel each of its current channels is."""

    ref: Reference
    origin: dict[str, torch.Tensor]


def _prune_step(net: nn.Module, cfg: PruneConfig, gflops0: float, targets: _Targets | None = None
                ) -> tuple[Graph, Plan, list[str]]:
    """Trace, (remove dead-under-threshold blocks), calibrate, plan, apply, reconstruct, recalibrate."""
    graph = _trace(net)
    blocks: list[str] = []
    threshold = None
    if cfg.blocks:  # plan first: it refuses above the safe maximum before the model is touched
        threshold = plan(net, graph, cfg).threshold
        blocks = prune_blocks_under(net, threshold)
        graph = _trace(net)
    cfg = _calibrated(net, graph, cfg, fresh=bool(blocks))
    p = (_plan_for_gflops(net, graph, cfg, gflops0) if cfg.target_gflops
         else plan(net, graph, cfg, threshold=threshold))
    jobs = refit_jobs(net, p, sources.fixed_layers(net)) if cfg.reference is not None and cfg.reconstruct else {}
    fit_ref = cfg.reference
    if targets is not None:  # aim at the original model: its outputs, at its channel indices
        for name, job in jobs.items():
            job.keep_out = targets.origin[name][job.keep_out]
        fit_ref = replace(cfg.reference, positions=targets.ref.positions, outputs=targets.ref.outputs,
                          bn_mean=targets.ref.bn_mean)
    if cfg.reference is not None:
        p.means = cfg.reference.mean
    apply_checked(net, p)
    if jobs:
        done = reconstruct(net, fit_ref, jobs)
        p.refits = {n: j for n, j in done.items() if j.before > 0 or j.skipped}
        if targets is not None:
            targets.origin.update({n: j.keep_out for n, j in jobs.items()})
    if cfg.recalibrate_bn and cfg.reference is not None:
        recalibrate_bn(net, cfg.reference.images)
    return graph, p, blocks


def one_step_gflops(net: nn.Module, cfg: PruneConfig, gflops0: float | None = None) -> float:
    """The GFLOPs fraction that pruning at ``cfg.ratio`` in one step reaches (planned on a copy, no calibration)."""
    gflops0 = gflops0 or sources.gflops(net, cfg.imgsz)
    trial = copy.deepcopy(net)
    _prune_step(trial, replace(cfg, steps=1, calibration=None, reference=None, reconstruct=False,
                               recalibrate_bn=False), gflops0)
    return sources.gflops(trial, cfg.imgsz) / gflops0


def _multi_step_targets(net: nn.Module, cfg: PruneConfig) -> tuple[PruneConfig, _Targets | None]:
    if cfg.steps == 1 or (cfg.calibration is None and cfg.reference is None) or not cfg.reconstruct:
        return cfg, None
    cfg = _calibrated(net, _trace(net), cfg, fresh=False)
    origin = {n: torch.arange(channels(m, 0)) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    return cfg, _Targets(cfg.reference, origin)


def prune(model, ratio: float = 0.0, method: str = "l1", config: PruneConfig | None = None, **options) -> Report:
    """Prune ``model`` in place (YOLO, DetectionModel, or a checkpoint path, which is read and never written).

    With calibration images: mean compensation, least-squares reconstruction (``cfg.reconstruct``) and BatchNorm
    recalibration (``cfg.recalibrate_bn``), in ``cfg.steps`` steps. Returns a Report with params and GFLOPs
    before/after, per-layer widths and the refit layers' errors; ``report.model`` is the model.
    """
    cfg = config or PruneConfig(ratio=ratio, method=method, **options)
    cfg.validate()
    net, ckpt = sources.load_model(model)
    before = snapshot(net, cfg.imgsz)
    gflops_ratio = one_step_gflops(net, cfg, before.gflops) if cfg.steps > 1 and not cfg.target_gflops else None
    cfg, targets = _multi_step_targets(net, cfg)
    removed, blocks = 0, []
    for i in range(1, cfg.steps + 1):
        graph, p, step_blocks = _prune_step(net, _step_config(cfg, i, gflops_ratio), before.gflops, targets)
        removed += len(p.remove)
        blocks += step_blocks
    action = f"prune {cfg.method} " + (f"target_gflops={cfg.target_gflops}" if cfg.target_gflops
                                       else f"ratio={cfg.ratio}") + (f" in {cfg.steps} steps" if cfg.steps > 1 else "")
    report = Report.build(net, before, graph, removed=removed, imgsz=cfg.imgsz, ckpt=ckpt, action=action,
                          removed_blocks=blocks)
    report.refits = {n: (j.before, j.after) for n, j in p.refits.items() if not j.skipped}
    report.refit_skipped = {n: j.skipped for n, j in p.refits.items() if j.skipped}
    return report


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


def compact(model) -> Report:
    """Remove what is already fixed, outputs unchanged: residual blocks whose branch is dead (depth), channels
    that are zero across their whole coupled group, and constant channels (zero filters behind a BN shift) whose
    consumers can absorb the constant exactly (width)."""
    net, ckpt = sources.load_model(model)
    before = snapshot(net, 640)
    blocks = dead_blocks(net)
    remove_blocks(net, blocks)
    graph = _trace(net)
    dead = dead_units(net, graph)
    ids = {u.id for u in dead}
    const = [u for u in constant_units(net, graph) if u.id not in ids]
    p = Plan(graph, ids | {u.id for u in const})
    if const:  # every removed channel is constant, so one blank image measures the values exactly
        consumers = {m.module for u in const for m in u.members if m.dim == 1}
        p.means = input_means(net, _example(net), consumers)
    apply_checked(net, p)
    return Report.build(net, before, graph, removed=len(p.remove), imgsz=640, ckpt=ckpt, action="compact",
                        removed_blocks=blocks)
