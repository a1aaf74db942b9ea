"""ONNX export of a (pruned) detector through the Ultralytics exporter, checked with onnxruntime.

The exporter runs on a private copy of the checkpoint in a temp folder, so nothing is written beside the user's
files, and the ONNX file is moved into place atomically. The check feeds real letterboxed images from the data
to PyTorch and to onnxruntime and compares the raw head outputs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from yoloprune import sources
from yoloprune.data.images import letterboxed_images
from yoloprune.errors import ConfigError, YoloPruneError
from yoloprune.speed.runtimes import ort_session, paired_onnx_latency
from yoloprune.workflows.quantize import SCORE_TOLERANCE


class ParityError(YoloPruneError):
    """The exported graph does not compute what the PyTorch model computes."""


@dataclass
class ExportConfig:
    model: str
    out: str
    imgsz: int = 320
    dynamic: bool = False
    simplify: bool = False
    data: str | None = None  # images for the parity check (default: random images)
    split: str = "val"
    images: int = 8
    tolerance: float = 1e-3  # max error allowed: boxes as a fraction of the image size, scores absolute
    baseline: str | None = None  # unpruned model whose export's latency is measured beside this one
    latency_runs: int = 30
    latency_threads: int = 1
    format: str = "onnx"  # or another runtime's: openvino, ncnn (a folder at out; needs that runtime's package)
    int8: bool = False  # also write <out stem>.int8.onnx: static INT8, calibrated on calib_data
    calib_data: str | None = None  # data yaml or image folder (default: data, else the model's training data)
    calib_images: int = 64


@dataclass
class ExportResult:
    path: Path
    max_rel_err: float
    images: int
    latency_s: float
    baseline_latency_s: float | None = None
    size_bytes: int = 0
    inputs: str = "images"
    int8: object | None = None  # quantize.Int8Result
    int8_latency_s: float | None = None
    runtime: str = "onnxruntime"
    runtime_drift: object | None = None  # quantize.Drift of another runtime's INT8 export from PyTorch

    def table(self) -> str:
        if self.runtime != "onnxruntime":
            return "\n".join([f"exported {self.path} ({self.size_bytes / 1e6:.2f} MB)",
                               f"{self.runtime} vs PyTorch on {self.images} {self.inputs}: max error "
                               f"{self.max_rel_err:.2e} (pixel coordinates / image size, the rest absolute)",
                               f"{self.runtime} CPU latency through Ultralytics' AutoBackend, batch 1 (median): "
                               f"{self.latency_s * 1e3:.2f} ms"] + ([
                               f"INT8 drift from PyTorch at {self.runtime_drift.positions} detected positions: boxes "
                               f"{self.runtime_drift.box:.5f} of the image size, scores {self.runtime_drift.score:.4f}"]
                               if self.runtime_drift is not None else []))
        return self._onnx_table()

    def _onnx_table(self) -> str:
        rows = [f"exported {self.path} ({self.size_bytes / 1e6:.2f} MB)",
                f"onnxruntime vs PyTorch on {self.images} {self.inputs}: max error {self.max_rel_err:.2e} "
                "(pixel coordinates / image size, the rest absolute)",
                f"onnxruntime CPU latency, batch 1, 1 thread (median): {self.latency_s * 1e3:.2f} ms"]
        if self.baseline_latency_s:
            rows.append(f"unpruned baseline: {self.baseline_latency_s * 1e3:.2f} ms "
                        f"(speedup {self.baseline_latency_s / self.latency_s:.2f}x)")
        if self.int8 is not None:
            d = self.int8.drift
            rows.append(f"INT8 {self.int8.path}: {self.int8_latency_s * 1e3:.2f} ms "
                        f"({self.latency_s / self.int8_latency_s:.2f}x the FP32 file), {self.int8.kept_float} kept in "
                        f"float; drift from FP32 at {d.positions} detected positions: boxes {d.box:.5f} of the image "
                        f"size, scores {d.score:.4f}")
        return "\n".join(rows)


def export_onnx(model, out: str | Path, imgsz: int = 320, dynamic: bool = False, simplify: bool = False) -> Path:
    """Export ``model`` (checkpoint path, YOLO or DetectionModel) to ONNX at ``out`` via Ultralytics' exporter."""
    if simplify and importlib.util.find_spec("onnxslim") is None:
        raise ConfigError("--simplify needs the onnxslim package (pip install onnxslim); nothing is installed at run time")
    net, ckpt = sources.load_model(model)
    return sources.adapter_for(net).export_onnx(net, ckpt, out, imgsz, dynamic, simplify)


def _images(data: str | None, split: str, n: int, imgsz: int) -> list[np.ndarray]:
    """Batches of one letterboxed image from the data (or seeded random images)."""
    if data is None:
        rng = np.random.default_rng(0)
        return [rng.random((1, 3, imgsz, imgsz), dtype=np.float32) for _ in range(n)]
    return [x[None] for x in letterboxed_images(data, split, n, imgsz)]


def parity(onnx_path: str | Path, model, inputs: list[np.ndarray]) -> float:
    """Worst error of the exported outputs against PyTorch's, on the scale each channel lives on: pixel coordinates
    (boxes, keypoints) relative to the image size, everything else (scores, class index, mask coefficients and
    prototypes, angles, class probabilities) absolute. So tiny class scores of a weak model are not judged by a
    relative error, and a tampered weight, which moves boxes by pixels or scores by more than 1e-3, still fails."""
    sess = ort_session(onnx_path)
    name = sess.get_inputs()[0].name
    return _worst_error(onnx_path, lambda x: sess.run(None, {name: x}), model, inputs)


@torch.no_grad()
def _worst_error(where, run, model, inputs: list[np.ndarray], first_only: bool = False) -> float:
    """The worst error (as ``parity`` says) of ``run`` (an input batch -> its outputs as arrays) against the model's
    contract outputs; ``first_only``: compare the first output alone."""
    net, _ = sources.load_model(model)
    net = net.float().eval()
    adapter = sources.adapter_for(net)
    layout = adapter.output_layout(net)[:1 if first_only else None]  # per output: channel axis, pixel channels
    worst = 0.0
    for x in inputs:
        refs = [t.numpy() for t in adapter.contract_outputs(net, net(torch.from_numpy(x)))]
        gots = run(x)
        if len(gots) != len(layout):
            raise ParityError(f"{where}: {len(gots)} outputs where the model's task exports {len(layout)}")
        for (axis, pixels), ref, got in zip(layout, refs, gots, strict=False):
            worst = max(worst, _scaled_error(where, got, ref, axis, pixels, max(x.shape[-2:])))
    return worst


def _scaled_error(where, got: np.ndarray, ref: np.ndarray, axis: int, pixels: list[int], size: int) -> float:
    """The worst error of one output: pixel channels relative to the image size, the rest absolute."""
    if got.shape != ref.shape:
        raise ParityError(f"{where}: output shape {got.shape} differs from PyTorch's {ref.shape}")
    diff = np.moveaxis(np.abs(got - ref), axis, -1)
    scale = np.ones(diff.shape[-1], dtype=np.float32)
    scale[pixels] = size
    return float((diff / scale).max())


# The packages each other runtime's export and inference need (pip names), beside Ultralytics
RUNTIMES = {"openvino": ["openvino"], "ncnn": ["ncnn", "pnnx"]}
# Other runtimes may compute in reduced precision by default: OpenVINO's CPU plugin runs bfloat16 where the CPU has
# it (this machine's EPYC: worst error 0.055 of the image size or absolute, on the tea-bud yolov8n). The check
# allows that, and still catches a broken export (wrong weights or layout move boxes by far more).
RUNTIME_TOLERANCE = 0.1
# Another runtime's INT8 export (OpenVINO: NNCF, the head in float) is judged by its drift at detected positions:
# mean box error up to 0.002 of the image size (0.6 px at 320; the tea-bud yolov8n at 160 px drifted 0.0006) and
# the INT8 ONNX file's score tolerance
RUNTIME_INT8_BOX = 0.002


def _runtime_parity(folder: Path, model, inputs: list[np.ndarray], int8: bool = False) -> tuple[float, float, object]:
    """Worst error (as ``parity``) of an exported folder run by its source's runner (Ultralytics' AutoBackend, first
    output), its median latency, and (``int8``) its drift from PyTorch at detected positions (``quantize.Drift``)."""
    from yoloprune.speed.timing import median_seconds
    from yoloprune.workflows.quantize import drift_between

    net, _ = sources.load_model(model)
    net = net.float().eval()
    adapter = sources.adapter_for(net)
    backend = adapter.exported_runner(folder)
    worst = _worst_error(folder, lambda x: [backend(torch.from_numpy(x)).numpy()], net, inputs, first_only=True)
    drift = None
    if int8:
        with torch.no_grad():
            drift = drift_between(lambda x: adapter.contract_outputs(net, net(torch.from_numpy(x)))[0].numpy(),
                                  lambda x: backend(torch.from_numpy(x)).numpy(), np.concatenate(inputs),
                                  len(net.names))
    x = torch.from_numpy(inputs[0])
    return worst, median_seconds(lambda: backend(x), 20), drift


def _runtime_calibration(cfg: ExportConfig, net, tmp: Path) -> tuple[str, float]:
    """A data yaml whose train split calibrates another runtime's INT8 quantization, and the fraction of it that
    makes ``cfg.calib_images`` images: the calibration data's own yaml, or one written under ``tmp`` for a folder of
    images (no labels are read)."""
    from yoloprune.data.images import image_folder, is_image_folder
    from yoloprune.data.spec import load_data

    check_int8_head(net)
    source = _calibration_source(cfg)
    if is_image_folder(source):
        import yaml

        files, names = image_folder(source, sys.maxsize), net.names
        folder = str(files[0].parent.resolve())
        yaml_path = tmp / "calibration.yaml"
        yaml_path.write_text(yaml.safe_dump({"train": folder, "val": folder, "names": dict(
            names.items() if isinstance(names, dict) else enumerate(names))}))
        return str(yaml_path), min(1.0, cfg.calib_images / len(files))
    n = len(load_data(source, "train").files("train"))
    return str(source), min(1.0, cfg.calib_images / max(n, 1))


def _export_runtime(cfg: ExportConfig) -> ExportResult:
    suffix = f"_{cfg.format}_model"
    if not Path(cfg.out).name.endswith(suffix):
        raise ConfigError(f"--out for --format {cfg.format} must be a folder name ending in {suffix} (Ultralytics "
                          f"recognises the format by it), e.g. {Path(cfg.out).stem}{suffix}")
    missing = [m for m in RUNTIMES[cfg.format] if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"--format {cfg.format} needs {' and '.join(missing)}: pip install {' '.join(missing)} "
                          "(nothing is installed at run time)")
    if cfg.int8 and importlib.util.find_spec("nncf") is None:
        raise ConfigError("--format openvino --int8 quantizes with NNCF: pip install nncf (or yoloprune[openvino]); "
                          "nothing is installed at run time")
    net, ckpt = sources.load_model(cfg.model)
    with tempfile.TemporaryDirectory(prefix="yoloprune-calib-") as tmp:
        calib = _runtime_calibration(cfg, net, Path(tmp)) if cfg.int8 else (None, 1.0)
        path = sources.adapter_for(net).export_format(net, ckpt, cfg.out, cfg.imgsz, cfg.format, *calib)
    err, lat, drift = _runtime_parity(path, cfg.model, _images(cfg.data, cfg.split, cfg.images, cfg.imgsz), cfg.int8)
    if drift is not None:  # INT8: judged where it detects, as export --int8 judges its ONNX copy
        if not drift.positions:
            raise ParityError(f"{path}: the model detects nothing on the check images, so its INT8 drift cannot be "
                              "judged: give --data with images it detects objects in")
        if not (drift.box <= RUNTIME_INT8_BOX and drift.score <= SCORE_TOLERANCE):
            raise ParityError(f"{path}: INT8 {cfg.format} drifts from PyTorch by {drift.box:.5f} of the image size "
                              f"(boxes) and {drift.score:.4f} (scores) at {drift.positions} detected positions, "
                              f"above {RUNTIME_INT8_BOX:g} / {SCORE_TOLERANCE:g}")
    elif not err <= max(cfg.tolerance, RUNTIME_TOLERANCE):
        raise ParityError(f"{path}: {cfg.format} differs from PyTorch by {err:.2e}, above {RUNTIME_TOLERANCE:g}")
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    what = f"letterboxed {cfg.split} images" if cfg.data else "random arrays (give --data for real images)"
    return ExportResult(path, err, cfg.images, lat, None, size, what,
                        runtime=cfg.format + (" INT8" if cfg.int8 else ""), runtime_drift=drift)


def export(cfg: ExportConfig) -> ExportResult:
    """Export, check against PyTorch on real images (ParityError above tolerance), and time it."""
    if cfg.format != "onnx":
        if cfg.format not in RUNTIMES:
            raise ConfigError(f"unknown --format {cfg.format!r}; choose onnx, {', '.join(RUNTIMES)}")
        if (cfg.int8 and cfg.format != "openvino") or cfg.baseline or cfg.dynamic:
            raise ConfigError(f"--baseline and --dynamic are for ONNX, --int8 for ONNX and OpenVINO, not --format "
                              f"{cfg.format}")
        return _export_runtime(cfg)
    path = export_onnx(cfg.model, cfg.out, cfg.imgsz, cfg.dynamic, cfg.simplify)
    err = parity(path, cfg.model, _images(cfg.data, cfg.split, cfg.images, cfg.imgsz))
    if not err <= cfg.tolerance:
        raise ParityError(f"{path}: onnxruntime differs from PyTorch by {err:.2e} (pixel coordinates / image size, the rest absolute), "
                          f"above {cfg.tolerance:g}")
    int8 = _int8(cfg, path) if cfg.int8 else None
    with tempfile.TemporaryDirectory(prefix="yoloprune-export-") as tmp:
        paths = [path] + ([export_onnx(cfg.baseline, Path(tmp) / "baseline.onnx", cfg.imgsz)] if cfg.baseline else [])
        times = paired_onnx_latency(paths + ([int8.path] if int8 else []), cfg.imgsz, cfg.latency_runs,
                                    cfg.latency_threads)
    lat, base = times[0], (times[1] if cfg.baseline else None)
    what = f"letterboxed {cfg.split} images" if cfg.data else "random arrays (give --data for real images)"
    return ExportResult(path, err, cfg.images, lat, base, os.path.getsize(path), what, int8,
                        times[-1] if int8 else None)


def int8_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".int8.onnx")


def _int8(cfg: ExportConfig, fp32: Path):
    """The INT8 copy of the exported file, calibrated on the calibration images (quantize.quantize_int8)."""
    from yoloprune.data.images import calibration_images
    from yoloprune.workflows.quantize import quantize_int8

    net, _ = sources.load_model(cfg.model)
    objectness = check_int8_head(net)
    images = calibration_images(_calibration_source(cfg), cfg.imgsz, cfg.calib_images).numpy().astype(np.float32)
    return quantize_int8(fp32, int8_path(cfg.out), images, nc=len(net.names), objectness=objectness)


def _calibration_source(cfg: ExportConfig) -> str:
    """INT8 calibration images: ``--calib-data``, else ``--data``, else the checkpoint's recorded training data."""
    from yoloprune.data.images import recorded_train_images

    source = cfg.calib_data or cfg.data or recorded_train_images(cfg.model)[0]
    if source is None:
        raise ConfigError("--int8 needs calibration images: give --calib-data (a folder of a few dozen of your "
                          "images, or a data yaml)")
    return str(source)


def check_int8_head(net) -> bool:
    """Refuse INT8 for a model whose first output is not (batch, 4 boxes + classes + extras, anchors), or the
    original YOLOv5's (batch, anchors, 4 boxes + objectness + classes + extras): the layouts the drift checks read.
    Returns whether it is the latter (``Adapter.objectness``)."""
    adapter = sources.adapter_for(net)
    axis, pixels = adapter.output_layout(net)[0]
    objectness = adapter.objectness(net)
    if adapter.task(net) == "classify" or axis != (-1 if objectness else 1) or pixels[:4] != [0, 1, 2, 3]:
        raise ConfigError("--int8 supports detection heads that export (batch, 4 + classes + extras, anchors) or "
                          "the original YOLOv5's (batch, anchors, 5 + classes + extras): not classifiers or "
                          "end-to-end heads")
    return objectness
