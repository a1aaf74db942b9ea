"""``optimize``'s report: ``report.md``, ``results.csv`` and the accuracy-against-speed-up plot."""

from __future__ import annotations

import time
from pathlib import Path

from yoloprune.atomic import atomic_write_bytes, atomic_write_text
from yoloprune.workflows.optimize.config import AGREEMENT_CONF, SHORTFALL, OptimizeConfig


def write_report(out: Path, cfg: OptimizeConfig, steps: dict) -> dict:
    """``report.md``, ``results.csv`` (every step's seconds; every model's speed-up, agreement and mAP) and
    ``accuracy_vs_speedup.png`` from the recorded steps."""
    import pandas as pd

    t0 = time.perf_counter()
    base, verified = steps["baseline"], steps["verify"]
    rows = verified["rows"]
    _plot(out / "accuracy_vs_speedup.png", rows, base["target"])
    shipped = Path(rows[-1]["file"]).name
    asked = (f"{cfg.target_speedup:g}x" if cfg.target_speedup else
             f"{cfg.target_latency:g} ms ({base['target']:.2f}x at the measured {base['base_ms']:.2f} ms)")
    lines = [f"# optimize: {Path(cfg.model).name}", "",
             f"Ships **{shipped}**: {verified['speedup']:.2f}x the unpruned FP32 ONNX file on onnxruntime "
             f"({cfg.threads} thread(s), {cfg.imgsz} px; {verified['shipped_ms']:.2f} ms against "
             f"{verified['base_ms']:.2f} ms, timed in alternation); target {asked}.", ""]
    if not verified["met"]:
        lines += [f"**Target missed**: {verified['speedup']:.2f}x is more than {SHORTFALL:.0%} below "
                  f"{base['target']:.2f}x.", ""]
    lines += [f"INT8: {steps['export'].get('int8_why', base['int8_why'])}.", f"Prune: {steps['prune']['line']}.",
              f"Recover ({cfg.minutes:g} min, no labels): {steps['recover']['line']}.", ""]
    if not verified["boxes"]:
        lines += ["Agreement: n/a: the unpruned model detects nothing at conf 0.25 on the held-back images (or is "
                  "not a detector).", ""]
    cols = ["model", "file", "speedup"] + [c for c in ("agreement", "map50_95") if c in rows[0]]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("n/a" if v is None else str(v))  # noqa: E731
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    lines += ["", f"agreement: mAP50-95 against the unpruned model's own detections at conf {AGREEMENT_CONF} on "
              f"{base['held_back']} held-back images ({verified['boxes']} boxes)"
              + (f"; map50_95: on the val split of {cfg.data}." if cfg.data else "."), "",
              "Steps: " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in steps.items()) + "."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    seconds = {**{k: v["seconds"] for k, v in steps.items()}, "report": time.perf_counter() - t0}
    table = pd.DataFrame([{"kind": "step", "name": k, "seconds": v} for k, v in seconds.items()]
                         + [{"kind": "model", "name": r["model"], **r} for r in rows]).drop(columns="model")
    atomic_write_text(out / "results.csv", table.to_csv(index=False))
    return {"line": "report.md, results.csv, accuracy_vs_speedup.png",
            "files": ["report.md", "results.csv", "accuracy_vs_speedup.png"]}


def _plot(path: Path, rows: list[dict], target: float) -> None:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for metric, marker in (("agreement", "o"), ("map50_95", "s")):
        pts = [(r["speedup"], r[metric], r["model"]) for r in rows if r.get(metric) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ls=":", label=metric)
            for k, (x, y, name) in enumerate(pts):  # staggered: models of one architecture share a speed-up
                ax.annotate(name, (x, y), fontsize=7, xytext=(4, 4 - 9 * k), textcoords="offset points")
    ax.axvline(target, color="grey", ls="--", lw=1, label=f"target {target:.2f}x")
    ax.set_xlabel("speed-up over the unpruned FP32 ONNX file")
    ax.set_ylabel("mAP50-95")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
