r"""Calibration from the few images a user has: one-shot pruning to 0.7x GFLOPs (the default recipe) calibrated on
8, 16, 24 or 64 images, each set as it is and with the extra views of itself that ``calibration_images`` adds below
64 (flips, and crops at the file's own resolution, letterboxed like the whole image).

- ``teabud``: the shipped tea-bud yolov8n at 320 px, calibrated on the first k train images; val and test mAP50-95
  with labels.
- ``tau``: the YOLOv8n-OBB of ``tau-fibrils-yolo`` (0.2.0) at 640 px on its real EM image, cut into
  non-overlapping 640 px tiles: k tiles of the left half calibrate, 24 tiles of the right half are scored by
  agreement with the unpruned model's own detections (conf 0.25).

    pip download --no-deps tau-fibrils-yolo==0.2.0 -d /tmp/tau && unzip -o /tmp/tau/*.whl -d /tmp/tau
    python -m benchmarks.few_images teabud
    python -m benchmarks.few_images tau --weights /tmp/tau/tau_fibrils_yolo/model/100ep.pt \
        --image /tmp/tau/tau_fibrils_yolo/sample/sample.tif
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import yoloprune as yp
from benchmarks import harness
from benchmarks.real_models import agreement_dataset, em_tiles
from yoloprune.api import gflops, load_model, save_checkpoint
from yoloprune.data.images import calibration_images
from yoloprune.data.spec import load_data
from yoloprune.workflows.tables import markdown_table

COLS = ["model", "images", "views", "calibration", "gflops_ratio", "val", "test", "val_kept", "test_kept", "minutes"]
COUNTS = (8, 16, 24, 64)
TARGET = 0.7


def subset(files: list[Path], k: int, folder: Path) -> Path:
    """A folder with the first ``k`` of ``files`` (copies), made once."""
    if not folder.is_dir() or len(list(folder.iterdir())) != min(k, len(files)):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for f in files[:k]:
            shutil.copyfile(f, folder / f.name)
    return folder


def main() -> None:
    ap = harness.parser(__file__, __doc__, out=True, work=True)
    ap.add_argument("model", nargs="?", choices=("teabud", "tau"))
    ap.add_argument("--weights", type=Path, help="tau: the package's 100ep.pt")
    ap.add_argument("--image", type=Path, help="tau: the package's sample/sample.tif")
    ap.add_argument("--counts", default=",".join(map(str, COUNTS)))
    args = ap.parse_args()
    if harness.render_saved(args, render):
        return
    if args.model is None or (args.model == "tau" and (args.weights is None or args.image is None)):
        ap.error("give teabud, or tau with --weights and --image")
    work = Path(args.work)
    if args.model == "teabud":
        weights, data, imgsz = harness.weights("teabud-yolov8n"), harness.DATA, harness.IMGSZ
        bench = harness.WorkFolder(work, data, imgsz)
    else:
        weights, imgsz = args.weights, 640
        data = agreement_dataset(work / "tau", weights, imgsz, em_tiles(args.image, 24, step=640))
        bench = harness.WorkFolder(work, None, imgsz)
        bench.val, bench.test = yp.Evaluator(str(data), "val", imgsz=imgsz), None
    files = load_data(data, "train").files("train")
    unpruned, _ = load_model(weights)
    base = {"val": bench.val(unpruned).map50_95, "test": bench.test(unpruned).map50_95 if bench.test else None}
    g0 = gflops(unpruned, imgsz)
    for k in (int(x) for x in harness.floats(args.counts)):
        folder = subset(files, k, work / f"{args.model}-calib{k}")
        for views in (False, True) if k < 64 else (False,):
            key = f"{args.model}-{k}-{'views' if views else 'plain'}"
            if bench.done(key):
                continue
            calib = calibration_images(folder, imgsz, 64 if views else k, views=views)
            t0 = time.perf_counter()
            report = yp.prune(str(weights), config=yp.PruneConfig(imgsz=imgsz), target=yp.Gflops(TARGET),
                              calibration=calib)
            minutes = (time.perf_counter() - t0) / 60
            save_checkpoint(report.model, bench.path(key), report.ckpt)
            v = bench.val(report.model).map50_95
            t = bench.test(report.model).map50_95 if bench.test else None
            bench.rows[key] = {"model": args.model, "images": min(k, len(files)), "views": views,
                               "calibration": len(calib), "gflops_ratio": gflops(report.model, imgsz) / g0,
                               "val": v, "val_kept": v / base["val"], "test": t,
                               "test_kept": t / base["test"] if t is not None else None, "minutes": minutes}
            bench.save()
            print(f"{key}: val {v:.4f} ({v / base['val']:.0%} kept)", flush=True)
    harness.write_markdown(args.out, *render(bench.rows), keep_notes=True)
    print(render(bench.rows)[-1])


def render(rows: dict) -> tuple[str, ...]:
    shown = sorted(rows.values(), key=lambda r: (r["model"], r["images"], r["views"]))
    return ("# Calibration from few images",
            "`python -m benchmarks.few_images {teabud,tau}`: one-shot to 0.7x GFLOPs with the default recipe, "
            "calibrated on k images as they are (`views` False) or with the views of themselves that "
            "`calibration_images` adds up to 64 (`views` True). teabud: mAP50-95 with labels; tau: agreement with "
            "the unpruned model on 24 held-out tiles of the real EM image (`val`). `kept`: share of the unpruned "
            "model's. 2 CPU cores.",
            markdown_table(shown, COLS, lambda _c, v: "" if v is None else harness.fmt(v)))


if __name__ == "__main__":
    main()
