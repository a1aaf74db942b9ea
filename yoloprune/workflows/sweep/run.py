"""Running a sweep: each (method, point, fine-tune epochs) job pruned from the base model, optionally recovered
or fine-tuned, evaluated and measured; rows written as they finish."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import pandas as pd

from yoloprune import api, sources
from yoloprune.data.images import calibration_images
from yoloprune.defaults import UNSTRUCTURED
from yoloprune.engine.plan import PruneConfig
from yoloprune.errors import ConfigError, UnsupportedModelError
from yoloprune.speed.runtimes import paired_onnx_latency
from yoloprune.speed.timing import machine
from yoloprune.targets import Ratio, Speedup
from yoloprune.workflows.evaluate import Evaluator
from yoloprune.workflows.export import export_onnx
from yoloprune.workflows.sweep.config import SweepConfig, title
from yoloprune.workflows.sweep.results import (
    _check_recipe,
    combine,
    read_results,
    reuse_unpruned,
    tag,
    todo,
    write_results,
)
from yoloprune.workflows.tables import Progress


def _prune_copy(base, method: str, ratio: float, cfg: SweepConfig, calibration, reference) -> tuple[object, int]:
    """A pruned copy of ``base`` and the number of residual blocks removed with it (``ratio``: the target speed-up
    in a speed-up sweep)."""
    model = copy.deepcopy(base)
    if method == UNSTRUCTURED:
        return api.sparsify(model, amount=ratio).model, 0
    pc = PruneConfig(method=method, imgsz=cfg.imgsz, round_to=cfg.round_to,
                     blocks=cfg.layers and method == "bn" and ratio > 0,
                     reconstruct=cfg.reconstruct, steps=cfg.steps if not (cfg.layers and method == "bn") else 1)
    if cfg.axis == "speedup" and ratio == 1:
        return model, 0
    target = Speedup(ratio, threads=cfg.latency_threads) if cfg.axis == "speedup" else Ratio(ratio)
    report = api.prune(model, config=pc, calibration=calibration, reference=reference, target=target)
    return report.model, len(report.removed_blocks)


def run_job(cfg: SweepConfig, base, base_stats: dict, evaluator: Evaluator, job: tuple, work: Path) -> dict:
    """Prune, (fine-tune), evaluate and measure one (method, ratio, finetune_epochs) point."""
    from yoloprune.workflows.train import TrainConfig, train

    method, ratio, ft = job
    t0 = time.perf_counter()
    row = {"method": method, "ratio": ratio, "finetune_epochs": ft, **machine()}
    try:
        model, n_blocks = _prune_copy(base, method, ratio, cfg, base_stats.get("calibration"),
                                      base_stats.get("reference"))
    except (ConfigError, UnsupportedModelError) as e:  # above bn's safe maximum, a layer emptied...: recorded
        return {**row, "status": f"refused: {e}"}
    name = tag(job)
    ckpt = work / f"{name}.pt"
    sources.save_checkpoint(model, ckpt, base_stats.get("ckpt"), meta={"sweep": {"method": method, "ratio": ratio},
                                                                    **base_stats["meta"]})
    if cfg.recover_epochs and cfg.pruned(ratio) and method != UNSTRUCTURED:  # (recovery would fill a sparse model's zeros)
        _recover(cfg, ckpt, work, name)
    if ft:
        tuned = work / f"{name}.tuned.pt"
        train(TrainConfig(model=str(ckpt), data=cfg.data, out=str(tuned), epochs=ft, imgsz=cfg.imgsz,
                          batch=cfg.batch, workers=cfg.workers, finetune=True, device=cfg.device,
                          project=str(work.parent / "runs"), name=name,
                          teacher=cfg.model if cfg.distill else None))
        tuned.replace(ckpt)
        model, _ = sources.load_model(ckpt)
    res = evaluator(model)
    onnx = export_onnx(ckpt, work / f"{name}.onnx", cfg.imgsz)
    files = [base_stats["onnx"], onnx]
    if cfg.int8:
        from yoloprune.workflows.export import check_int8_head, int8_path
        from yoloprune.workflows.quantize import quantize_int8

        objectness = check_int8_head(model)
        images = base_stats.get("calibration")
        images = calibration_images(cfg.data, cfg.imgsz, cfg.calib_images) if images is None else images
        q = quantize_int8(onnx, int8_path(onnx), images.numpy().astype("float32"), nc=len(model.names),
                          objectness=objectness)
        row.update(int8_map50_95=evaluator(str(q.path)).map50_95, int8_float=q.kept_float)
        files.append(q.path)
    base_lat, lat, *int8_lat = paired_onnx_latency(files, cfg.imgsz, cfg.latency_runs, cfg.latency_threads)
    if int8_lat:
        row.update(int8_ms=int8_lat[0] * 1e3, int8_speedup=base_lat / int8_lat[0])
    params = sum(p.numel() for p in model.parameters())
    gfl = api.gflops(model, cfg.imgsz)
    return {**row, "axis": cfg.axis, "status": "ok", "metric": res.metric, "map50_95": res.map50_95, "map50": res.map50,
            "ultralytics_map50_95": res.ultralytics_map50_95, "params": params,
            "params_ratio": params / base_stats["params"], "gflops": gfl, "gflops_ratio": gfl / base_stats["gflops"],
            "ckpt_mb": ckpt.stat().st_size / 1e6, "onnx_mb": onnx.stat().st_size / 1e6, "latency_ms": lat * 1e3,
            "speedup": base_lat / lat, "blocks_removed": n_blocks, "seconds": time.perf_counter() - t0}


def _recover(cfg: SweepConfig, ckpt: Path, work: Path, name: str) -> None:
    """Label-free recovery of a point's checkpoint in place, towards the unpruned model, on the data's train images."""
    from yoloprune.engine.recover import RecoverConfig
    from yoloprune.workflows.recover import RecoverRun, recover_model

    recovered = work / f"{name}.recovered.pt"
    recover_model(RecoverRun(model=str(ckpt), images=cfg.data, out=str(recovered), teacher=cfg.model, imgsz=cfg.imgsz,
                             project=str(work.parent / "runs"), name=f"{name}-recover",
                             training=RecoverConfig(epochs=cfg.recover_epochs, minutes=None)))
    recovered.replace(ckpt)


def prepare(cfg: SweepConfig, tmp: Path, calibration=None, meta: dict | None = None) -> tuple:
    """What every point of a sweep shares: the base model, its figures (params, GFLOPs, its ONNX export under
    ``tmp`` for paired latency), the calibration images and the base's recorded activations, and the evaluator.
    A cluster worker is handed the driver's ``calibration`` images and source ``meta``, so that its rows equal
    the local sweep's. Returns (base, base_stats, evaluator)."""
    base, base_ckpt = sources.load_model(cfg.model)
    evaluator = Evaluator(cfg.data, cfg.split, imgsz=cfg.imgsz, batch=cfg.batch)
    evaluator.spec.check_model(base)
    stats = {"ckpt": {k: base_ckpt[k] for k in ("opt", "git", "train_args") if k in base_ckpt},  # kept in rows
             "meta": sources.source_meta(cfg.model) if meta is None else meta,
             "params": sum(p.numel() for p in base.parameters()), "gflops": api.gflops(base, cfg.imgsz),
             "onnx": export_onnx(base, Path(tmp) / "base.onnx", cfg.imgsz)}
    if cfg.compensate:  # the unpruned model is recorded once on the calibration images, for every row
        stats["calibration"] = (calibration_images(cfg.data, cfg.imgsz, cfg.calib_images) if calibration is None
                                else calibration)
        stats["reference"] = api.record_reference(base, stats["calibration"])
    return base, stats, evaluator


def start(cfg: SweepConfig) -> tuple[pd.DataFrame, list[tuple]]:
    """Check the settings against the output folder; return its finished rows and the points still to run."""
    cfg.validate()
    out = Path(cfg.out)
    df = read_results(out)
    _check_recipe(cfg, out, df)
    return df, todo(cfg, df)


def add_row(df: pd.DataFrame, row: dict, cfg: SweepConfig, progress: Progress) -> pd.DataFrame:
    """Put a finished point into the table and write the table and plots (atomically): a killed sweep loses at
    most the points in flight."""
    df = combine([df, pd.DataFrame([row])])
    write_results(df, cfg.out, title(cfg))
    progress.step(f"{row['method']} {cfg.axis} {row['ratio']:g}: " + (f"mAP50-95 {row['map50_95']:.4f}"
                                                               if row["status"] == "ok" else row["status"]))
    return df


def finish(df: pd.DataFrame, cfg: SweepConfig) -> pd.DataFrame:
    if cfg.finetune_epochs:
        write_results(df, cfg.out, title(cfg) + f", fine-tuned {cfg.finetune_epochs} epochs")
    if not cfg.keep_models:
        for f in (Path(cfg.out) / "models").glob("*"):
            f.unlink()
    return df


def sweep(cfg: SweepConfig) -> pd.DataFrame:
    """Run the missing rows of the sweep and return the whole table (also written under ``cfg.out``)."""
    df, jobs = start(cfg)
    if not jobs:
        write_results(combine([df]), cfg.out, title(cfg))
        return combine([df])
    work = Path(cfg.out) / "models"
    work.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(jobs))
    with tempfile.TemporaryDirectory(prefix="yoloprune-sweep-") as tmp:
        base, base_stats, evaluator = prepare(cfg, Path(tmp))
        for job in jobs:
            row = reuse_unpruned(df, job, cfg.unpruned) or run_job(cfg, base, base_stats, evaluator, job, work)
            df = add_row(df, row, cfg, progress)
    return finish(df, cfg)
