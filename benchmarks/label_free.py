"""Label-free recovery (``yoloprune recover``) against one-shot pruning, side by side in one run.

For each shipped tea-bud detector and GFLOPs target: the default one-shot recipe (l1, widths in multiples of 8,
64 calibration images, reconstruction), then ``recover`` for M minutes on the train images with no labels read,
the unpruned model as the teacher. Every model is evaluated with pycocotools on val and test. Finished rows are
kept in ``--work`` (rows.json, models/), so a killed run resumes where it stopped.

    python benchmarks/label_free.py [--minutes 10] [--targets 0.7,0.5] [--models teabud-yolov8n,teabud-yolov5n]
                                    [--work outputs/label_free] [--out benchmarks/label_free.md]
"""

from __future__ import annotations

from yoloprune.runtime import offline_runtime

offline_runtime()  # before Ultralytics is imported: no hub checks, no font download

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WorkFolder, prune_to, recover_to  # noqa: E402

import yoloprune as yp  # noqa: E402
from yoloprune.api import gflops, load_model, save_checkpoint  # noqa: E402
from yoloprune.atomic import atomic_write_text  # noqa: E402
from yoloprune.data.images import calibration_images  # noqa: E402
from yoloprune.workflows.tables import markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMGSZ = 320
DATA = ROOT / "data" / "teabud.yaml"


class Bench(WorkFolder):
    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.val = yp.Evaluator(str(DATA), "val", imgsz=IMGSZ)
        self.test = yp.Evaluator(str(DATA), "test", imgsz=IMGSZ)
        self.calib = calibration_images(str(DATA), IMGSZ)

    def record(self, key: str, model_name: str, target: float, recipe: str, minutes: float, **extra) -> None:
        model, _ = load_model(self.path(key))
        base, _ = load_model(ROOT / "weights" / f"{model_name}.pt")
        v, t = self.val(model), self.test(model)
        self.rows[key] = {"model": model_name, "target": target, "recipe": recipe, "val_map50_95": v.map50_95,
                          "test_map50_95": t.map50_95, "gflops_ratio": gflops(model, IMGSZ) / gflops(base, IMGSZ),
                          "minutes": minutes, **extra}
        self.save()
        print(f"{key}: val {v.map50_95:.4f} test {t.map50_95:.4f} ({minutes:.1f} min)", flush=True)

    def unpruned(self, name: str) -> None:
        key = f"{name}-unpruned"
        if not self.done(key):
            model, ckpt = load_model(ROOT / "weights" / f"{name}.pt")
            save_checkpoint(model, self.path(key), ckpt)
            self.record(key, name, 1.0, "unpruned", 0.0)

    def one_shot(self, name: str, target: float) -> Path:
        key = f"{name}-{target:g}-oneshot"
        if not self.done(key):
            minutes = prune_to(ROOT / "weights" / f"{name}.pt", self.path(key), target, IMGSZ, self.calib)
            self.record(key, name, target, "one-shot (default recipe)", minutes)
        return self.path(key)

    def recover(self, name: str, target: float, minutes: float) -> None:
        key = f"{name}-{target:g}-recover{minutes:g}"
        if self.done(key):
            return
        taken, extra = recover_to(self.one_shot(name, target), str(DATA), self.path(key), IMGSZ, self.work / "runs",
                                  minutes)
        self.record(key, name, target, f"one-shot + recover {minutes:g} min (no labels)", taken, **extra)

def table(rows: dict) -> str:
    cols = ["model", "target", "recipe", "gflops_ratio", "val_map50_95", "test_map50_95", "kept", "minutes",
            "epochs", "distance"]
    base = {r["model"]: r["val_map50_95"] for r in rows.values() if r["recipe"] == "unpruned"}
    shown = [{**r, "kept": r["val_map50_95"] / base[r["model"]] if r["model"] in base else ""}
             for r in sorted(rows.values(), key=lambda r: (r["model"], -r["target"], r["minutes"]))]

    def cell(c: str, v) -> str:
        if c == "kept" and isinstance(v, float):
            return f"{v:.0%}"
        return f"{v:.4f}" if isinstance(v, float) and c.endswith("map50_95") else (
            f"{v:.3g}" if isinstance(v, float) else str(v))

    return markdown_table(shown, cols, cell)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--models", default="teabud-yolov8n,teabud-yolov5n")
    ap.add_argument("--work", default=str(ROOT / "outputs" / "label_free"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "label_free.md"))
    args = ap.parse_args()
    bench = Bench(Path(args.work))
    for name in args.models.split(","):
        bench.unpruned(name)
        for target in (float(t) for t in args.targets.split(",")):
            bench.recover(name, target, args.minutes)
            atomic_write_text(args.out, HEADER + table(bench.rows) + "\n")
    print(table(bench.rows))


HEADER = ("# Label-free recovery on the tea-bud detectors\n\n`python benchmarks/label_free.py`: one run on 2 CPU "
          "cores, 320 px, pycocotools mAP50-95 on val and test; \"kept\" is the share of the unpruned model's val "
          "mAP. Recovery reads the 400 train images and no label.\n\n")

if __name__ == "__main__":
    main()
