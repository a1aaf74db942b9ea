"""A sweep's results: the CSV read and written (resume: what is done, what is left; shards merged), the
Markdown table, and the recipe check that keeps a resumed sweep from mixing settings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from yoloprune.atomic import atomic_write_text
from yoloprune.defaults import UNSTRUCTURED
from yoloprune.errors import ConfigError
from yoloprune.workflows.evaluate import DETECTION_METRICS, metric_names
from yoloprune.workflows.sweep.config import COLUMNS, FAILED, KEY, SweepConfig, by_speedup
from yoloprune.workflows.sweep.plots import plot
from yoloprune.workflows.tables import markdown_table


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


def markdown(df: pd.DataFrame) -> str:
    cols = ["model", "method", "ratio", "finetune_epochs", "map50_95", "map50", "params_ratio", "gflops_ratio",
            "ckpt_mb", "onnx_mb", "latency_ms", "speedup", "int8_map50_95", "int8_ms", "int8_speedup"]
    if "blocks_removed" in df.columns and (df["blocks_removed"].fillna(0) > 0).any():
        cols.append("blocks_removed")
    if metric_names(df) != DETECTION_METRICS:  # map50_95 / map50 hold another task's metric: say which
        cols.insert(cols.index("map50_95"), "metric")
    view = df[[c for c in cols if c in df.columns]].copy()
    if by_speedup(df):
        view = view.rename(columns={"ratio": "target_speedup"})
    if "status" in df.columns and (df["status"] != "ok").any():
        view["note"] = ["" if st == "ok" else str(st).split(":")[0] + " (reason in results.csv)" for st in df["status"]]
    return markdown_table(view.to_dict("records"), list(view.columns), _cell) + "\n"


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
