r"""``yoloprune optimize`` at speed-up targets on the tea-bud detectors: the shipped file's measured speed-up over
the unpruned FP32 ONNX file (onnxruntime, one thread, in alternation), its val mAP50-95 (the data's labels, read
only to score) and its agreement with the unpruned model, and how long the command took. The images are the data's
train images, unlabelled; every run folder is kept in ``outputs/optimize/<model>-<target>x`` and resumes.

    python -m benchmarks.optimize [--models teabud-yolov8n,teabud-yolov5n] [--targets 2,3] [--minutes 10]
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks import harness
from yoloprune.workflows.evaluate import Evaluator
from yoloprune.workflows.optimize import OptimizeConfig, optimize
from yoloprune.workflows.tables import markdown_table

COLS = ["model", "target", "shipped", "speedup", "map50_95", "unpruned_map50_95", "points", "test_map50_95",
        "unpruned_test_map50_95", "test_points", "agreement", "minutes"]


def run(model: str, target: float, minutes: float, work: Path) -> dict:
    out = work / f"{model}-{target:g}x"
    result = optimize(OptimizeConfig(model=str(harness.weights(model)), images=str(harness.DATA), out=str(out),
                                     target_speedup=target, minutes=minutes, data=str(harness.DATA),
                                     imgsz=harness.IMGSZ))
    rows = {r["model"]: r for r in result.rows}
    steps = pd.read_csv(out / "results.csv")
    seconds = steps.loc[steps["kind"] == "step", "seconds"].sum()
    test = Evaluator(str(harness.DATA), "test", imgsz=harness.IMGSZ)
    shipped_test, unpruned_test = test(str(result.shipped)).map50_95, test(str(harness.weights(model))).map50_95
    return {"model": model, "target": target, "shipped": result.shipped.name, "speedup": result.speedup,
            "map50_95": rows["exported"]["map50_95"], "unpruned_map50_95": rows["unpruned"]["map50_95"],
            "points": 100 * (rows["exported"]["map50_95"] - rows["unpruned"]["map50_95"]),
            "test_map50_95": shipped_test, "unpruned_test_map50_95": unpruned_test,
            "test_points": 100 * (shipped_test - unpruned_test), "agreement": result.agreement,
            "minutes": seconds / 60}


def main() -> None:
    ap = harness.parser(__file__, __doc__, out=True, work=True)
    ap.add_argument("--models", default="teabud-yolov8n")
    ap.add_argument("--targets", default="3")
    ap.add_argument("--minutes", type=float, default=10.0)
    args = ap.parse_args()
    if harness.render_saved(args, render):
        return
    work = Path(args.work)
    saved = harness.load_json(work / "rows.json")
    for model in args.models.split(","):
        for target in harness.floats(args.targets):
            key = f"{model}-{target:g}x"
            if key not in saved:
                saved[key] = run(model, target, args.minutes, work)
                harness.save_json(work / "rows.json", saved)
    harness.write_markdown(args.out, *render(saved), keep_notes=True)
    print(render(saved)[-1])


def render(rows: dict) -> tuple[str, ...]:
    return ("# yoloprune optimize",
            "`python -m benchmarks.optimize`: one `yoloprune optimize` run per (model, target) on 2 CPU cores, 320 "
            "px, the tea-bud train images as unlabelled images (a fifth held back for agreement), 10 minutes of "
            "`recover`. `speedup`: the shipped file against the unpruned FP32 ONNX file, one thread, timed in "
            "alternation; `map50_95`: the shipped file on the val split (`test_`: the test split); `points`: its "
            "difference from the unpruned model's; `minutes`: the whole command.",
            markdown_table(sorted(rows.values(), key=lambda r: (r["model"], r["target"])), COLS,
                           lambda _c, v: harness.fmt(v)))


if __name__ == "__main__":
    main()
