"""Prune to a speed-up measured on the runtime the model is deployed with, not to a GFLOPs fraction.

GFLOPs are not time: on onnxruntime (one thread) the tea-bud yolov8n at 0.45x GFLOPs runs 1.68x faster, not 2.24x.
``gflops_for_speedup`` searches the GFLOPs target whose pruned model, exported to ONNX, runs ``speedup`` times
faster than the unpruned model's export, each trial timed in alternation with it (so a busy machine slows both
alike and the ratio holds). Trials are planned without calibration: the widths a target gives do not depend on it
(calibration only chooses which channels go and refits them), so the search is a few seconds per trial, and the
final prune, calibrated, has the widths that were timed.
"""

from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from yoloprune import api
from yoloprune.engine.plan import PruneConfig
from yoloprune.errors import ConfigError
from yoloprune.workflows.export import export_onnx
from yoloprune.workflows.latency import paired_onnx_latency

TOLERANCE = 0.03  # stop when the measured speed-up is within 3% of the target


@dataclass
class SpeedupSearch:
    target: float  # speed-up asked for
    gflops: float  # the GFLOPs fraction found
    measured: float  # the speed-up measured at it
    trials: list[tuple[float, float]] = field(default_factory=list)  # (GFLOPs fraction, measured speed-up)
    latency_ms: float | None = None  # the latency asked for, when it was asked as one

    def line(self) -> str:
        asked = (f"target latency {self.latency_ms:g} ms (a {self.target:.2f}x speed-up here)" if self.latency_ms
                 else f"target speed-up {self.target:.2f}x")
        return (f"{asked} on onnxruntime: {self.gflops:.3f}x GFLOPs measured {self.measured:.2f}x "
                f"({len(self.trials)} trials timed beside the unpruned model)")


def measure_speedup(model, base_onnx: Path, cfg: PruneConfig, folder: Path, threads: int, runs: int) -> float:
    """The speed-up over ``base_onnx`` of ``model`` pruned (uncalibrated) as ``cfg`` says, both as ONNX."""
    net, _ = api.load_model(model)
    report = api.prune(copy.deepcopy(net), config=replace(cfg, selection="score", reconstruct=False))
    trial = export_onnx(report.model, folder / "trial.onnx", cfg.imgsz)
    base, lat = paired_onnx_latency([base_onnx, trial], cfg.imgsz, runs, threads)
    return base / lat


def gflops_for_speedup(model, speedup: float | None, cfg: PruneConfig, threads: int = 1, runs: int = 15,
                       max_trials: int = 8, latency_ms: float | None = None) -> SpeedupSearch:
    """The GFLOPs fraction (for ``cfg.target_gflops``) whose pruned model runs ``speedup`` times faster than the
    unpruned one on onnxruntime with ``threads`` threads (or, with ``latency_ms``, in that many milliseconds on
    this machine): bisection in log-GFLOPs between 1 and the smallest fraction pruning reaches, stopping within
    ``TOLERANCE``."""
    if latency_ms is None and not (speedup or 0) > 1:
        raise ConfigError(f"--target-speedup must be above 1 (a speed-up over the unpruned model), got {speedup}")
    if latency_ms is not None and not latency_ms > 0:
        raise ConfigError(f"--target-latency must be a positive number of milliseconds, got {latency_ms}")
    net, _ = api.load_model(model)
    trials: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="yoloprune-speedup-") as tmp:
        folder = Path(tmp)
        base = export_onnx(net, folder / "base.onnx", cfg.imgsz)
        if latency_ms is not None:
            base_ms = paired_onnx_latency([base], cfg.imgsz, runs, threads)[0] * 1e3
            speedup = base_ms / latency_ms
            if speedup <= 1:
                raise ConfigError(f"the unpruned model already runs in {base_ms:.1f} ms here, within "
                                  f"--target-latency {latency_ms:g} ms: nothing to prune for")
        lo, hi = 0.05, 1.0  # GFLOPs fractions: lo fast enough (assumed), hi too slow
        best = (1.0, 1.0)
        for _ in range(max_trials):
            g = math.sqrt(lo * hi)
            s = measure_speedup(net, base, replace(cfg, target_gflops=g, ratio=0.0), folder, threads, runs)
            trials.append((g, s))
            if abs(s / speedup - 1) < abs(best[1] / speedup - 1):
                best = (g, s)
            if abs(s / speedup - 1) <= TOLERANCE:
                break
            lo, hi = (lo, g) if s < speedup else (g, hi)
    if abs(best[1] / speedup - 1) > 0.15:
        raise ConfigError(f"a {speedup:.2f}x speed-up is out of reach by pruning this model on this runtime: the "
                          f"closest was {best[1]:.2f}x at {best[0]:.3f}x GFLOPs")
    return SpeedupSearch(speedup, best[0], best[1], trials, latency_ms)


__all__ = ["TOLERANCE", "SpeedupSearch", "gflops_for_speedup", "measure_speedup"]
