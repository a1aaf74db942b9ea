"""One-shot pruning without any training: what calibration buys, side by side in one run.

For each model, ratio and recipe the shipped detector is pruned (widths in multiples of 8, calibration on the first
64 train images, no labels used) and evaluated with pycocotools on val and test:

- ``mean-comp``: mean compensation only (yoloprune before least-squares reconstruction);
- ``mean-comp + BN recal``: and BatchNorm statistics re-estimated on the calibration images;
- ``reconstruction``: least-squares refit of every conv from the unpruned model's outputs (the default);
- ``reconstruction + BN recal``;
- ``reconstruction in N steps``: the same size reached in N prune-and-reconstruct steps (``--steps N``).

Prune time (trace, calibration, plan, surgery, reconstruction) is the median over the ratios.

    python -m benchmarks.oneshot [--models yolov8n,yolov5nu] [--ratios 0.2,0.3,0.4,0.5] [--methods l1,act]
                                 [--recipes mean-comp,reconstruction] [--out benchmarks/oneshot.md]
"""

from __future__ import annotations

import copy
import statistics
import time

import yoloprune as yp
from benchmarks import harness
from yoloprune.api import load_model
from yoloprune.data.images import calibration_images

RECIPES = {"mean-comp": (False, False, 1), "mean-comp + BN recal": (False, True, 1),
           "reconstruction": (True, False, 1), "reconstruction + BN recal": (True, True, 1),
           "reconstruction in 3 steps": (True, False, 3), "reconstruction in 5 steps": (True, False, 5)}


def main() -> None:
    ap = harness.parser(__file__, __doc__)
    ap.add_argument("--models", default="yolov8n,yolov5nu")
    ap.add_argument("--ratios", default="0.2,0.3,0.4,0.5")
    ap.add_argument("--methods", default="l1")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    args = ap.parse_args()
    imgsz = harness.IMGSZ
    val, test = harness.evaluators()
    calib = calibration_images(str(harness.DATA), imgsz)
    lines = ["| model | method | recipe | ratio | params | GFLOPs ratio | val mAP50-95 | val kept | test mAP50-95 | "
             "prune s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for fam in args.models.split(","):
        base, _ = load_model(str(harness.weights(f"teabud-{fam}")))
        v0, t0 = val(base).map50_95, test(base).map50_95
        lines.append(f"| {fam} | - | unpruned | 0 | {harness.params(base):,} | 1 | {v0:.4f} | 100% | {t0:.4f} | |")
        for method in args.methods.split(","):
            for recipe in args.recipes.split(","):
                refit, recal, steps = RECIPES[recipe]
                times = []
                for r in harness.floats(args.ratios):
                    cfg = yp.PruneConfig(method=method, imgsz=imgsz, round_to=8,
                                         reconstruct=refit, recalibrate_bn=recal, steps=steps)
                    start = time.perf_counter()
                    report = yp.prune(copy.deepcopy(base), config=cfg, target=yp.Ratio(r), calibration=calib)
                    times.append(time.perf_counter() - start)
                    v, t = val(report.model).map50_95, test(report.model).map50_95
                    row = (f"| {fam} | {method} | {recipe} | {r:g} | {report.after.params:,} | "
                           f"{report.after.gflops / report.before.gflops:.3f} | {v:.4f} | {v / v0:.0%} | {t:.4f} |")
                    lines.append(row + f" {times[-1]:.1f} |")
                    print(lines[-1], flush=True)
                print(f"{fam} {method} {recipe}: median prune time {statistics.median(times):.1f} s", flush=True)
    print(harness.write_markdown(args.out, f"One-shot pruning, no training, {imgsz}px, round_to 8, 64 calibration "
                                           "images; pycocotools mAP50-95.", "\n".join(lines)))


if __name__ == "__main__":
    main()
