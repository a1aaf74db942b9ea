"""Runtimes: where a model is timed. A ``Runtime`` prepares a model (an ONNX export, or a copy on the device),
times prepared models in alternation, times a one-conv block, and measures the channel block it computes in.
``RUNTIMES`` is the registry (``onnxruntime`` on the CPU, eager ``torch`` on CUDA when present, else the CPU); a
runtime for another engine (OpenVINO, ...) subclasses ``Runtime`` and is added there."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yoloprune.errors import ConfigError
from yoloprune.speed import cache
from yoloprune.speed.table import VERSION, ConvSpec
from yoloprune.speed.timing import alternate


def ort_session(model: str | Path | bytes, threads: int | None = None):
    """An onnxruntime CPU session of an ONNX file (or of a serialized model's bytes)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


def paired_onnx_latency(paths: list[str | Path], imgsz: int, runs: int = 20, threads: int | None = None) -> list[float]:
    """Median seconds per run of several ONNX models measured in alternation (``alternate``)."""
    sessions = [ort_session(p, threads) for p in paths]
    feeds = [{s.get_inputs()[0].name: np.zeros((1, 3, imgsz, imgsz), np.float32)} for s in sessions]
    return alternate([lambda s=s, f=f: s.run(None, f) for s, f in zip(sessions, feeds, strict=True)], runs)


class Runtime:
    """Times one-conv blocks and whole models on one runtime. A model is first ``prepare``d (exported, or moved
    to the device) and then timed in alternation with others (``paired_ms``), so a busy machine slows them alike."""

    name = ""

    def key(self) -> dict:
        return {"runtime": self.name}

    def block_ms(self, spec: ConvSpec, runs: int) -> float:
        raise NotImplementedError

    def prepare(self, model: nn.Module, folder: Path, name: str, imgsz: int):
        raise NotImplementedError

    def paired_ms(self, prepared: list, imgsz: int, runs: int) -> list[float]:
        raise NotImplementedError

    def measures_blocks(self) -> bool:
        """Whether conv time here grows in steps of a channel block worth measuring (a GPU's is launch-bound)."""
        return True

    def channel_block(self, round_to: int, runs: int = 20) -> int:
        """The channel block this runtime computes in on this machine: the multiple ``g`` of ``round_to`` (up to
        64) such that a conv's time is best told by its width rounded up to a multiple of ``g`` (an AVX-512 CPU's
        onnxruntime pads channels to blocks of 16, so 40 channels cost what 48 do). Measured on a probe conv
        (3x3, 64 inputs, 40 x 40) at widths ``round_to`` to 128, and cached per runtime and machine."""
        return _channel_block(self, round_to, runs)


class OnnxRuntimeCPU(Runtime):
    name = "onnxruntime"

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime  # noqa: F401  (a dependency; fails here, not mid-table)

        self.threads = threads

    def key(self) -> dict:
        import onnxruntime

        return {"runtime": self.name, "version": onnxruntime.__version__, "threads": self.threads}

    def block_ms(self, spec: ConvSpec, runs: int) -> float:
        sess = ort_session(_onnx_block(spec), self.threads)
        feed = {"x": np.random.default_rng(0).random((1, spec.cin, spec.height, spec.width), dtype=np.float32)}
        return _median_ms(lambda: sess.run(None, feed), runs)

    def prepare(self, model: nn.Module, folder: Path, name: str, imgsz: int) -> Path:
        """The model exported as its source's exporter writes it (what is deployed)."""
        from yoloprune import sources

        return sources.adapter_for(model).export_onnx(model, {}, folder / f"{name}.onnx", imgsz, False, False)

    def paired_ms(self, prepared: list[Path], imgsz: int, runs: int) -> list[float]:
        return [t * 1e3 for t in paired_onnx_latency(prepared, imgsz, runs, self.threads)]


class TorchRuntime(Runtime):
    """Eager PyTorch, on CUDA when it is present (synchronised around each run), else the CPU."""

    name = "torch"

    def __init__(self, threads: int = 1) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.threads = threads

    def key(self) -> dict:
        dev = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"runtime": self.name, "version": torch.__version__, "device": dev,
                "threads": self.threads if self.device.type == "cpu" else None}

    def measures_blocks(self) -> bool:
        return self.device.type != "cuda"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def block_ms(self, spec: ConvSpec, runs: int) -> float:
        conv = nn.Conv2d(spec.cin, spec.cout, spec.kernel, spec.stride, spec.padding, spec.dilation, spec.groups)
        block = (nn.Sequential(conv, nn.SiLU()) if spec.act else conv).to(self.device).eval()
        x = torch.rand(1, spec.cin, spec.height, spec.width, device=self.device)
        return self.paired_ms([block], x, runs)[0]

    def prepare(self, model: nn.Module, folder: Path, name: str, imgsz: int) -> nn.Module:
        return copy.deepcopy(model).float().to(self.device).eval()

    @torch.no_grad()
    def paired_ms(self, prepared: list[nn.Module], imgsz, runs: int) -> list[float]:
        """Median milliseconds per forward pass of each module, run in alternation (``imgsz``: a size or an
        input tensor)."""
        x = imgsz if isinstance(imgsz, torch.Tensor) else torch.zeros(1, 3, imgsz, imgsz, device=self.device)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)

        def run(model):
            model(x)
            self.sync()  # a CUDA launch returns before the work is done
        try:
            self.sync()
            return [t * 1e3 for t in alternate([lambda m=m: run(m) for m in prepared], runs)]
        finally:
            torch.set_num_threads(threads)


RUNTIMES: dict[str, type[Runtime]] = {"onnxruntime": OnnxRuntimeCPU, "torch": TorchRuntime}


def runtime(name: str, threads: int = 1) -> Runtime:
    if name not in RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r}; choose {', '.join(RUNTIMES)}")
    return RUNTIMES[name](threads)


def _median_ms(fn, runs: int) -> float:
    return alternate([fn], runs, warmup=2)[0] * 1e3


def _onnx_block(spec: ConvSpec) -> bytes:
    """A one-conv ONNX model (Conv with bias, then x * sigmoid(x) when ``spec.act``), as exports have it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((spec.cout, spec.cin // spec.groups, *spec.kernel)).astype(np.float32) * 0.1
    b = np.zeros(spec.cout, np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c" if spec.act else "y"], kernel_shape=list(spec.kernel),
                              strides=list(spec.stride), pads=[*spec.padding, *spec.padding],
                              dilations=list(spec.dilation), group=spec.groups)]
    if spec.act:
        nodes += [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, spec.cin, spec.height, spec.width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _channel_block(rt: Runtime, round_to: int, runs: int) -> int:
    path = cache.cache_dir() / f"block-{cache.digest({'table': VERSION, 'round_to': round_to, 'runtime': rt.key(), **cache.host()})}.json"
    saved = cache.read(path)
    if isinstance(saved, dict) and isinstance(saved.get("block"), int):
        return saved["block"]
    if not rt.measures_blocks():
        return round_to
    probe = ConvSpec(64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, 40, 40, True)
    widths = list(range(round_to, 129, round_to))
    t = {w: min(rt.block_ms(probe.at(64, w), runs) for _ in range(3)) for w in widths}
    block, best = round_to, math.inf
    grows = t[widths[-1]] >= 2 * t[widths[0]]  # where time barely grows with the width, no block can be read
    for g in (round_to * m for m in (1, 2, 4, 8)) if grows else ():
        if g > 64:
            break
        # time as a + b * (width rounded up to g): the block whose staircase fits the times best
        x = np.array([_up(w, g) for w in widths], float)
        y = np.array([t[w] for w in widths])
        fit = np.polyval(np.polyfit(x, y, 1), x)
        err = float(((y - fit) ** 2).sum())
        if err < 0.8 * best:  # a coarser block must fit clearly better
            block, best = g, err
    cache.write(path, {"block": block, "ms": {str(w): v for w, v in t.items()}})
    return block


def _up(w: int, g: int) -> int:
    return -(-w // g) * g


__all__ = ["RUNTIMES", "OnnxRuntimeCPU", "Runtime", "TorchRuntime", "ort_session", "paired_onnx_latency", "runtime"]
