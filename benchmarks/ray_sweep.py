"""Wall time of one 4-point sweep run three ways, side by side in one run: the local sweep, a local Ray instance
with two 1-CPU workers, and a local Ray instance with one 2-CPU worker (the local sweep's own layout: one point at
a time on both cores, so its extra time over the local sweep is Ray's overhead).

    python benchmarks/ray_sweep.py [--model weights/teabud-yolov8n.pt] [--data data/teabud.yaml] [--repeats 1]

Writes benchmarks/ray_sweep.md. Each run starts from an empty folder; rows are checked equal across the runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from yoloprune.runtime import offline_runtime

offline_runtime()

from yoloprune.workflows.cluster import RayConfig, ray_sweep
from yoloprune.workflows.latency import machine
from yoloprune.workflows.sweep import SweepConfig, sweep

ROOT = Path(__file__).resolve().parents[1]
SAME = ["map50_95", "map50", "params", "gflops"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "weights" / "teabud-yolov8n.pt"))
    ap.add_argument("--data", default=str(ROOT / "data" / "teabud.yaml"))
    ap.add_argument("--ratios", default="0,0.2,0.4,0.6")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    ways = {"local sweep (one point at a time, torch on all cores)": None,
            "Ray, 2 workers x 1 CPU": RayConfig(cpus_per_point=1, local_cpus=2),
            "Ray, 1 worker x 2 CPUs": RayConfig(cpus_per_point=2, local_cpus=2)}
    times: dict[str, list[float]] = {w: [] for w in ways}
    tables = {}
    for _ in range(args.repeats):
        for way, rc in ways.items():
            with tempfile.TemporaryDirectory() as tmp:
                cfg = SweepConfig(model=args.model, data=args.data, out=tmp, ratios=ratios, imgsz=320,
                                  keep_models=False)
                t = time.perf_counter()
                df = sweep(cfg) if rc is None else ray_sweep(cfg, rc)
                times[way].append(time.perf_counter() - t)
                tables[way] = df
    ref = tables[next(iter(ways))]
    for way, df in tables.items():
        for col in SAME:
            assert list(df[col]) == list(ref[col]), f"{way}: {col} differs from the local sweep"
    local = statistics.median(times[next(iter(ways))])
    one = statistics.median(times["Ray, 1 worker x 2 CPUs"])
    m = machine()
    lines = [f"# Sweep on Ray vs local: {len(ratios)} points (l1 at {args.ratios}, 320 px, {Path(args.data).stem} val)",
             "", f"Machine: {m['host']}, {m['cpu']}, {__import__('os').cpu_count()} CPUs; median of "
             f"{args.repeats} run(s); every run's rows equal the local sweep's in {', '.join(SAME)}.", "",
             "| how | wall s | vs local |", "|---|---|---|"]
    for way in ways:
        w = statistics.median(times[way])
        lines.append(f"| {way} | {w:.1f} | {w / local:.2f}x |")
    lines += ["", f"Ray overhead per point (1 worker x 2 CPUs vs local, start-up included): "
              f"{(one - local) / len(ratios):.1f} s", ""]
    text = "\n".join(lines)
    (ROOT / "benchmarks" / "ray_sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
