"""Wall time of one 4-point sweep run three ways, side by side in one run: the local sweep, a local Ray instance
with two 1-CPU workers, and a local Ray instance with one 2-CPU worker (the local sweep's own layout: one point at
a time on both cores, so its extra time over the local sweep is Ray's overhead).

    python -m benchmarks.ray_sweep [--model weights/teabud-yolov8n.pt] [--data data/teabud.yaml] [--repeats 1]

Writes benchmarks/ray_sweep.md. Each run starts from an empty folder; rows are checked equal across the runs.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from yoloprune.speed.timing import machine
from yoloprune.workflows.cluster import RayConfig, ray_sweep
from yoloprune.workflows.sweep import SweepConfig, sweep

SAME = ["map50_95", "map50", "params", "gflops"]


def main() -> None:
    ap = harness.parser(__file__, __doc__, out=True)
    ap.add_argument("--model", default=str(harness.weights("teabud-yolov8n")))
    ap.add_argument("--data", default=str(harness.DATA))
    ap.add_argument("--ratios", default="0,0.2,0.4,0.6")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    ratios = harness.floats(args.ratios)
    ways = {"local sweep (one point at a time, torch on all cores)": None,
            "Ray, 2 workers x 1 CPU": RayConfig(cpus_per_point=1, local_cpus=2),
            "Ray, 1 worker x 2 CPUs": RayConfig(cpus_per_point=2, local_cpus=2)}
    times: dict[str, list[float]] = {w: [] for w in ways}
    tables = {}
    for _ in range(args.repeats):
        for way, rc in ways.items():
            with tempfile.TemporaryDirectory() as tmp:
                cfg = SweepConfig(model=args.model, data=args.data, out=tmp, ratios=ratios, imgsz=harness.IMGSZ,
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
    table = ["| how | wall s | vs local |", "|---|---|---|"]
    for way in ways:
        w = statistics.median(times[way])
        table.append(f"| {way} | {w:.1f} | {w / local:.2f}x |")
    print(harness.write_markdown(
        args.out,
        f"# Sweep on Ray vs local: {len(ratios)} points (l1 at {args.ratios}, {harness.IMGSZ} px, "
        f"{Path(args.data).stem} val)",
        f"Machine: {m['host']}, {m['cpu']}, {os.cpu_count()} CPUs; median of {args.repeats} run(s); every run's rows "
        f"equal the local sweep's in {', '.join(SAME)}.",
        "\n".join(table),
        f"Ray overhead per point (1 worker x 2 CPUs vs local, start-up included): {(one - local) / len(ratios):.1f} s"))


if __name__ == "__main__":
    main()
