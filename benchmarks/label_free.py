"""Label-free recovery (``yoloprune recover``) against one-shot pruning, side by side in one run.

For each shipped tea-bud detector and GFLOPs target: the default one-shot recipe (l1, widths in multiples of 8,
64 calibration images, reconstruction), then ``recover`` for M minutes on the train images with no labels read,
the unpruned model as the teacher. Every model is evaluated with pycocotools on val and test. Finished rows are
kept in ``--work`` (rows.json, models/), so a killed run resumes where it stopped.

    python -m benchmarks.label_free [--minutes 10] [--targets 0.7,0.5] [--models teabud-yolov8n,teabud-yolov5n]
                                    [--work outputs/label_free] [--out benchmarks/label_free.md] [--render-only]
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import harness
from yoloprune.api import gflops, load_model
from yoloprune.workflows.tables import markdown_table


class Bench(harness.WorkFolder):
    def record(self, key: str, model_name: str, target: float, recipe: str, minutes: float, **extra) -> None:
        model, _ = load_model(self.path(key))
        base, _ = load_model(harness.weights(model_name))
        v, t = self.val(model), self.test(model)
        self.rows[key] = {"model": model_name, "target": target, "recipe": recipe, "val_map50_95": v.map50_95,
                          "test_map50_95": t.map50_95,
                          "gflops_ratio": gflops(model, self.imgsz) / gflops(base, self.imgsz),
                          "minutes": minutes, **extra}
        self.save()
        print(f"{key}: val {v.map50_95:.4f} test {t.map50_95:.4f} ({minutes:.1f} min)", flush=True)

    def unpruned(self, name: str) -> None:
        key = f"{name}-unpruned"
        if not self.done(key):
            self.save_unchanged(key, harness.weights(name))
            self.record(key, name, 1.0, "unpruned", 0.0)

    def one_shot(self, name: str, target: float) -> Path:
        key = f"{name}-{target:g}-oneshot"
        if not self.done(key):
            minutes = harness.prune_to(harness.weights(name), self.path(key), target, self.imgsz, self.calib)
            self.record(key, name, target, "one-shot (default recipe)", minutes)
        return self.path(key)

    def recover(self, name: str, target: float, minutes: float) -> None:
        key = f"{name}-{target:g}-recover{minutes:g}"
        if self.done(key):
            return
        taken, extra = harness.recover_to(self.one_shot(name, target), str(self.data), self.path(key), self.imgsz,
                                          self.work / "runs", minutes)
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
        return f"{v:.4f}" if isinstance(v, float) and c.endswith("map50_95") else harness.fmt(v)

    return markdown_table(shown, cols, cell)


HEADER = ("# Label-free recovery on the tea-bud detectors\n\n`python -m benchmarks.label_free`: one run on 2 CPU "
          "cores, 320 px, pycocotools mAP50-95 on val and test; \"kept\" is the share of the unpruned model's val "
          "mAP. Recovery reads the 400 train images and no label.")


def main() -> None:
    ap = harness.parser(__file__, __doc__, out=True, work=True)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--models", default="teabud-yolov8n,teabud-yolov5n")
    args = ap.parse_args()
    if harness.render_saved(args, lambda rows: (HEADER, table(rows))):
        return
    bench = Bench(Path(args.work), harness.DATA)
    for name in args.models.split(","):
        bench.unpruned(name)
        for target in harness.floats(args.targets):
            bench.recover(name, target, args.minutes)
            harness.write_markdown(args.out, HEADER, table(bench.rows))
    print(table(bench.rows))


if __name__ == "__main__":
    main()
