"""Ratio vs picking-point accuracy of the tea-bud pose model, side by side in one run.

On the shipped ``weights/teabud-yolov8n-pose.pt`` (one keypoint: the picking point at the stem's base) and the
tea-bud pose data (``make-data --task pose``, generated into the work folder when absent):
- one-shot l1 at each ratio, with least-squares reconstruction from 64 unlabeled train images (the default) and
  with mean compensation only;
- at some ratios, the reconstructed model fine-tuned for E epochs, beside the fair reference: the unpruned model
  fine-tuned with the same recipe for E epochs.
Every model is evaluated on val and test: pose mAP50-95 by pycocotools (OKS with the data's sigma, 0.1) and by
Ultralytics' PoseValidator (same sigma, its own matching), and timed with onnxruntime (batch 1, one thread, 320 px)
in alternation with the unpruned model; the speed-up is the ratio of medians. Finished rows are kept in
``--work`` (rows.json, models/), so a killed run resumes where it stopped.

    python -m benchmarks.pose [--ratios 0.1,0.2,0.3,0.4,0.5,0.6] [--finetune 0.3,0.5] [--epochs 5]
                              [--work outputs/pose] [--out benchmarks/pose.md] [--render-only]
"""

from __future__ import annotations

import time
from pathlib import Path

import yoloprune as yp
from benchmarks import harness
from yoloprune.api import gflops, load_model, save_checkpoint
from yoloprune.sources import source_meta
from yoloprune.workflows.tables import markdown_table
from yoloprune.workflows.train import TrainConfig, train

BASE = harness.weights("teabud-yolov8n-pose")


class Bench(harness.WorkFolder):
    def __init__(self, work: Path, epochs: int) -> None:
        super().__init__(work, harness.pose_data(work))
        self.epochs = epochs
        self.g0 = gflops(load_model(BASE)[0], self.imgsz)

    def record(self, key: str, ratio: float, recipe: str, seconds: float) -> None:
        model, _ = load_model(self.path(key))
        v, t = self.val(model), self.test(model)
        g = gflops(model, self.imgsz)
        self.rows[key] = {"ratio": ratio, "recipe": recipe, "val": v.map50_95,
                          "val_ultralytics": v.ultralytics_map50_95, "val50": v.map50, "test": t.map50_95,
                          "test_ultralytics": t.ultralytics_map50_95, "test50": t.map50,
                          "params": harness.params(model), "gflops": g, "gflops_ratio": g / self.g0,
                          "train_min": seconds / 60}
        self.save()
        print(f"{key}: val {v.map50_95:.4f} test {t.map50_95:.4f} GFLOPs x{g / self.g0:.3f} ({seconds / 60:.1f} min)",
              flush=True)

    def one_shot(self, ratio: float, reconstruct: bool) -> Path:
        key = f"{ratio:g}-{'recon' if reconstruct else 'meancomp'}"
        if not self.done(key):
            cfg = yp.PruneConfig(method="l1", imgsz=self.imgsz, round_to=8, reconstruct=reconstruct)
            report = yp.prune(str(BASE), config=cfg, target=yp.Ratio(ratio), calibration=self.calib)
            save_checkpoint(report.model, self.path(key), report.ckpt, source_meta(str(BASE)))
            self.record(key, ratio, "l1 + reconstruction" if reconstruct else "l1 mean-comp", 0.0)
        return self.path(key)

    def finetune(self, src: Path, key: str, ratio: float, recipe: str) -> None:
        if self.done(key):
            return
        t0 = time.perf_counter()
        train(TrainConfig(model=str(src), data=str(self.data), out=str(self.path(key)), epochs=self.epochs,
                          imgsz=self.imgsz, finetune=True, project=str(self.work / "runs" / key)))
        self.record(key, ratio, recipe, time.perf_counter() - t0)


def run(bench: Bench, ratios: list[float], finetune: list[float]) -> None:
    e = bench.epochs
    if not bench.done("unpruned"):
        bench.save_unchanged("unpruned", BASE)
        bench.record("unpruned", 0.0, "unpruned", 0.0)
    for r in ratios:
        bench.one_shot(r, reconstruct=False)
        bench.one_shot(r, reconstruct=True)
    bench.finetune(BASE, f"unpruned-ft{e}", 0.0, f"unpruned + {e} ep fine-tune")
    for r in finetune:
        bench.finetune(bench.one_shot(r, reconstruct=True), f"{r:g}-recon-ft{e}", r, f"l1 + reconstruction + {e} ep")


def table(rows: dict) -> str:
    cols = ["ratio", "recipe", "val", "val_ultralytics", "test", "test_ultralytics", "params", "gflops_ratio",
            "speedup", "train_min"]

    def cell(c: str, v) -> str:
        return f"{v:.4f}" if c.startswith(("val", "test")) else f"{v / 1e6:.2f}M" if c == "params" else harness.fmt(v)

    shown = sorted(rows.values(), key=lambda r: (r["train_min"] > 0, r["ratio"], r["recipe"]))
    return markdown_table(shown, cols, cell)


def intro(epochs: int) -> str:
    return (f"`python -m benchmarks.pose --epochs {epochs}`: {harness.IMGSZ} px, pose mAP50-95 (OKS, sigma 0.1) on "
            "val and test by pycocotools and by Ultralytics' PoseValidator, GFLOPs at 320 px relative to the unpruned "
            "model, speed-up = onnxruntime CPU latency (batch 1, one thread, medians of alternated runs) against the "
            f"unpruned model; fine-tuned rows: E = {epochs} epochs, the same for the unpruned reference.")


def main() -> None:
    ap = harness.parser(__file__, __doc__, work=True, runs=30)
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6", help="one-shot prune ratios")
    ap.add_argument("--finetune", default="0.3,0.5", help="ratios whose reconstructed model is also fine-tuned")
    ap.add_argument("--epochs", type=int, default=5, help="fine-tune epochs E (the same for the unpruned reference)")
    args = ap.parse_args()
    if harness.render_saved(args, lambda rows: (intro(args.epochs), table(rows))):
        return
    bench = Bench(Path(args.work), args.epochs)
    run(bench, harness.floats(args.ratios), harness.floats(args.finetune))
    bench.speedups(list(bench.rows), list(bench.rows).index("unpruned"), args.runs)
    print(harness.write_markdown(args.out, intro(args.epochs), table(bench.rows)))


if __name__ == "__main__":
    main()
