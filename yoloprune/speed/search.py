"""Prune to a speed-up (or latency) measured on the runtime the model is deployed with, not to a GFLOPs fraction.

GFLOPs are not time: on onnxruntime (one thread) the tea-bud yolov8n at 0.45x GFLOPs runs 1.68x faster, not 2.24x.
By default (``budget="latency"``) the runtime's channel block is measured and widths are kept in whole blocks, and
every conv of the model is timed alone on the runtime at the widths pruning can leave (``speed.table``,
cached per model, size, runtime and machine); the planner cuts to the latency that table predicts (with
``PruneConfig.cost_power`` > 0 it would also weigh each channel's importance by the time it costs; off by default,
as it cost accuracy). The prediction is checked by timing
trial prunes against the unpruned model in alternation (so a busy machine slows both alike and the ratio holds),
and the target corrected until the measured speed-up is within ``TOLERANCE``. ``budget="gflops"`` instead
searches the GFLOPs target whose prune runs that much faster (the plan ignores time).

Trials are planned without calibration: the widths a target gives do not depend on it (calibration only chooses
which channels go and refits them), so the search costs a few seconds per trial, and the final prune, calibrated,
has the widths that were timed.
"""

from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from yoloprune import sources
from yoloprune.engine import prune as _prune
from yoloprune.engine.costs import CostTable
from yoloprune.engine.hooks import trace_model
from yoloprune.engine.importance import entry
from yoloprune.engine.plan import PruneConfig
from yoloprune.errors import BudgetError, ConfigError
from yoloprune.speed.runtimes import Runtime, runtime
from yoloprune.speed.table import Built, latency_table
from yoloprune.targets import Cost, Gflops, Latency, Speedup

TOLERANCE = 0.03  # stop when the measured speed-up is within 3% of the target
BUDGETS = {"latency": Cost, "gflops": Gflops}  # the engine target each budget searches


@dataclass
class SpeedupSearch:
    """What a search for a speed-up found: the engine target (``Cost`` of the latency table, or ``Gflops``),
    the speed-up and latency measured at it, and (latency budget) the table's prediction."""

    target: float  # speed-up asked for
    budget: str  # "latency" or "gflops"
    fraction: float  # the Cost (latency) or Gflops (gflops) fraction found
    measured: float  # the speed-up measured at it
    base_ms: float  # the unpruned model's latency, measured
    pruned_ms: float  # the pruned model's, measured
    predicted_ms: float | None = None  # the pruned model's latency, predicted by the table
    runtime: str = "onnxruntime"
    trials: list[tuple[float, float]] = field(default_factory=list)  # (fraction, measured speed-up)
    latency_ms: float | None = None  # the latency asked for, when it was asked as one
    table: Built | None = None
    round_to: int = 8  # the widths' multiple: the runtime's channel block, for a latency budget
    gflops_ratio: float = 1.0  # the pruned model's GFLOPs over the unpruned model's

    def config(self, cfg: PruneConfig) -> PruneConfig:
        """``cfg`` with widths rounded as the trials were."""
        return replace(cfg, round_to=self.round_to)

    @property
    def amount(self) -> Cost | Gflops:
        """The engine target found: prune to it with ``config(cfg)`` and ``costs``."""
        return BUDGETS[self.budget](self.fraction)

    @property
    def costs(self) -> CostTable | None:
        return self.table.table if self.table is not None and self.budget == "latency" else None

    def line(self) -> str:
        asked = (f"target latency {self.latency_ms:g} ms (a {self.target:.2f}x speed-up here)" if self.latency_ms
                 else f"target speed-up {self.target:.2f}x")
        found = (f"{self.fraction:.3f} of the predicted latency, widths in blocks of {self.round_to}"
                 if self.budget == "latency" else f"{self.fraction:.3f}x GFLOPs")
        out = (f"{asked} on {self.runtime}: {found}, measured {self.measured:.2f}x ({self.base_ms:.2f} -> "
               f"{self.pruned_ms:.2f} ms; {len(self.trials)} trials timed beside the unpruned model)")
        if self.predicted_ms is not None:
            off = self.predicted_ms / self.pruned_ms - 1
            out += f"; predicted {self.predicted_ms:.2f} ms, measured {self.pruned_ms:.2f} ms ({off:+.0%})"
            if abs(off) > 0.10:
                out += " - the latency table is more than 10% off on this model"
        if self.table is not None:
            out += (f"\nlatency table: {'reused from' if self.table.cached else 'measured'} "
                    f"{self.table.path}" + ("" if self.table.cached else f" in {self.table.seconds:.0f} s"))
        return out


def build_table(net: nn.Module, imgsz: int, rt: Runtime | str = "onnxruntime", round_to: int = 8) -> Built:
    """The latency table of a loaded model's convs on a runtime (by name or a ``Runtime``), cached."""
    rt = runtime(rt) if isinstance(rt, str) else rt
    graph = trace_model(net, sources.adapter_for(net))
    return latency_table(net, imgsz, set(graph.bn_after), rt, round_to)


def _trial(net: nn.Module, cfg: PruneConfig, target: Cost | Gflops, costs: CostTable | None) -> nn.Module:
    """``net`` pruned to ``target`` as ``cfg`` says, without calibration (the widths are what is timed)."""
    trial = copy.deepcopy(net)
    cfg = replace(cfg, selection="score", reconstruct=False)
    return _prune.prune(trial, sources.adapter_for(trial), cfg, target, None, None, costs).model


def _gflops(net: nn.Module, imgsz: int) -> float:
    return sources.adapter_for(net).gflops(net, imgsz)


def search_speedup(model, target: Speedup | Latency, cfg: PruneConfig, runs: int = 15,
                   max_trials: int = 8) -> SpeedupSearch:
    """The engine target (a ``Cost`` fraction of the latency table, or ``Gflops``) whose pruned model meets
    ``target``: runs ``target.x`` times faster than the unpruned one on the runtime, or in ``target.ms``
    milliseconds on this machine. Each trial's measured speed-up corrects the next by a log-log secant, inside the
    bracket the trials so far leave, until one lands within ``TOLERANCE``."""
    budget = target.budget
    check_searchable(cfg)
    rt = runtime(target.runtime, target.threads)
    net, _ = sources.load_model(model)
    speedup = target.x if isinstance(target, Speedup) else None
    latency_ms = target.ms if isinstance(target, Latency) else None
    amount = BUDGETS[budget]
    with tempfile.TemporaryDirectory(prefix="yoloprune-speedup-") as tmp:
        folder = Path(tmp)
        base = rt.prepare(net, folder, "base", cfg.imgsz)
        base_ms = rt.paired_ms([base], cfg.imgsz, runs)[0]
        if latency_ms is not None:
            speedup = base_ms / latency_ms
            if speedup <= 1:
                raise ConfigError(f"the unpruned model already runs in {base_ms:.1f} ms here, within "
                                  f"--target-latency {latency_ms:g} ms: nothing to prune for")
        built, overhead = None, 0.0
        if budget == "latency":  # widths in whole blocks of what the runtime computes in: a part-block costs a whole
            cfg = replace(cfg, round_to=math.lcm(cfg.round_to, rt.channel_block(cfg.round_to)))
            built = build_table(net, cfg.imgsz, rt, cfg.round_to)
            table0 = built.table.total(net)
            if not table0 > 0:
                raise ConfigError(f"no conv of this model could be timed on {rt.name}: give --target-gflops instead")
            overhead = max(base_ms - table0, 0.0)  # what the table does not hold (concat, decoding): kept as is
            frac = min(max((base_ms / speedup - overhead) / table0, 0.02), 1.0)
        else:
            frac = speedup ** -1.4  # GFLOPs fall faster than time
        costs = built.table if built is not None else None
        trials: list[tuple[float, float, float, nn.Module]] = []  # (fraction, speed-up, pruned ms, model)
        lo, hi = 0.0, 1.0  # fractions known too fast / too slow
        for _ in range(max_trials):
            try:
                pruned = _trial(net, cfg, amount(frac), costs)
            except BudgetError:  # out of reach under the constraints: aim higher
                lo = frac
                frac = math.sqrt(frac * hi)
                continue
            base_t, t = rt.paired_ms([base, rt.prepare(pruned, folder, f"trial{len(trials)}", cfg.imgsz)],
                                     cfg.imgsz, runs)
            s = base_t / t
            trials.append((frac, s, t * base_ms / base_t, pruned))
            if abs(s / speedup - 1) <= TOLERANCE:
                break
            lo, hi = (lo, frac) if s < speedup else (frac, hi)
            frac = _next(trials, speedup, lo, hi)
    if not trials:
        raise ConfigError(f"a {speedup:.2f}x speed-up is out of reach by pruning this model under these constraints")
    frac, s, t, pruned = min(trials, key=lambda tr: abs(tr[1] / speedup - 1))
    if abs(s / speedup - 1) > 0.15:
        raise ConfigError(f"a {speedup:.2f}x speed-up is out of reach by pruning this model on {rt.name}: the "
                          f"closest was {s:.2f}x")
    predicted = costs.total(pruned) + overhead if costs is not None else None
    return SpeedupSearch(speedup, budget, frac, s, base_ms, t, predicted, rt.name,
                         [(f, x) for f, x, _, _ in trials], latency_ms, built, cfg.round_to,
                         _gflops(pruned, cfg.imgsz) / _gflops(net, cfg.imgsz))


def check_searchable(cfg: PruneConfig) -> None:
    """Refuse, before any timing, what a speed-up search cannot combine: trials are planned without calibration,
    by a global or uniform threshold, to a target the search sets."""
    if cfg.scope == "damage" or cfg.blocks:
        raise ConfigError("--target-speedup / --target-latency work with the global or uniform scope, without "
                          "block removal (--layers)")
    if entry(cfg.method).needs_data:
        raise ConfigError(f"--target-speedup / --target-latency plan trial prunes without calibration: method "
                          f"{cfg.method!r} is data-aware; use l1, l2 or bn")
    cfg.validate(calibrated=True, target=Cost(0.5))


def speedup_of(model: nn.Module, reference: nn.Module, imgsz: int, runtime_name: str = "onnxruntime",
               threads: int = 1, runs: int = 20) -> float:
    """How many times faster ``model`` runs than ``reference`` on the runtime, timed in alternation."""
    rt = runtime(runtime_name, threads)
    with tempfile.TemporaryDirectory(prefix="yoloprune-speedup-") as tmp:
        a, b = (rt.prepare(m, Path(tmp), n, imgsz) for m, n in ((reference, "reference"), (model, "model")))
        ref_ms, ms = rt.paired_ms([a, b], imgsz, runs)
    return ref_ms / ms


def _next(trials: list, speedup: float, lo: float, hi: float) -> float:
    """The next fraction: a secant through the last two trials in log(fraction) against log(speed-up) (slope -1
    after one), kept strictly inside the bracket (lo, hi)."""
    f1, s1 = trials[-1][0], trials[-1][1]
    slope = -1.0
    if len(trials) >= 2:
        f0, s0 = trials[-2][0], trials[-2][1]
        if f0 != f1 and s0 != s1:
            slope = (math.log(s1) - math.log(s0)) / (math.log(f1) - math.log(f0))
            slope = min(max(slope, -3.0), -0.2)
    f = f1 * math.exp((math.log(speedup) - math.log(s1)) / slope)
    lo_b = max(lo, 0.01)
    if not lo_b < f < hi:
        f = math.sqrt(lo_b * hi)
    return f


__all__ = ["BUDGETS", "TOLERANCE", "SpeedupSearch", "build_table", "check_searchable", "search_speedup", "speedup_of"]
