"""Iterative pruning: reach a ratio or a GFLOPs target in several steps, each one pruned with calibration
(mean compensation and least-squares reconstruction) and then briefly fine-tuned (distilled from the original
model with ``distill``), so that later steps choose channels in a model that has already recovered.

Each step writes a row (GFLOPs, params, the task's val metric before and after its fine-tune, time, the metric's
name) to ``<out>.steps.csv`` and ``.md`` beside the output model. With ``max_map_drop``, the run stops at the first
step whose fine-tuned val metric (mAP50-95 for detectors) falls more than that below the original's, and the output
is the last step that stayed within it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from yoloprune import api, sources
from yoloprune.atomic import atomic_write, atomic_write_text
from yoloprune.data.images import calibration_images
from yoloprune.defaults import CALIB_IMAGES, METHOD, ROUND_TO
from yoloprune.engine.plan import PruneConfig, step_target
from yoloprune.engine.prune import one_step_gflops
from yoloprune.errors import ConfigError
from yoloprune.log import say
from yoloprune.speed.search import search_speedup, speedup_of
from yoloprune.targets import Gflops, Ratio, Speedup
from yoloprune.workflows.evaluate import Evaluator
from yoloprune.workflows.tables import bar, markdown_table
from yoloprune.workflows.train import TrainConfig, train


@dataclass
class IterativeConfig:
    model: str
    data: str
    out: str
    # the final target: a Ratio of prunable channels, a Gflops fraction, or a Speedup (its one-shot search sets the
    # final GFLOPs and the channel block; every step is timed on its runtime)
    target: Ratio | Gflops | Speedup | None = None
    steps: int = 3
    epochs: int = 1  # fine-tune epochs after each step (0: prune and reconstruct only)
    method: str = METHOD
    round_to: int = ROUND_TO
    distill: bool = False  # fine-tune with the original model as the teacher
    max_map_drop: float | None = None  # stop when val mAP50-95 falls more than this below the original's
    imgsz: int = 320
    batch: int = 16
    workers: int = 2
    calib_images: int = CALIB_IMAGES

    def validate(self) -> None:
        if not isinstance(self.target, (Ratio, Gflops, Speedup)):
            raise ConfigError(f"iterative pruning needs a Ratio, Gflops or Speedup target, got {self.target!r}")
        if isinstance(self.target, Ratio) and self.target.value == 0:
            raise ConfigError("ratio 0 prunes nothing; give a ratio in (0, 1)")
        if isinstance(self.target, Gflops) and self.target.fraction == 1:
            raise ConfigError("a GFLOPs target of 1 prunes nothing; give a fraction in (0, 1)")
        if self.steps < 1 or self.epochs < 0:
            raise ConfigError("steps must be >= 1 and epochs >= 0")
        if self.max_map_drop is not None and self.max_map_drop < 0:
            raise ConfigError(f"max_map_drop must be >= 0, got {self.max_map_drop}")

    def prune_config(self) -> PruneConfig:
        return PruneConfig(method=self.method, round_to=self.round_to, imgsz=self.imgsz)

    def step_target(self, i: int, gflops_now: float, gflops0: float, target: float) -> Gflops:
        """Step ``i`` (1-based) for the current model: the schedule's GFLOPs target (``step_target``) of the
        original, towards the final GFLOPs fraction ``target``, as a fraction of the current model's."""
        return Gflops(min(gflops0 * step_target(target, i, self.steps) / gflops_now, 1.0))


def _steps_table(rows: list[dict], out: Path) -> None:
    df = pd.DataFrame(rows)
    stem = out.with_suffix("")
    atomic_write_text(stem.with_name(stem.name + ".steps.csv"), df.to_csv(index=False))
    table = markdown_table(rows, list(df.columns), lambda _c, v: f"{v:.4g}" if isinstance(v, float) else str(v))
    atomic_write_text(stem.with_name(stem.name + ".steps.md"), table + "\n")


def _progress(i: int, n: int, row: dict) -> None:
    say(f"{bar(i, n)} step {i}/{n}: GFLOPs x{row['gflops_ratio']:.3f}, params x{row['params_ratio']:.3f}, "
          f"val {row['metric']} {row['map50_95_pruned']:.4f} pruned -> {row['map50_95']:.4f} after "
          f"{row['epochs']} epoch(s), {row['seconds']:.0f}s", err=True)


def iterative_prune(cfg: IterativeConfig) -> pd.DataFrame:
    """Run the steps; write the chosen model to ``cfg.out`` and the step table beside it. Returns the table."""
    cfg.validate()
    original, _ = sources.load_model(cfg.model)
    evaluator = Evaluator(cfg.data, "val", imgsz=cfg.imgsz, batch=cfg.batch)
    evaluator.spec.check_model(original)
    calib = calibration_images(cfg.data, cfg.imgsz, cfg.calib_images)
    hooks = api.hooks_for(original)
    gflops0, params0 = hooks.gflops(original, cfg.imgsz), sum(p.numel() for p in original.parameters())
    first = evaluator(original)
    map0, metric = first.map50_95, first.metric  # the task's metric: mAP50-95, pose mAP50-95, top-1 accuracy, ...
    timed = cfg.target if isinstance(cfg.target, Speedup) else None
    if timed:  # the final GFLOPs and channel block of a one-shot prune that runs that fast
        search = search_speedup(original, timed, cfg.prune_config())
        say(search.line(), err=True)
        cfg = replace(cfg, round_to=search.round_to)
        target = search.gflops_ratio
    elif isinstance(cfg.target, Gflops):
        target = cfg.target.fraction
    else:
        target = one_step_gflops(original, hooks, cfg.prune_config(), cfg.target.value)
    rows: list[dict] = [{"step": 0, "gflops_ratio": 1.0, "params_ratio": 1.0, "map50_95_pruned": map0,
                         "map50_95": map0, "epochs": 0, "seconds": 0.0, "metric": metric,
                         **({"speedup": 1.0} if timed else {})}]
    meta = sources.source_meta(cfg.model)
    with tempfile.TemporaryDirectory(prefix="yoloprune-iter-") as tmp:
        current, kept = Path(cfg.model), None
        for i in range(1, cfg.steps + 1):
            t0 = time.perf_counter()
            model, _ = sources.load_model(current)
            report = api.prune(model, config=cfg.prune_config(), calibration=calib,
                               target=cfg.step_target(i, hooks.gflops(model, cfg.imgsz), gflops0, target))
            step = Path(tmp) / f"step{i}.pt"
            sources.save_checkpoint(report.model, step, report.ckpt, {**meta, "iterative": {"step": i}})
            pruned_map = evaluator(report.model).map50_95
            if cfg.epochs:
                train(TrainConfig(model=str(step), data=cfg.data, out=str(step), epochs=cfg.epochs, imgsz=cfg.imgsz,
                                  batch=cfg.batch, workers=cfg.workers, finetune=True, project=tmp, name=f"step{i}",
                                  teacher=cfg.model if cfg.distill else None))
            model, _ = sources.load_model(step)
            row = {"step": i, "gflops_ratio": hooks.gflops(model, cfg.imgsz) / gflops0,
                   "params_ratio": sum(p.numel() for p in model.parameters()) / params0,
                   "map50_95_pruned": pruned_map, "map50_95": evaluator(model).map50_95, "epochs": cfg.epochs,
                   "seconds": time.perf_counter() - t0, "metric": metric}
            if timed:
                row["speedup"] = speedup_of(model, original, cfg.imgsz, timed.runtime, timed.threads)
            rows.append(row)
            _progress(i, cfg.steps, row)
            if cfg.max_map_drop is not None and map0 - row["map50_95"] > cfg.max_map_drop:
                say(f"step {i} fell {map0 - row['map50_95']:.4f} below the original (> {cfg.max_map_drop}); "
                      "stopping", err=True)
                break
            kept, current = step, step
        if kept is None:
            raise ConfigError(f"the first step already fell more than {cfg.max_map_drop} below the original "
                              f"{metric} {map0:.4f}; nothing written (try more steps or epochs)")
        out = Path(cfg.out)
        atomic_write(out, lambda t: shutil.copyfile(kept, t))
    _steps_table(rows, out)
    return pd.DataFrame(rows)


__all__ = ["IterativeConfig", "iterative_prune"]
