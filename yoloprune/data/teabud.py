"""Seeded tea-bush scene generator: dark glossy canopy, small tender shoots to detect, look-alike distractors.

Two classes modelled on plucking grades: ``bud`` (a single unopened bud) and ``bud_leaf`` (a bud with one or two
young leaves). Scenes are rendered at twice the output size and area-downsampled, so small objects are
anti-aliased like real optics. Boxes are the tight box of each object's *visible* pixels after occlusion.
The same seed gives the same pixels and labels: every image draws from its own ``default_rng((seed, split, i))``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from yoloprune.atomic import atomic_write_bytes, atomic_write_text

CLASSES: tuple[str, ...] = ("bud", "bud_leaf")
SPLITS: tuple[str, ...] = ("train", "val", "test")
TASKS: tuple[str, ...] = ("detect", "segment", "pose")
KPT_SHAPE = (1, 3)  # pose labels: one keypoint, the picking point, with visibility
# OKS sigma of the picking point, for Ultralytics' pose loss and validator and for pycocotools. Their default for a
# keypoint set that is not COCO's 17 is 1 / n_keypoints, 1.0 here, which still scores a point one box side away from
# the truth 0.79: a box metric. At 0.1 (COCO's body sigmas run 0.025-0.107) OKS falls to 0.5 about 4 px from the
# truth on a 20 x 30 px shoot, the precision a cutting robot needs.
KPT_OKS_SIGMA = 0.1
_SS = 2  # supersampling factor


@dataclass
class TeaBudConfig:
    """What to generate and where."""

    out: Path
    seed: int = 0
    n_train: int = 400
    n_val: int = 100
    n_test: int = 100
    imgsz: int = 320
    task: str = "detect"  # detect: boxes; segment: + instance polygons; pose: + the picking point (see below)

    def counts(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}


@dataclass
class _Obj:
    cls: int  # -1 for distractors and occluders
    mask: np.ndarray  # bool, supersampled canvas
    pick: tuple[float, float] | None = None  # picking point (the stem's base), supersampled canvas


@dataclass(eq=False)
class Label:
    """One labelled object, in output pixels: its visible box, the outline of its visible pixels (a polygon of
    points on the boundary pixels, all inside the box) and its picking point (x, y, v): v = 2 visible, 1 hidden
    under a leaf but inside the box, 0 unlabelled (outside the visible box; x = y = 0, Ultralytics' convention)."""

    cls: int
    box: tuple[float, float, float, float]
    polygon: np.ndarray  # (N, 2), N >= 3
    keypoint: tuple[float, float, int]


def _hsv_to_bgr(h: float, s: float, v: float) -> np.ndarray:
    px = np.uint8([[[int(h) % 180, int(np.clip(s, 0, 255)), int(np.clip(v, 0, 255))]]])
    return cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _leaf_polygon(cx: float, cy: float, length: float, width: float, angle: float, serr: float) -> np.ndarray:
    """Leaf outline centred on (cx, cy): pointed tip, rounded base, optionally serrated edge."""
    t = np.linspace(0.0, 1.0, 28)
    half = 0.5 * width * np.sin(np.pi * t) ** 0.75 * (1.0 - 0.25 * t)
    half = half * (1.0 + serr * np.abs(np.sin(t * 60.0)))
    along = (t - 0.5) * length
    pts = np.concatenate([np.stack([along, half], 1), np.stack([along[::-1], -half[::-1]], 1)])
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]], dtype=np.float64)
    return (pts @ rot.T + np.array([cx, cy])).astype(np.int32)


def _tip(cx: float, cy: float, length: float, angle: float) -> tuple[float, float]:
    return cx + length * math.cos(angle), cy + length * math.sin(angle)


def _fill(canvas: np.ndarray, poly: np.ndarray, color: np.ndarray, shade: float = 0.25) -> np.ndarray:
    """Fill a polygon with a colour that darkens towards one edge (curvature), return its mask."""
    h, w = canvas.shape[:2]
    x, y, bw, bh = cv2.boundingRect(poly)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)
    mask = np.zeros((h, w), np.uint8)
    if x1 <= x0 or y1 <= y0:
        return mask.astype(bool)
    cv2.fillPoly(mask, [poly], 1)
    roi = mask[y0:y1, x0:x1].astype(bool)
    gy = np.linspace(1.0 - shade, 1.0 + shade * 0.5, y1 - y0, dtype=np.float32)[:, None]
    gx = np.linspace(1.0, 1.0 - shade * 0.5, x1 - x0, dtype=np.float32)[None, :]
    region = canvas[y0:y1, x0:x1]
    region[roi] = (color[None, None, :] * (gy * gx)[..., None])[roi]
    return mask.astype(bool)


def _blurred_layer(canvas: np.ndarray, polys: list, sigma: float, amount: float, clip: np.ndarray | None = None):
    """Blend a blurred polygon layer into its region of the canvas: amount < 0 darkens (factor), > 0 adds light."""
    h, w = canvas.shape[:2]
    pad = int(3 * sigma) + 1
    x, y, bw, bh = cv2.boundingRect(np.concatenate(polys))
    x0, y0, x1, y1 = max(x - pad, 0), max(y - pad, 0), min(x + bw + pad, w), min(y + bh + pad, h)
    if x1 <= x0 or y1 <= y0:
        return
    layer = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.fillPoly(layer, [p - np.int32([x0, y0]) for p in polys], 1.0)
    layer = cv2.GaussianBlur(layer, (0, 0), sigma)
    if clip is not None:
        layer *= clip[y0:y1, x0:x1]
    region = canvas[y0:y1, x0:x1]
    if amount < 0:
        region *= (1.0 + amount * layer)[..., None]
    else:
        region += (amount * layer)[..., None]


def _mature_leaf(canvas: np.ndarray, rng: np.random.Generator, cx: float, cy: float, scale: float) -> np.ndarray:
    length = rng.uniform(60, 150) * scale
    width = length * rng.uniform(0.32, 0.48)
    ang = rng.uniform(0, 2 * np.pi)
    poly = _leaf_polygon(cx, cy, length, width, ang, serr=rng.uniform(0.0, 0.06))
    # cast shadow: darken an offset copy underneath
    off = rng.uniform(3, 9) * scale
    _blurred_layer(canvas, [poly + np.int32([off, off])], 4 * scale, -0.45)
    yellowish = rng.random() < 0.05  # old sunlit leaves overlap with the shoots' colour range
    hue = rng.uniform(33, 42) if yellowish else rng.uniform(40, 58)
    val = rng.uniform(100, 150) if yellowish else rng.uniform(40, 100)
    color = _hsv_to_bgr(hue, rng.uniform(120, 230), val)
    mask = _fill(canvas, poly, color, shade=rng.uniform(0.15, 0.4))
    # midrib, lateral veins and a glossy highlight
    x0, y0 = _tip(cx, cy, -0.45 * length, ang)
    x1, y1 = _tip(cx, cy, 0.45 * length, ang)
    vein = tuple(float(c) for c in np.clip(color * 1.35 + 15, 0, 255))
    cv2.line(canvas, (int(x0), int(y0)), (int(x1), int(y1)), vein, max(1, int(1.5 * scale)), cv2.LINE_AA)
    for k in np.linspace(-0.3, 0.3, int(rng.integers(3, 6))):
        bx, by = _tip(cx, cy, k * length, ang)
        for side in (-1, 1):
            ex, ey = _tip(bx, by, 0.3 * width, ang + side * 1.0)
            cv2.line(canvas, (int(bx), int(by)), (int(ex), int(ey)), vein, 1, cv2.LINE_AA)
    if rng.random() < 0.7:
        hx, hy = _tip(cx, cy, rng.uniform(-0.2, 0.2) * length, ang)
        gloss = cv2.ellipse2Poly((int(hx), int(hy)), (int(0.25 * length), max(1, int(0.07 * length))),
                                 int(math.degrees(ang)), 0, 360, 10)
        _blurred_layer(canvas, [gloss], 3 * scale, rng.uniform(35, 80), clip=mask)
    return mask


def _young_leaf(canvas, rng, bx, by, length, ang, hue) -> np.ndarray:
    poly = _leaf_polygon(*_tip(bx, by, length / 2, ang), length, length * rng.uniform(0.38, 0.5), ang, serr=0.04)
    color = _hsv_to_bgr(hue + rng.uniform(-3, 3), rng.uniform(120, 210), rng.uniform(175, 240))
    return _fill(canvas, poly, color, shade=0.2)


def _bud(canvas, rng, bx, by, length, ang, hue) -> np.ndarray:
    """An unopened bud: a narrow spindle, paler and hairy (silvery) towards the tip."""
    cx, cy = _tip(bx, by, length / 2, ang)
    poly = _leaf_polygon(cx, cy, length, length * rng.uniform(0.3, 0.42), ang, serr=0.0)
    color = _hsv_to_bgr(hue, rng.uniform(100, 190), rng.uniform(195, 250))
    mask = _fill(canvas, poly, color, shade=0.15)
    hairs = int(length // 3)
    for _ in range(hairs):
        t = rng.uniform(0.3, 0.95)
        px, py = _tip(bx, by, t * length, ang)
        r = max(1, int(length * 0.03))
        cv2.circle(canvas, (int(px + rng.normal(0, length * 0.06)), int(py + rng.normal(0, length * 0.06))), r,
                   (225, 240, 235), -1, cv2.LINE_AA)
    return mask


def _shoot(canvas, rng, x, y, cls: int, scale: float) -> tuple[np.ndarray, tuple[float, float]]:
    """Draw a labelled shoot (bud or bud with 1-2 young leaves) with its stem; return its full mask and the stem's
    base, where a picker cuts."""
    ang = rng.uniform(-np.pi, np.pi)
    bud_len = rng.uniform(14, 30) * scale if cls == 0 else rng.uniform(14, 28) * scale
    hue = rng.uniform(28, 45)  # light green to yellow-green
    stem_len = rng.uniform(0.2, 0.5) * bud_len
    sx, sy = _tip(x, y, -stem_len, ang)
    mask = np.zeros(canvas.shape[:2], np.uint8)
    stem_col = tuple(float(c) for c in _hsv_to_bgr(hue + 5, 150, 120))
    thick = max(1, int(0.12 * bud_len))
    cv2.line(canvas, (int(sx), int(sy)), (int(x), int(y)), stem_col, thick, cv2.LINE_AA)
    cv2.line(mask, (int(sx), int(sy)), (int(x), int(y)), 1, thick)
    full = mask.astype(bool)
    if cls == 1:
        for side in rng.permutation([-1, 1])[: int(rng.integers(1, 3))]:
            leaf_len = bud_len * rng.uniform(0.8, 1.4)
            full |= _young_leaf(canvas, rng, x, y, leaf_len, ang + side * rng.uniform(0.45, 1.0), hue)
    full |= _bud(canvas, rng, x, y, bud_len, ang, hue)
    return full, (sx, sy)


def _lighting(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uneven sunlight and shade: a smooth random gain field, sun flecks and a colour cast."""
    h, w = canvas.shape[:2]
    coarse = rng.uniform(0.5, 1.3, size=(4, 4)).astype(np.float32)
    gain = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    flecks = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(0, 5))):
        c = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        axes = (int(rng.uniform(20, 90)), int(rng.uniform(15, 60)))
        cv2.ellipse(flecks, c, axes, rng.uniform(0, 180), 0, 360, float(rng.uniform(0.2, 0.6)), -1)
    gain += cv2.GaussianBlur(flecks, (0, 0), 15)
    cast = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    return canvas * gain[..., None] * cast[None, None, :] * rng.uniform(0.8, 1.2)


def _degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Optics and sensor: defocus or motion blur, noise. JPEG artefacts come at encoding."""
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0))
    elif rng.random() < 0.2:
        k = int(rng.integers(3, 6))
        kern = np.zeros((k, k), np.float32)
        kern[k // 2, :] = 1.0 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
        kern = cv2.warpAffine(kern, rot, (k, k))
        img = cv2.filter2D(img, -1, kern / max(kern.sum(), 1e-6))
    img = img + rng.normal(0, rng.uniform(1.0, 5.0), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _outline(small: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The largest outer contour of a visible mask (output pixels): boundary pixel centres, so inside the box. A
    shoot cut in pieces by an occluder keeps its largest piece's outline; fewer than 3 points give the box."""
    contours, _ = cv2.findContours(small.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    best = max(contours, key=cv2.contourArea).reshape(-1, 2) if contours else np.empty((0, 2))
    if len(best) < 3:
        x1, y1, x2, y2 = box
        return np.array([[x1, y1], [x2 - 1, y1], [x2 - 1, y2 - 1], [x1, y2 - 1]], np.float64)
    return best.astype(np.float64)


def _covered(pick: tuple[float, float] | None, cover: np.ndarray) -> bool:
    """Whether something in front covers the picking point (supersampled canvas, clamped to it)."""
    if pick is None:
        return False
    h, w = cover.shape
    return bool(cover[min(max(int(pick[1]), 0), h - 1), min(max(int(pick[0]), 0), w - 1)])


def _picking_point(pick: tuple[float, float], hidden: bool, box: tuple[float, float, float, float]
                   ) -> tuple[float, float, int]:
    """The stem base in output pixels with its visibility, or (0, 0, 0) when it lies outside the visible box."""
    x, y = pick[0] / _SS, pick[1] / _SS
    x1, y1, x2, y2 = box
    if not (x1 <= x <= x2 and y1 <= y <= y2):
        return 0.0, 0.0, 0
    return x, y, 1 if hidden else 2


def _visible_labels(objs: list[_Obj], cover: np.ndarray, imgsz: int) -> list[Label]:
    """Tight boxes (pixels, output scale) of what remains visible of each labelled object after occlusion, with
    the outline of those pixels and the picking point."""
    labels = []
    for obj in reversed(objs):
        vis = obj.mask & ~cover
        hidden = _covered(obj.pick, cover)  # by what lies in front: occluders and later objects
        cover |= obj.mask
        if obj.cls < 0 or vis.sum() < 0.3 * obj.mask.sum():
            continue
        small = cv2.resize(vis.astype(np.float32), (imgsz, imgsz), interpolation=cv2.INTER_AREA) >= 0.5
        ys, xs = np.nonzero(small)
        if len(xs) == 0 or xs.max() - xs.min() + 1 < 3 or ys.max() - ys.min() + 1 < 3:
            continue
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        labels.append(Label(obj.cls, box, _outline(small, box), _picking_point(obj.pick, hidden, box)))
    return labels[::-1]


def render_scene(rng: np.random.Generator, imgsz: int = 320) -> tuple[np.ndarray, list[Label]]:
    """Render one scene. Returns (BGR uint8 image, its labels in output pixels)."""
    size, scale = imgsz * _SS, _SS * imgsz / 320
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = _hsv_to_bgr(rng.uniform(40, 60), rng.uniform(120, 220), rng.uniform(15, 45))
    for _ in range(int(rng.integers(35, 60))):  # back canopy
        _mature_leaf(canvas, rng, rng.uniform(0, size), rng.uniform(0, size), scale)
    centers = rng.uniform(0.15 * size, 0.85 * size, size=(int(rng.integers(1, 4)), 2))
    objs: list[_Obj] = []
    for _ in range(int(rng.integers(3, 15))):
        cx, cy = centers[rng.integers(len(centers))] + rng.normal(0, rng.uniform(15, 55) * scale, 2)
        cx, cy = float(np.clip(cx, 0, size - 1)), float(np.clip(cy, 0, size - 1))
        r = rng.random()
        if r < 0.12:  # young leaf without a bud: a look-alike distractor
            hue = rng.uniform(28, 45)
            leaf = _young_leaf(canvas, rng, cx, cy, rng.uniform(10, 24) * scale, rng.uniform(-np.pi, np.pi), hue)
            objs.append(_Obj(-1, leaf))
        else:
            cls = 0 if r < 0.52 else 1
            objs.append(_Obj(cls, *_shoot(canvas, rng, cx, cy, cls, scale)))
    cover = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(0, 4))):  # front leaves partially occluding shoots
        cx, cy = centers[rng.integers(len(centers))] + rng.normal(0, 60 * scale, 2)
        cover |= _mature_leaf(canvas, rng, float(cx), float(cy), 0.6 * scale)
    canvas = _lighting(canvas, rng)
    img = cv2.resize(np.clip(canvas, 0, 255), (imgsz, imgsz), interpolation=cv2.INTER_AREA)
    return _degrade(img, rng), _visible_labels(objs, cover, imgsz)


def yolo_lines(labels: list[Label], imgsz: int, task: str = "detect") -> str:
    """Ultralytics label rows: ``cls cx cy w h`` (detect), ``cls x1 y1 x2 y2 ...`` (segment), ``cls cx cy w h px py
    v`` (pose), normalised."""
    rows = []
    for lab in labels:
        x1, y1, x2, y2 = lab.box
        cx, cy, w, h = (x1 + x2) / 2 / imgsz, (y1 + y2) / 2 / imgsz, (x2 - x1) / imgsz, (y2 - y1) / imgsz
        if task == "segment":
            rows.append(f"{lab.cls} " + " ".join(f"{v / imgsz:.6f}" for v in lab.polygon.reshape(-1)))
        elif task == "pose":
            px, py, v = lab.keypoint
            rows.append(f"{lab.cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {px / imgsz:.6f} {py / imgsz:.6f} {v}")
        else:
            rows.append(f"{lab.cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return "".join(r + "\n" for r in rows)


def render_image(seed: int, split: str, index: int, imgsz: int = 320) -> tuple[bytes, list[Label]]:
    """Deterministic JPEG bytes and labels for image `index` of `split`."""
    rng = np.random.default_rng((seed, SPLITS.index(split), index))
    img, boxes = render_scene(rng, imgsz)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(55, 92))])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes(), boxes


def generate(cfg: TeaBudConfig) -> Path:
    """Write images, YOLO labels, COCO ground truth and the data yaml under ``cfg.out``. Returns the yaml path."""
    from yoloprune.data.coco import yolo_split_to_coco

    root = Path(cfg.out)
    for split, n in cfg.counts().items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            jpg, labels = render_image(cfg.seed, split, i, cfg.imgsz)
            atomic_write_bytes(root / "images" / split / f"{split}_{i:04d}.jpg", jpg)
            atomic_write_text(root / "labels" / split / f"{split}_{i:04d}.txt",
                              yolo_lines(labels, cfg.imgsz, cfg.task))
        if split != "train" and n:
            coco = yolo_split_to_coco(root / "images" / split, root / "labels" / split, CLASSES,
                                      KPT_SHAPE if cfg.task == "pose" else None)
            atomic_write_text(root / "annotations" / f"instances_{split}.json", json.dumps(coco))
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES))
    what = {"detect": "detection", "segment": "instance segmentation", "pose": "picking-point (pose)"}[cfg.task]
    yaml_text = (
        f"# Tea-bud-style {what} data written by `yoloprune make-data`; paths are relative to this file.\n"
        f"# seed: {cfg.seed}\n"
        f"train: {root.name}/images/train\nval: {root.name}/images/val\ntest: {root.name}/images/test\n"
        + ("# one keypoint: the picking point, the base of the shoot's stem (x, y, visibility)\n"
           f"kpt_shape: {list(KPT_SHAPE)}\nflip_idx: [0]\nkpt_oks_sigmas: [{KPT_OKS_SIGMA}]\n" if cfg.task == "pose" else "")
        + f"names:\n{names}"
    )
    yaml_path = root.parent / f"{root.name}.yaml"
    atomic_write_text(yaml_path, yaml_text)
    return yaml_path
