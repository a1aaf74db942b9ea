"""Ratio-vs-mAP sweeps: prune one base model at several ratios (and methods), optionally fine-tune, evaluate,
and measure what each point costs and buys. Rows are keyed by (method, ratio, finetune_epochs); a sweep started
again computes only the missing rows, and shards run on several machines merge into one table.
"""

from __future__ import annotations

import copy
import io
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from yoloprune import api, sources
from yoloprune.atomic import atomic_write_bytes, atomic_write_text
from yoloprune.data.images import calibration_images
from yoloprune.defaults import CALIB_IMAGES, ROUND_TO, SWEEP_RATIOS, UNSTRUCTURED
from yoloprune.engine.importance import names as criteria
from yoloprune.engine.plan import PruneConfig
from yoloprune.errors import ConfigError, UnsupportedModelError, check_ratio
from yoloprune.speed.runtimes import paired_onnx_latency
from yoloprune.speed.timing import machine
from yoloprune.targets import Ratio, Speedup
from yoloprune.workflows.evaluate import DETECTION_METRICS, Evaluator, metric_names
from yoloprune.workflows.export import export_onnx
from yoloprune.workflows.tables import Progress, markdown_table

KEY = ["method", "ratio", "finetune_epochs"]

COLUMNS = [*KEY, "status", "map50_95", "map50", "ultralytics_map50_95", "params", "params_ratio", "gflops",
           "gflops_ratio", "ckpt_mb", "onnx_mb", "latency_ms", "speedup", "blocks_removed", "seconds", "metric",
           "host", "cpu"]
FAILED = "failed"  # status prefix of a point that raised on a worker: retried when the sweep runs again


def sweep_methods() -> tuple[str, ...]:
    return (*criteria(), UNSTRUCTURED)


@dataclass
class SweepConfig:
    model: str
    data: str
    out: str
    ratios: list[float] = field(default_factory=lambda: list(SWEEP_RATIOS))
    methods: list[str] = field(default_factory=lambda: ["l1"])
    finetune_epochs: int = 0
    split: str = "val"
    imgsz: int = 320
    batch: int = 16
    workers: int = 2
    latency_runs: int = 30
    latency_threads: int = 1  # onnxruntime intra-op threads: 1 is the small-device case and steadiest when shared
    device: str = "cpu"  # where fine-tuning runs (Ultralytics device string)
    round_to: int = ROUND_TO  # keep pruned widths multiples of this (8 suits CPU kernels)
    keep_models: bool = True  # keep each row's checkpoint under out/models
    compensate: bool = True  # calibrate on train images: mean compensation (and data-aware criteria)
    reconstruct: bool = True  # with compensate: least-squares refit of the layers that lost inputs
    calib_images: int = CALIB_IMAGES
    distill: bool = False  # fine-tune points with the unpruned model as the teacher
    recover_epochs: int = 0  # label-free recovery of every pruned point for this many epochs, before any fine-tune
    steps: int = 1  # prune-and-reconstruct steps per point (PruneConfig.steps)
    layers: bool = False  # bn method: also remove residual blocks whose branch falls under the gamma threshold
    # Instead of ratios: points at these speed-ups over the unpruned model on onnxruntime, as the latency columns
    # are measured (prune --target-speedup; the table's ratio column then holds the target speed-up, 1 being the
    # unpruned model)
    speedups: list[float] | None = None
    int8: bool = False  # also quantize every point's ONNX export (export --int8): its mAP and latency

    @property
    def axis(self) -> str:
        return "speedup" if self.speedups else "ratio"

    @property
    def unpruned(self) -> float:
        """The point on this axis that is the unpruned model: ratio 0, or speed-up 1."""
        return 1.0 if self.axis == "speedup" else 0.0

    def pruned(self, ratio: float) -> bool:
        """Whether a point (a ratio, or a target speed-up) prunes anything."""
        return ratio != self.unpruned

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in sweep_methods()]
        if bad or not self.methods:
            raise ConfigError(f"unknown method {bad[0] if bad else ''!r}; choose from {', '.join(sweep_methods())}")
        if self.speedups is not None:
            if not self.speedups or any(not x >= 1 for x in self.speedups):
                raise ConfigError(f"target speed-ups must be >= 1 (1: the unpruned model), got {self.speedups}")
            if UNSTRUCTURED in self.methods or self.layers:
                raise ConfigError("speed-up targets are reached by channel pruning: not with unstructured sparsity "
                                  "or block removal")
        elif not self.ratios:
            raise ConfigError("give at least one ratio")
        for r in self.ratios if self.speedups is None else ():
            check_ratio(r)
        if self.recover_epochs < 0:
            raise ConfigError("recover_epochs must be >= 0")
        if self.finetune_epochs < 0:
            raise ConfigError("finetune_epochs must be >= 0")
        if self.layers and "bn" not in self.methods:
            raise ConfigError("layers (block removal) needs the bn method")

    def recipe(self) -> dict:
        """The settings that change every row's figures: rows made with other settings are not reused."""
        return {"model": str(Path(self.model).resolve()), "split": self.split, "imgsz": self.imgsz,
                "round_to": self.round_to, "calibration": self.compensate, "reconstruct": self.reconstruct,
                "calib_images": self.calib_images, "steps": self.steps, "distill": self.distill,
                "recover_epochs": self.recover_epochs,
                "layers": self.layers, "axis": self.axis, "int8": self.int8}

    def jobs(self) -> list[tuple[str, float, int]]:
        return [(m, round(float(r), 4), self.finetune_epochs) for m in self.methods
                for r in (self.speedups or self.ratios)]


def read_results(out: str | Path) -> pd.DataFrame:
    path = Path(out) / "results.csv"
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a sweep results table ({type(e).__name__})") from None
    if not set(KEY) <= set(df.columns):
        raise ConfigError(f"{path}: not a sweep results table (needs columns {', '.join(KEY)})")
    return df


def _key(method: str, ratio: float, ft: int) -> tuple:
    return (str(method), round(float(ratio), 4), int(ft))


def done_keys(df: pd.DataFrame) -> set[tuple]:
    """Keys of finished rows: ok or refused. A failed row (an error on a cluster worker) is run again."""
    failed = df["status"].astype(str).str.startswith(FAILED) if "status" in df.columns else [False] * len(df)
    return {_key(m, r, f) for m, r, f, bad in zip(df["method"], df["ratio"], df["finetune_epochs"], failed,
                                                    strict=True) if not bad}


def todo(cfg: SweepConfig, df: pd.DataFrame) -> list[tuple[str, float, int]]:
    """The sweep's points that have no finished row in ``df``."""
    done = done_keys(df)
    return [j for j in cfg.jobs() if _key(*j) not in done]


def tag(job: tuple) -> str:
    """File stem of a point's checkpoint and run folder: l1-0.3, l1-0.3-ft10."""
    method, ratio, ft = job
    return f"{method}-{ratio:g}" + (f"-ft{ft}" if ft else "")


def combine(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Join result tables: one row per key (the last one seen wins), sorted by method then ratio."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    df["ratio"] = df["ratio"].astype(float).round(4)
    df["finetune_epochs"] = df["finetune_epochs"].astype(int)
    df = df.drop_duplicates(subset=KEY, keep="last").sort_values(KEY).reset_index(drop=True)
    return df[[c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]]


def write_results(df: pd.DataFrame, out: str | Path, title: str = "") -> None:
    """results.csv, results.md and the plots, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    atomic_write_text(out / "results.md", markdown(df))
    plot(df, out, title)


def _cell(column: str, value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else (f"{value:.4f}" if "map" in column else f"{value:.3g}")
    return str(value)


def _by_speedup(df: pd.DataFrame) -> bool:
    """The rows are points of a speed-up sweep: their ratio column holds target speed-ups."""
    return "axis" in df.columns and len(df) > 0 and bool((df["axis"] == "speedup").all())


def markdown(df: pd.DataFrame) -> str:
    cols = ["model", "method", "ratio", "finetune_epochs", "map50_95", "map50", "params_ratio", "gflops_ratio",
            "ckpt_mb", "onnx_mb", "latency_ms", "speedup", "int8_map50_95", "int8_ms", "int8_speedup"]
    if "blocks_removed" in df.columns and (df["blocks_removed"].fillna(0) > 0).any():
        cols.append("blocks_removed")
    if metric_names(df) != DETECTION_METRICS:  # map50_95 / map50 hold another task's metric: say which
        cols.insert(cols.index("map50_95"), "metric")
    view = df[[c for c in cols if c in df.columns]].copy()
    if _by_speedup(df):
        view = view.rename(columns={"ratio": "target_speedup"})
    if "status" in df.columns and (df["status"] != "ok").any():
        view["note"] = ["" if st == "ok" else str(st).split(":")[0] + " (reason in results.csv)" for st in df["status"]]
    return markdown_table(view.to_dict("records"), list(view.columns), _cell) + "\n"


def _series(ok: pd.DataFrame):
    """(label, rows) per curve: one per model, method and fine-tune length."""
    by = [c for c in ("model", "method", "finetune_epochs") if c in ok.columns]
    for keys, g in ok.groupby(by):
        parts = dict(zip(by, keys if isinstance(keys, tuple) else (keys,), strict=True))
        label = " ".join(str(parts[c]) for c in ("model", "method") if c in parts)
        label += f" + {parts['finetune_epochs']} ep fine-tune" if parts.get("finetune_epochs") else ""
        yield label, g


def _draw(ax, df: pd.DataFrame, x: str, y: str, label_ratios: bool) -> None:
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    for label, g in _series(ok):
        g = g.sort_values(x)
        line = ax.plot(g[x], g[y], marker="o", label=label)[0]
        if label_ratios:
            for _, r in g.iterrows():
                ax.annotate(f"{r['ratio']:g}", (r[x], r[y]), textcoords="offset points", xytext=(3, 4), fontsize=7,
                            color=line.get_color())
    base = ok[ok["ratio"] == (1 if _by_speedup(df) else 0)]
    if len(base):
        ax.axhline(float(base[y].max()), color="gray", ls="--", lw=1, label=f"unpruned {float(base[y].max()):.3f}")
    refused = df[df["status"].astype(str).str.startswith("refused")] if "status" in df.columns else df.iloc[:0]
    if len(refused) and x == "ratio":
        ax.scatter(refused["ratio"], [0] * len(refused), marker="x", color="red", label="refused (see results.md)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def plot(df: pd.DataFrame, out: Path, title: str = "") -> list[Path]:
    """mAP vs prune ratio and mAP vs latency, on explicit figures (the caller's matplotlib backend is untouched).
    y axes start at 0, the unpruned mAP is a dashed line, refused points are red crosses, latency points carry
    their ratio."""
    from matplotlib.figure import Figure

    written = []
    for name, x, ys, xlabel in (("map_vs_ratio.png", "ratio", ("map50_95", "map50"),
                                 "target speed-up" if _by_speedup(df) else "prune ratio"),
                                ("map_vs_latency.png", "latency_ms", ("map50_95",), "onnxruntime CPU latency (ms)")):
        fig = Figure(figsize=(5.5 * len(ys), 4.3))
        axes = fig.subplots(1, len(ys), squeeze=False)[0]
        for ax, y in zip(axes, ys, strict=True):
            _draw(ax, df, x, y, label_ratios=x != "ratio")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(dict(zip(("map50_95", "map50"), metric_names(df), strict=True))[y])
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        written.append(atomic_write_bytes(out / name, buf.getvalue()))
    return written


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

        check_int8_head(model)
        images = base_stats.get("calibration")
        images = calibration_images(cfg.data, cfg.imgsz, cfg.calib_images) if images is None else images
        q = quantize_int8(onnx, int8_path(onnx), images.numpy().astype("float32"), nc=len(model.names))
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


def is_unpruned(job: tuple, unpruned: float = 0.0) -> bool:
    """Whether a (method, point, finetune_epochs) job is the unpruned model, whatever the structured method: the
    point ``unpruned`` (ratio 0, or speed-up 1 on that axis) without fine-tuning."""
    method, ratio, ft = job
    return ratio == unpruned and not ft and method != UNSTRUCTURED


def reuse_unpruned(df: pd.DataFrame, job: tuple, unpruned: float = 0.0) -> dict | None:
    """A finished row of the unpruned model (``is_unpruned``), for another job that is the unpruned model."""
    method = job[0]
    if not is_unpruned(job, unpruned) or "status" not in df.columns:
        return None
    done = df[(df["ratio"] == unpruned) & (df["finetune_epochs"] == 0) & (df["status"] == "ok")
              & (df["method"] != UNSTRUCTURED)]
    if done.empty or method == UNSTRUCTURED:
        return None
    return {**done.iloc[0].to_dict(), "method": method}


_LATER_SETTINGS = {"recover_epochs": 0, "axis": "ratio", "int8": False}  # recipe settings added later, with the value older sweeps had


def _check_recipe(cfg: SweepConfig, out: Path, df: pd.DataFrame) -> None:
    """Resume only rows made with the same settings; record the settings of a new sweep folder."""
    path = out / "sweep.json"
    if len(df):
        old = json.loads(path.read_text()) if path.exists() else None
        if old is not None:
            old = {**_LATER_SETTINGS, **old}  # a folder written before a setting existed was made without it
        if old != cfg.recipe():
            what = "no record of its settings (an older yoloprune)" if old is None else "other settings: " + ", ".join(
                f"{k} {old.get(k)!r} (now {v!r})" for k, v in cfg.recipe().items() if old.get(k) != v)
            raise ConfigError(f"{out} holds sweep rows made with {what}; give another --out or remove it")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cfg.recipe(), indent=1))


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


def title(cfg: SweepConfig) -> str:
    return f"{Path(cfg.model).name} on {Path(cfg.data).stem} {cfg.split}, {cfg.imgsz} px"


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


def merge(dirs: list[str | Path], out: str | Path) -> pd.DataFrame:
    """Join the results of sweeps run separately (e.g. ratio subsets on several machines) into ``out``."""
    frames = []
    for d in dirs:
        if not (Path(d) / "results.csv").exists():
            raise ConfigError(f"{d}: no results.csv to merge")
        frames.append(read_results(d))
    df = combine(frames)
    write_results(df, out)
    return df
