r"""Pruning detectors that other people trained, scored by agreement with the unpruned model.

Two models, each fetched once by hand from PyPI (never at run time):

``ir``: the YOLO11n that the MIT-licensed ``ir-yolo-tracker`` package (0.1.2) ships, trained by its author to find
bright infrared marker balls in uint16 frames. The package ships no frames, so the script draws them as the package
describes its input: dark single-channel uint16 frames with sensor noise, a slow gradient and hot spots, and 1 to 8
bright round markers of varied size and blur, mapped to 8-bit with the package's own 0.1/99.9 percentile clipping.
They are stand-ins for the author's frames, not real ones; say so wherever the figures are quoted.

    pip download --no-deps ir-yolo-tracker==0.1.2 -d /tmp/irt && unzip -o /tmp/irt/*.whl -d /tmp/irt
    python -m benchmarks.real_models ir --weights /tmp/irt/ir_yolo_tracker/models/pseudo_ir_marker_ball_yolo11n.pt

``tau``: the YOLOv8n-OBB that ``tau-fibrils-yolo`` (0.2.0) ships, trained by its authors (100 epochs, 640 px) to
find tau fibrils in electron-microscopy sections, with the real 5364 x 3988 16-bit EM image it ships as its sample
(courtesy of EPFL's LBEM). The image is cast to 8-bit as the package does and cut into 640 px tiles at a 320 px
step: tiles of its left half calibrate and train, tiles of its right half are scored, so no pixel is in both.

    pip download --no-deps tau-fibrils-yolo==0.2.0 -d /tmp/tau && unzip -o /tmp/tau/*.whl -d /tmp/tau
    python -m benchmarks.real_models tau --weights /tmp/tau/tau_fibrils_yolo/model/100ep.pt \
        --image /tmp/tau/tau_fibrils_yolo/sample/sample.tif

Agreement: the unpruned model's detections at conf 0.25 on the held-out images are the labels; every pruned model
is scored against them (pycocotools mAP50-95 for boxes, the validator's rotated-IoU mAP50-95 for OBB; the unpruned
model scores about 1.0 by construction, not exactly, because it is evaluated at the validator's low confidence).
One-shot pruning uses the default recipe with the training images as calibration images; ``recover`` trains on
the same images with no labels, the unpruned model as teacher. Rows of every model gather in
``benchmarks/real_models.json`` and ``benchmarks/real_models.md``.

    python -m benchmarks.real_models {ir,tau} --weights W [--image TIF] [--minutes 10] [--targets 0.7,0.5]
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

import yoloprune as yp
from benchmarks import harness
from yoloprune.api import gflops, load_model, save_checkpoint
from yoloprune.atomic import atomic_write_text
from yoloprune.data.images import calibration_images
from yoloprune.sources import source_meta
from yoloprune.workflows.tables import markdown_table

NAMES = {"ir": "ir-yolo-tracker YOLO11n (synthetic stand-in frames)", "tau": "tau-fibrils-yolo YOLOv8n-OBB (real EM image)"}
RESULTS = harness.BENCHMARKS / "real_models.json"


def ir_frame(rng: np.random.Generator, h: int = 480, w: int = 640) -> np.ndarray:
    """One synthetic uint16 infrared frame, already mapped to 8-bit gray the way ir-yolo-tracker does."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frame = 2000 + 400 * rng.random() * (xx / w) + 300 * rng.random() * (yy / h)
    frame += rng.normal(0, 40, (h, w))
    for _ in range(rng.integers(0, 4)):  # warm, dim blobs that are not markers
        cx, cy, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 80)
        frame += rng.uniform(200, 900) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    for _ in range(rng.integers(1, 9)):  # the markers: bright, round, softly edged discs
        cx, cy = rng.uniform(20, w - 20), rng.uniform(20, h - 20)
        r, edge = rng.uniform(3, 14), rng.uniform(0.8, 2.5)
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        frame += rng.uniform(8000, 40000) / (1 + np.exp(np.minimum((d - r) / edge, 50)))
    frame = np.clip(frame, 0, 65535).astype(np.uint16)
    lo, hi = np.percentile(frame, [0.1, 99.9])
    gray = np.clip((frame.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1.0)), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def ir_frames(n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return [ir_frame(rng) for _ in range(n)], [ir_frame(rng) for _ in range(n)]


def em_tiles(tif: Path, n: int, tile: int = 640, step: int = 320) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Tiles of the left half (train) and right half (val) of the EM image, cast to 8-bit as the package does."""
    im = cv2.imread(str(tif), cv2.IMREAD_UNCHANGED)
    if im is None or im.ndim != 2:
        raise SystemExit(f"{tif}: not the package's 16-bit gray sample image")
    gray = (im.astype(np.float64) / 65535 * 255).astype(np.uint8)
    h, w = gray.shape

    def tiles(x0: int, x1: int) -> list[np.ndarray]:
        return [np.repeat(gray[y:y + tile, x:x + tile, None], 3, axis=2)
                for y in range(0, h - tile + 1, step) for x in range(x0, x1 - tile + 1, step)][:n]
    return tiles(0, w // 2), tiles(w // 2, w)


def label_lines(result) -> list[str]:
    """The unpruned model's detections as YOLO labels: boxes (class cx cy w h) or oriented boxes (4 corners)."""
    if result.obb is not None:
        return [f"{int(c)} " + " ".join(f"{v:.6f}" for v in pts.clamp(0, 1).flatten().tolist())
                for c, pts in zip(result.obb.cls.tolist(), result.obb.xyxyxyxyn, strict=True)]
    return [f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}"
            for c, (x, y, bw, bh) in zip(result.boxes.cls.tolist(), result.boxes.xywhn.tolist(), strict=True)]


def agreement_dataset(work: Path, weights: Path, imgsz: int, splits: tuple[list[np.ndarray], list[np.ndarray]]) -> Path:
    """``work/frames.yaml``: train/ (calibration and recovery, never labelled) and val/ (labelled by the unpruned
    model ``weights``: its detections at conf 0.25)."""
    work = work.resolve()  # the yaml's path: absolute, as Ultralytics resolves a relative one against its own folder
    data = work / "frames.yaml"
    if data.exists():
        return data
    from ultralytics import YOLO

    teacher = YOLO(str(weights))
    for split, images in zip(("train", "val"), splits, strict=True):
        (work / "frames" / split / "images").mkdir(parents=True, exist_ok=True)
        (work / "frames" / split / "labels").mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(images):
            img = work / "frames" / split / "images" / f"{i:04d}.png"
            cv2.imwrite(str(img), frame)
            if split == "val":
                lines = label_lines(teacher.predict(str(img), conf=0.25, imgsz=imgsz, verbose=False)[0])
                (img.parent.parent / "labels" / f"{i:04d}.txt").write_text("\n".join(lines) + "\n" * bool(lines))
    atomic_write_text(data, f"path: {work / 'frames'}\ntrain: train/images\nval: val/images\n"
                            f"names: {dict(teacher.names)}\n")
    return data


class Bench(harness.WorkFolder):
    def __init__(self, kind: str, work: Path, weights: Path, frames: int, imgsz: int | None,
                 image: Path | None = None, step: int = 320) -> None:
        super().__init__(work)
        self.kind, self.name, self.weights = kind, NAMES[kind], weights
        if kind == "tau" and step != 320:  # its own rows beside the overlapping tiles'
            self.kind, self.name = f"tau-step{step}", f"{self.name}, {frames} tiles, {step} px step"
        model, ckpt = load_model(weights)
        self.imgsz = imgsz or int((ckpt.get("train_args") or {}).get("imgsz", 640))
        self.data = self.make_dataset(ir_frames(frames) if kind == "ir" else em_tiles(image, frames, step=step))
        self.val = yp.Evaluator(str(self.data), "val", imgsz=self.imgsz)
        self.calib = calibration_images(str(self.data), self.imgsz)
        self.base_gflops = gflops(model, self.imgsz)
        self.results = harness.load_json(RESULTS)

    def make_dataset(self, splits: tuple[list[np.ndarray], list[np.ndarray]]) -> Path:
        return agreement_dataset(self.work, self.weights, self.imgsz, splits)

    def record(self, key: str, target: float, recipe: str, minutes: float, **extra) -> None:
        model, _ = load_model(self.path(key))
        v = self.val(model)
        self.rows[key] = {"model": self.name, "target": target, "recipe": recipe, "agreement": v.map50_95,
                          "gflops_ratio": gflops(model, self.imgsz) / self.base_gflops, "minutes": minutes,
                          "imgsz": self.imgsz, **extra}
        self.save()
        self.results[f"{self.kind}/{key}"] = self.rows[key]
        harness.save_json(RESULTS, self.results)
        harness.write_markdown(RESULTS.with_suffix(".md"), HEADER, table(self.results))
        print(f"{self.kind} {key}: agreement mAP50-95 {v.map50_95:.4f} ({minutes:.1f} min)", flush=True)

    def unpruned(self) -> None:
        if not self.done("unpruned"):
            self.save_unchanged("unpruned", self.weights)
            self.record("unpruned", 1.0, "unpruned", 0.0)

    def one_shot(self, target: float) -> Path:
        key = f"{target:g}-oneshot"
        if not self.done(key):
            minutes = harness.prune_to(self.weights, self.path(key), target, self.imgsz, self.calib)
            self.record(key, target, "one-shot (default recipe)", minutes)
        return self.path(key)

    def speedup(self, target: float, budget: str) -> None:
        """The default one-shot recipe at a measured speed-up on onnxruntime (one thread), with the latency budget
        (``prune --target-speedup``) or the GFLOPs target that runs as fast."""
        key = f"speedup{target:g}-{budget}"
        if self.done(key):
            return
        t0 = time.perf_counter()
        report = yp.prune(str(self.weights), config=yp.PruneConfig(imgsz=self.imgsz), calibration=self.calib,
                          target=yp.Speedup(target, budget=budget))
        search = report.speed.search
        print(search.line(), flush=True)
        save_checkpoint(report.model, self.path(key), report.ckpt, source_meta(str(self.weights)))
        self.record(key, round(search.gflops_ratio, 3), f"--target-speedup {target:g}, {budget} budget",
                    (time.perf_counter() - t0) / 60, speedup=round(search.measured, 3))

    def recover(self, target: float, minutes: float) -> None:
        key = f"{target:g}-recover{minutes:g}"
        if self.done(key):
            return
        taken, extra = harness.recover_to(self.one_shot(target), str(self.work / "frames" / "train" / "images"),
                                          self.path(key), self.imgsz, self.work / "runs", minutes,
                                          teacher=str(self.weights))
        self.record(key, target, f"one-shot + recover {minutes:g} min (no labels)", taken, **extra)


def table(rows: dict) -> str:
    cols = ["model", "imgsz", "target", "recipe", "gflops_ratio", "speedup", "agreement", "minutes", "epochs",
            "distance"]
    shown = sorted(rows.values(), key=lambda r: (r["model"], -r["target"], r["minutes"]))
    return markdown_table(shown, cols, lambda c, v: harness.fmt(v))


def main() -> None:
    ap = harness.parser(__file__, __doc__, out=False, work=True)
    ap.add_argument("kind", nargs="?", choices=sorted(NAMES))
    ap.add_argument("--weights", type=Path, help="the package's checkpoint (required unless --render-only)")
    ap.add_argument("--image", type=Path, help="tau: the package's sample.tif")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--speedups", default="", help="also one-shot at these measured speed-ups, latency against "
                    "GFLOPs budget (prune --target-speedup), e.g. 1.4")
    ap.add_argument("--frames", type=int, default=64, help="images per split")
    ap.add_argument("--step", type=int, default=320, help="tau: the tiles' step in px (640: no two tiles overlap)")
    ap.add_argument("--imgsz", type=int, default=None, help="default: the checkpoint's training size")
    args = ap.parse_args()
    if args.render_only:  # every model's rows are in RESULTS
        md = RESULTS.with_suffix(".md")
        harness.write_markdown(md, HEADER, table(harness.load_json(RESULTS)), keep_notes=True)
        print(f"{md}: re-written from {RESULTS}")
        return
    if args.kind is None or args.weights is None:
        ap.error("the following arguments are required: kind, --weights")
    if args.kind == "tau" and args.image is None:
        ap.error("tau needs --image (the package's sample/sample.tif)")
    bench = Bench(args.kind, Path(args.work) / args.kind, args.weights, args.frames, args.imgsz, args.image, args.step)
    bench.unpruned()
    for s in harness.floats(args.speedups):
        for budget in ("latency", "gflops"):
            bench.speedup(s, budget)
    targets = harness.floats(args.targets)
    for target in targets:
        bench.one_shot(target)
    if args.minutes > 0:
        for target in targets:
            bench.recover(target, args.minutes)
    print(table(bench.rows))


HEADER = ("# Models trained by someone else\n\n`python -m benchmarks.real_models {ir,tau} --weights W`: one run per "
          "model on 2 CPU cores; agreement is mAP50-95 against the unpruned model's own detections at conf 0.25 on "
          "held-out images (pycocotools for boxes, the validator's rotated IoU for OBB). The ir frames are synthetic "
          "stand-ins drawn as the package describes its input (the package ships none), so those figures say how "
          "well pruning keeps that model's behaviour on such frames, not its accuracy on the author's data. The tau "
          "images are tiles of the real EM image the package ships: left half for calibration and recover, right "
          "half scored.")


if __name__ == "__main__":
    main()
