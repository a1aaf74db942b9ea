"""A sweep's plots: mAP against prune ratio (or target speed-up) and against measured latency."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from yoloprune.atomic import atomic_write_bytes
from yoloprune.workflows.evaluate import metric_names
from yoloprune.workflows.sweep.config import by_speedup


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
    base = ok[ok["ratio"] == (1 if by_speedup(df) else 0)]
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
                                 "target speed-up" if by_speedup(df) else "prune ratio"),
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
