"""The library's verbs on any model: a checkpoint or yaml path, an Ultralytics ``YOLO`` object, or a module.

Each resolves the model's source (``yoloprune.sources``), hands the engine the source's adapter as its hooks, and
returns the engine's report with the checkpoint dict the model came from, so that saving keeps its training
options. Paths are read, never written; a model object is changed in place.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from yoloprune.defaults import METHOD
from yoloprune.engine import compact as _compact
from yoloprune.engine import prune as _prune
from yoloprune.engine import sparsity as _sparsity
from yoloprune.engine.costs import CostTable
from yoloprune.engine.graph import Graph
from yoloprune.engine.hooks import ModelHooks
from yoloprune.engine.hooks import trace_model as _trace_model
from yoloprune.engine.plan import Plan, PruneConfig
from yoloprune.engine.reconstruct import Reference
from yoloprune.engine.report import Report
from yoloprune.engine.sparsity import SparsifyConfig, SparsityReport
from yoloprune.errors import ConfigError
from yoloprune.log import log
from yoloprune.sources import adapter_for, load_model, save_checkpoint
from yoloprune.targets import TIMED, Ratio, Target


def hooks_for(model: nn.Module) -> ModelHooks:
    """The engine's hooks for a loaded model: its source's adapter."""
    return adapter_for(model)


def trace_model(model: nn.Module) -> Graph:
    """The coupling graph of a loaded model, its contract outputs frozen."""
    return _trace_model(model, hooks_for(model))


def gflops(model: nn.Module, imgsz: int = 640) -> float:
    """GFLOPs of a loaded model at ``imgsz``, by its source's counter."""
    return hooks_for(model).gflops(model, imgsz)


def apply(model: nn.Module, p: Plan, means: dict[str, torch.Tensor] | None = None) -> None:
    """Physically remove a plan's units from a loaded model (see ``engine.prune.apply``)."""
    _prune.apply(model, p, hooks_for(model), means)


@dataclass(frozen=True)
class Timed:
    """A speed target's outcome: the search that set the prune's widths (``speed.search.SpeedupSearch``: its
    trials, prediction and measured speed-up) and the pruned model timed again beside the unpruned one."""

    search: Any
    timed_again: float  # the saved model's speed-up over the unpruned one, measured after the calibrated prune

    def lines(self) -> list[str]:
        return [self.search.line(), f"the pruned model, timed again beside the unpruned one on "
                                    f"{self.search.runtime}: {self.timed_again:.2f}x"]


def prune(model: Any, ratio: float | None = None, method: str = METHOD, config: PruneConfig | None = None,
          calibration: torch.Tensor | None = None, reference: Reference | None = None, costs: CostTable | None = None,
          target: Target | None = None, **options) -> Report:
    """Prune ``model`` (YOLO, model, or checkpoint path, which is read and never written) with genuine channel
    removal, to ``target`` (``yoloprune.Ratio``, ``Gflops``, ``Speedup``, ``Latency``, or ``Cost`` with a cost
    table; ``ratio`` is short for ``Ratio(ratio)``). ``config`` (else ``method`` and ``options``) says how;
    ``calibration`` images (N, 3, H, W, no labels; ``yoloprune.calibration_images``) or a recorded ``reference`` of
    the unpruned model turn on mean compensation and least-squares reconstruction. A speed target is searched by
    timing trial prunes beside the unpruned model on its runtime, then the calibrated prune is made at the widths
    found and timed again (``report.speed``). Returns the Report; ``report.model`` is the pruned model.
    """
    if ratio is not None and target is not None:
        raise ConfigError(f"give the target once: {target} and ratio {ratio} were both given")
    target = target if target is not None else Ratio(ratio or 0.0)
    cfg = config or PruneConfig(method=method, **options)
    if isinstance(target, TIMED):  # what a timed search cannot combine, said before anything else
        from yoloprune.speed.search import check_searchable

        check_searchable(cfg)
        cfg.validate(calibrated=calibration is not None or reference is not None)
    else:
        cfg.validate(calibrated=calibration is not None or reference is not None, target=target)
    net, ckpt = load_model(model)
    if isinstance(target, TIMED):
        from yoloprune.speed.search import search_speedup, speedup_of

        unpruned = copy.deepcopy(net)
        search = search_speedup(net, target, cfg)
        cfg = search.config(cfg)
        report = _prune.prune(net, hooks_for(net), cfg, search.amount, calibration, reference, search.costs)
        timed = Timed(search, speedup_of(report.model, unpruned, cfg.imgsz, target.runtime, target.threads))
        report = replace(report, ckpt=ckpt, speed=timed)
    else:
        costs = getattr(costs, "table", costs)  # a built latency table, or its CostTable
        report = replace(_prune.prune(net, hooks_for(net), cfg, target, calibration, reference, costs), ckpt=ckpt)
    if calibration is None and reference is None:
        _check_uncalibrated(report, cfg)
    return report


UNCALIBRATED_SAFE = 0.85  # a GFLOPs fraction under which an uncalibrated prune (but slimming's) is warned about


def _check_uncalibrated(report: Report, cfg: PruneConfig) -> None:
    """One warning when a prune without calibration images went deep enough to lose the model's detections, as
    measured (``benchmarks/oneshot.md``); slimming's BN-gamma prune of a sparsified model is exempt."""
    kept = report.after.gflops / report.before.gflops if report.before.gflops else 1.0
    if cfg.method != "bn" and kept < UNCALIBRATED_SAFE:
        log.warning(f"warning: pruned to {kept:.2f}x GFLOPs without calibration images: uncalibrated prunes this "
                    "deep lose most detections (the tea-bud yolov8n kept 30% of its mAP50-95 at 0.69x and none at "
                    "0.55x, against 93% and 85% with 64 calibration images); give images of the model's own scenes")


def record_reference(model: nn.Module, images: torch.Tensor, focus: bool = True) -> Reference:
    """A loaded unpruned model recorded on calibration ``images``, to pass as ``prune(reference=...)`` to many
    prunes of it (a sweep) instead of recording it each time (``focus``: as ``PruneConfig.focus``)."""
    return _prune.record_reference(model, hooks_for(model), images, focus=focus)


def compact(model: Any) -> Report:
    """Remove what is already exactly zero or constant, and dead residual blocks; outputs unchanged."""
    net, ckpt = load_model(model)
    return replace(_compact.compact(net, hooks_for(net)), ckpt=ckpt)


def sparsify(model: Any, amount: float = 0.3, scope: str = "global", config: SparsifyConfig | None = None,
             **options) -> SparsityReport:
    """Zero the smallest-magnitude conv weights in place (fake pruning, as YOLOv5's ``utils.prune``)."""
    cfg = config or SparsifyConfig(amount=amount, scope=scope, **options)
    cfg.validate()
    net, ckpt = load_model(model)
    return replace(_sparsity.sparsify(net, hooks_for(net), cfg), ckpt=ckpt)


__all__ = ["Timed", "apply", "compact", "gflops", "hooks_for", "load_model", "prune", "record_reference", "save_checkpoint", "sparsify",
           "trace_model"]
