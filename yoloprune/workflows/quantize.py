"""INT8 ONNX: onnxruntime's static QDQ quantization (per-channel weights), calibrated on unlabeled images, with
what must stay in float for accuracy found by measurement.

Quantizing every node of a detector destroys it: boxes in pixels and class probabilities share the head's one
output tensor, and one INT8 scale cannot serve both. So the head's decoding (the nodes of the last module that are
not its convolutions or their activations) stays in float first; if the INT8 file still drifts from the FP32 one
beyond tolerance on held-out calibration images, the head's output convolutions join it, then the whole head.
Drift is measured where it matters: the mean box error (as a fraction of the image size) and the mean score error
at the positions where either file scores an object above 0.25.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yoloprune.atomic import atomic_write
from yoloprune.errors import ConfigError

# mean box error at detected positions, as a fraction of the image size: on the tea-bud yolov8n at 320 px, INT8 with
# only the decoding in float drifted 0.0010 and lost 1.2 points of mAP50-95; with the output convs too, 0.0004 and none
BOX_TOLERANCE = 0.0005
SCORE_TOLERANCE = 0.03  # mean absolute score error there
CONF = 0.25  # a position counts as a detection above this score


@dataclass
class Drift:
    box: float  # mean |box difference| / image size at detected positions
    score: float  # mean |score difference| there
    positions: int

    def within(self) -> bool:
        return self.box <= BOX_TOLERANCE and self.score <= SCORE_TOLERANCE


@dataclass
class Int8Result:
    path: Path
    kept_float: str  # which candidate was chosen: "decoding", "decoding + output convs", "head"
    drift: Drift
    tried: list[tuple[str, Drift]] = field(default_factory=list)


def _head_prefix(graph) -> str:
    """The ONNX name prefix of the model's last module (Ultralytics' exporter names nodes by module path)."""
    heads = sorted({n.name.split("/")[1] for n in graph.node if n.name.startswith("/model.")},
                   key=lambda s: int(s.split(".")[1]) if s.split(".")[1].isdigit() else -1)
    if not heads:
        raise ConfigError("--int8 needs an ONNX file written by Ultralytics' exporter (node names by module path)")
    return f"/{heads[-1]}/"


def float_candidates(path: str | Path) -> list[tuple[str, list[str]]]:
    """The node sets to keep in float, from least to most: (name, node names). The decoding is every node of the
    head but its learned convolutions and their activations (a conv that reads the decoding, as the DFL's fixed
    1x1 conv over softmax probabilities, is decoding too: quantizing its input to 1/255 steps cost the tea-bud
    yolov8n 1.6 points of mAP50-95); the output convs are the head convs whose output reaches no other conv
    through activations (the 1x1 convs to boxes, scores, ...)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    prefix = _head_prefix(graph)
    head = [n for n in graph.node if n.name.startswith(prefix)]
    made_by = {o: n for n in head for o in n.output}
    read_by: dict[str, list] = {}
    for n in head:
        for i in n.input:
            read_by.setdefault(i, []).append(n)
    decoding = {n.name for n in head if n.op_type != "Conv" and "/act/" not in n.name}
    decoding |= {n.name for n in head if n.op_type == "Conv" and made_by.get(n.input[0]) is not None
                 and made_by[n.input[0]].name in decoding}

    def feeds_conv(node) -> bool:
        todo, seen = list(node.output), set()
        while todo:
            for n in read_by.get(todo.pop(), []):
                if n.op_type == "Conv":
                    return True
                if "/act/" in n.name and n.name not in seen:
                    seen.add(n.name)
                    todo += list(n.output)
        return False

    ordered = [n.name for n in head if n.name in decoding]
    outputs = [n.name for n in head if n.op_type == "Conv" and n.name not in decoding and not feeds_conv(n)]
    return [("decoding", ordered), ("decoding + output convs", ordered + outputs),
            ("head", [n.name for n in head])]


class _Reader:
    """onnxruntime's CalibrationDataReader over (N, 3, H, W) float32 images, one at a time."""

    def __init__(self, name: str, images: np.ndarray) -> None:
        self.name, self.images, self.i = name, images, 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {self.name: self.images[self.i - 1:self.i]}

    def rewind(self) -> None:
        self.i = 0


def _quantize(fp32: Path, out: Path, images: np.ndarray, exclude: list[str]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from yoloprune.speed.runtimes import ort_session

    name = ort_session(fp32).get_inputs()[0].name
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(name, images)
    quantize_static(str(fp32), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)


def drift(fp32: str | Path, int8: str | Path, images: np.ndarray, nc: int, objectness: bool = False) -> Drift:
    """Box and score drift of the INT8 file from the FP32 one on ``images`` (as ``drift_between``)."""
    from yoloprune.speed.runtimes import ort_session

    a, b = ort_session(fp32), ort_session(int8)
    name = a.get_inputs()[0].name
    return drift_between(lambda x: a.run(None, {name: x})[0], lambda x: b.run(None, {name: x})[0], images, nc,
                         objectness)


def _scores(y: np.ndarray, nc: int, objectness: bool) -> np.ndarray:
    """The class scores, (nc, anchors), of one image's output (C, anchors): rows 4.. (times row 4's objectness,
    in the original YOLOv5's layout)."""
    return y[5:5 + nc] * y[4:5] if objectness else y[4:4 + nc]


def drift_between(run_a, run_b, images: np.ndarray, nc: int, objectness: bool = False) -> Drift:
    """Box and score drift of ``run_b`` from ``run_a`` (each a batch -> its first output as an array) on
    ``images``: that output, (N, 4 + nc + extras, anchors), holds pixel boxes in its first 4 rows and ``nc`` class
    scores after them (with ``objectness``: (N, anchors, 5 + nc + extras), the original YOLOv5's, whose scores are
    objectness times class); the drift is measured where either finds a detection."""
    boxes = 4
    box_err, score_err, count = 0.0, 0.0, 0
    for i in range(len(images)):
        x = images[i:i + 1]
        ya, yb = run_a(x)[0], run_b(x)[0]  # (C, anchors); channels last with objectness
        if objectness:
            ya, yb = ya.T, yb.T
        sa, sb = _scores(ya, nc, objectness), _scores(yb, nc, objectness)
        hit = (sa.max(0) > CONF) | (sb.max(0) > CONF)
        if not hit.any():
            continue
        box_err += float(np.abs(ya[:boxes, hit] - yb[:boxes, hit]).mean() / max(x.shape[-2:])) * hit.sum()
        score_err += float(np.abs(sa[:, hit] - sb[:, hit]).max(0).mean()) * hit.sum()
        count += int(hit.sum())
    return Drift(box_err / max(count, 1), score_err / max(count, 1), count)


def quantize_int8(fp32: str | Path, out: str | Path, images: np.ndarray, nc: int,
                  objectness: bool = False, kept_float: str | None = None) -> Int8Result:
    """Write ``out``, an INT8 (QDQ) copy of the ONNX file ``fp32`` calibrated on ``images`` ((N, 3, H, W) float32 in
    [0, 1]; ``objectness``: the original YOLOv5's output layout, as ``drift_between``): the least float that keeps its
    drift within tolerance on the last quarter of the images (the rest calibrate), else the whole head in float; with
    ``kept_float``, that candidate only, its drift measured. Returns which, and the drift of each candidate tried."""
    if len(images) < 4:
        raise ConfigError(f"INT8 calibration needs at least 4 images, got {len(images)}")
    held = images[-max(2, len(images) // 4):]
    calib = images[:len(images) - len(held)]
    tried: list[tuple[str, Drift]] = []
    with tempfile.TemporaryDirectory(prefix="yoloprune-int8-") as tmp:
        candidates = [(w, e) for w, e in float_candidates(fp32) if kept_float in (None, w)]
        if not candidates:
            raise ConfigError(f"no INT8 candidate named {kept_float!r}")
        for k, (what, exclude) in enumerate(candidates):  # the last (whole head) is kept regardless
            path = Path(tmp) / f"{k}.onnx"
            _quantize(Path(fp32), path, calib, exclude)
            tried.append((what, drift(fp32, path, held, nc, objectness)))
            if tried[-1][1].within():
                break
        written = atomic_write(out, lambda t: Path(t).write_bytes(path.read_bytes()))
    return Int8Result(written, *tried[-1], tried)


__all__ = ["BOX_TOLERANCE", "SCORE_TOLERANCE", "Drift", "Int8Result", "drift", "drift_between", "float_candidates",
           "quantize_int8"]
