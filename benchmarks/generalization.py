"""One-shot pruning across models: channel selection, where the refit spends its samples, and width allocation.

For each shipped model and GFLOPs target, side by side in one run, with the same 64 calibration images and
reconstruction: ``l1`` (one global l1 threshold, lowest l1 channels first, fitting samples drawn uniformly: the
recipe before issue 21), ``obs`` (channels chosen by the refit's objective, ``selection="obs"``, samples uniform),
``obs+focus`` (half the samples where the head finds objects: today's default) and ``damage+obs+focus`` (widths by
estimated damage per GFLOP, ``scope="damage"``). Each model is scored on val and test with its task's metric (pycocotools
box mAP50-95; keypoint mAP50-95 for the pose model); "kept" is the share of the unpruned model's val figure. The
prune time of each recipe is in the table too. Finished rows are kept in ``--work`` (rows.json, models/).

    python -m benchmarks.generalization [--targets 0.7,0.5] [--models teabud-yolov8n,...]
                                        [--work outputs/generalization] [--out benchmarks/generalization.md]
                                        [--render-only]
"""

from __future__ import annotations

import time
from pathlib import Path

import yoloprune as yp
from benchmarks import harness
from yoloprune.api import gflops, load_model, save_checkpoint
from yoloprune.data.images import calibration_images
from yoloprune.workflows.tables import markdown_table

RECIPES = {"l1": {"selection": "score", "focus": False}, "obs": {"selection": "obs", "focus": False},
           "obs+focus": {}, "damage+obs+focus": {"scope": "damage"}}
MODELS = ["teabud-yolov8n", "teabud-yolov5nu", "teabud-yolov5n", "teabud-yolov8n-pose"]


def data_for(name: str, work: Path) -> Path:
    """The shipped detection data, or the pose labels regenerated from the same seed (make-data --task pose)."""
    return harness.pose_data(work) if "pose" in name else harness.DATA


class Bench(harness.WorkFolder):
    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.evaluators: dict = {}

    def evaluate(self, data: Path, model) -> tuple[float, float]:
        if data not in self.evaluators:
            self.evaluators[data] = harness.evaluators(data)
        val, test = self.evaluators[data]
        return val(model).map50_95, test(model).map50_95

    def run(self, name: str, target: float | None, recipe: str) -> None:
        key = f"{name}-{target:g}-{recipe}" if target else f"{name}-unpruned"
        if self.done(key):
            return
        src, data = harness.weights(name), data_for(name, self.work)
        t0 = time.perf_counter()
        if target is None:
            model, ckpt = load_model(src)
        else:
            calib = calibration_images(str(data), self.imgsz)
            cfg = yp.PruneConfig(imgsz=self.imgsz, **RECIPES[recipe])
            report = yp.prune(str(src), config=cfg, target=yp.Gflops(target), calibration=calib)
            model, ckpt = report.model, report.ckpt
        seconds = time.perf_counter() - t0
        save_checkpoint(model, self.path(key), ckpt)
        v, t = self.evaluate(data, model)
        self.rows[key] = {"model": name, "target": target or 1.0, "recipe": recipe if target else "unpruned",
                          "gflops_ratio": gflops(model, self.imgsz) / gflops(load_model(src)[0], self.imgsz),
                          "params": harness.params(model), "val": v, "test": t, "prune_s": seconds}
        self.save()
        print(f"{key}: val {v:.4f} test {t:.4f} GFLOPs x{self.rows[key]['gflops_ratio']:.3f} ({seconds:.0f} s)",
              flush=True)


def table(rows: dict) -> str:
    base = {r["model"]: r["val"] for r in rows.values() if r["recipe"] == "unpruned"}
    order = {k: i for i, k in enumerate(["unpruned", *RECIPES])}
    shown = [{**r, "kept": r["val"] / base[r["model"]] if base.get(r["model"]) else ""}
             for r in sorted(rows.values(), key=lambda r: (r["model"], -r["target"], order[r["recipe"]]))]

    def cell(c: str, v) -> str:
        if c == "kept" and isinstance(v, float):
            return f"{v:.0%}"
        if c in ("val", "test") and isinstance(v, float):
            return f"{v:.4f}"
        if c == "params":
            return f"{v / 1e6:.2f}M"
        return harness.fmt(v)

    return markdown_table(shown, ["model", "target", "recipe", "gflops_ratio", "params", "val", "test", "kept",
                                  "prune_s"], cell)


HEADER = ("# One-shot pruning across models: channel selection, focused samples and width allocation\n\n"
          "`python -m benchmarks.generalization`: one run on 2 CPU cores, 320 px, 64 calibration images, "
          "reconstruction on; val / test mAP50-95 by pycocotools (keypoint mAP50-95, OKS sigma 0.1, for the pose "
          "model). \"kept\" is the share of the unpruned model's val figure. Recipes: l1 = lowest-l1 channels, "
          "uniform samples (earlier releases); obs = structured-OBS channels, uniform samples; obs+focus = the "
          "default (half the samples where the detector finds objects); damage+obs+focus = widths by estimated "
          "damage.")


def main() -> None:
    ap = harness.parser(__file__, __doc__, out=True, work=True)
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--recipes", default=",".join(RECIPES))
    args = ap.parse_args()
    if harness.render_saved(args, lambda rows: (HEADER, table(rows))):
        return
    bench = Bench(Path(args.work))
    for name in args.models.split(","):
        bench.run(name, None, "unpruned")
        for target in harness.floats(args.targets):
            for recipe in args.recipes.split(","):
                bench.run(name, target, recipe)
                harness.write_markdown(args.out, HEADER, table(bench.rows))
    print(table(bench.rows))


if __name__ == "__main__":
    main()
