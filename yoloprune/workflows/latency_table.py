"""Latency tables: every conv of a model timed alone on the deployment runtime at the widths pruning can leave.

Each conv (with its BatchNorm folded, as exports have it, and its SiLU when a BatchNorm follows it) is built as a
one-layer model at its input resolution and timed at a grid of input and output widths (``FRACTIONS`` of its own,
rounded to ``round_to``). The table (``engine.costs.CostTable``) predicts a pruned model's latency and tells the
planner which channels cost the most time. It is cached per model architecture, image size, runtime, threads and
machine, under ``$YOLOPRUNE_CACHE`` (default ``~/.cache/yoloprune``)/latency, so a second prune on the same machine
reuses it; any change in those builds a new one.

Runtimes (``RUNTIMES``): ``onnxruntime`` on the CPU (``threads`` intra-op threads), and ``torch`` (eager, on the CUDA
device when there is one, else the CPU). A runtime is a timer of one-conv blocks and of whole models.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yoloprune.atomic import atomic_write_text
from yoloprune.engine.costs import CostTable, LayerCost
from yoloprune.errors import ConfigError
from yoloprune.workflows.latency import alternate, machine, ort_session

FRACTIONS = (1.0, 0.75, 0.5, 0.25)  # of a layer's width, plus the narrowest width pruning may leave
VERSION = 1  # of the table's measurement; a change makes old caches stale


@dataclass(frozen=True)
class ConvSpec:
    """One conv as the runtime sees it: widths, kernel, resolution of its input, and a SiLU after it or not."""

    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    height: int
    width: int
    act: bool

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.cin == self.cout

    @property
    def grouped(self) -> bool:
        """Grouped but not depthwise: its widths are not pruned (the graph freezes such convs)."""
        return self.groups > 1 and not self.depthwise

    def at(self, cin: int, cout: int) -> ConvSpec:
        groups = cout if self.depthwise else self.groups
        return ConvSpec(cin, cout, self.kernel, self.stride, self.padding, self.dilation, groups, self.height,
                        self.width, self.act)


def conv_specs(model: nn.Module, imgsz: int, activated: set[str]) -> dict[str, ConvSpec]:
    """Every plain conv of ``model`` at ``imgsz`` (from one forward pass), by name; ``activated``: the convs a
    BatchNorm (and so an activation) follows."""
    specs: dict[str, ConvSpec] = {}
    hooks = []

    def hook(name):
        def record(mod, args, _out):
            h, w = args[0].shape[2:]
            specs[name] = ConvSpec(mod.in_channels, mod.out_channels, tuple(mod.kernel_size), tuple(mod.stride),
                                   tuple(mod.padding), tuple(mod.dilation), mod.groups, int(h), int(w),
                                   name in activated)
        return record

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and isinstance(mod.padding, tuple):
            hooks.append(mod.register_forward_hook(hook(name)))
    p = next(model.parameters())
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, imgsz, imgsz, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return specs


def grid(width: int, round_to: int) -> list[int]:
    """The widths a layer of ``width`` channels is timed at: ``FRACTIONS`` of it and the narrowest, rounded up
    to multiples of ``round_to``, ascending."""
    def up(x: float) -> int:
        return min(width, max(round_to, -(-int(round(x)) // round_to) * round_to))
    return sorted({up(f * width) for f in FRACTIONS} | {up(1)})


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
        from yoloprune.workflows.export import export_onnx

        return export_onnx(model, folder / f"{name}.onnx", imgsz)

    def paired_ms(self, prepared: list[Path], imgsz: int, runs: int) -> list[float]:
        from yoloprune.workflows.latency import paired_onnx_latency

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

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def block_ms(self, spec: ConvSpec, runs: int) -> float:
        conv = nn.Conv2d(spec.cin, spec.cout, spec.kernel, spec.stride, spec.padding, spec.dilation, spec.groups)
        block = (nn.Sequential(conv, nn.SiLU()) if spec.act else conv).to(self.device).eval()
        x = torch.rand(1, spec.cin, spec.height, spec.width, device=self.device)
        return self.paired_ms([block], x, runs)[0]

    def prepare(self, model: nn.Module, folder: Path, name: str, imgsz: int) -> nn.Module:
        import copy

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


def channel_block(rt: Runtime, round_to: int, runs: int = 20) -> int:
    """The channel block this runtime computes in on this machine: the multiple ``g`` of ``round_to`` (up to 64)
    such that a conv's time is best told by its width rounded up to a multiple of ``g`` (an
    AVX-512 CPU's onnxruntime pads channels to blocks of 16, so 40 channels cost what 48 do). Measured on a probe
    conv (3x3, 64 inputs, 40 x 40) at widths ``round_to`` to 128, and cached per runtime and machine."""
    path = cache_dir() / f"block-{_digest({'table': VERSION, 'round_to': round_to, 'runtime': rt.key(), **_host()})}.json"
    if path.is_file():
        try:
            return int(json.loads(path.read_text())["block"])
        except (ValueError, KeyError, TypeError):
            pass
    if getattr(rt, "device", None) is not None and rt.device.type == "cuda":
        return round_to  # a GPU's conv time at these sizes is launch-bound: no staircase to read
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
    _cache_write(path, {"block": block, "ms": {str(w): v for w, v in t.items()}})
    return block


def _up(w: int, g: int) -> int:
    return -(-w // g) * g


def _digest(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def cache_dir() -> Path:
    return Path(os.environ.get("YOLOPRUNE_CACHE") or Path.home() / ".cache" / "yoloprune") / "latency"


def _cache_key(specs: dict[str, ConvSpec], imgsz: int, rt: Runtime, round_to: int) -> str:
    return _digest({"table": VERSION, "fractions": FRACTIONS, "round_to": round_to, "imgsz": imgsz,
                    "runtime": rt.key(), **_host(), "layers": {n: asdict(s) for n, s in specs.items()}})


def _host() -> dict:
    """The machine a table is valid on: its CPU model and how many CPUs this process may use (not the host
    name, which containers change on every start)."""
    return {"cpu": machine()["cpu"], "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count()}


@dataclass
class Built:
    table: CostTable
    path: Path  # the cache file
    cached: bool  # read from the cache, not measured now
    seconds: float  # spent measuring (0 when cached)


def latency_table(model: nn.Module, imgsz: int, activated: set[str], rt: Runtime, round_to: int = 8,
                  runs: int = 15) -> Built:
    """The latency table of ``model``'s convs at ``imgsz`` on ``rt``: read from the cache when this model
    architecture, size, runtime and machine were timed before, else measured (layers with the same shape timed
    once) and cached."""
    specs = conv_specs(model, imgsz, activated)
    path = cache_dir() / f"{_cache_key(specs, imgsz, rt, round_to)}.json"
    if path.is_file():
        try:
            return Built(_from_json(json.loads(path.read_text())), path, True, 0.0)
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache file is measured again and replaced
    t0 = time.perf_counter()
    timed: dict[ConvSpec, float] = {}
    layers: dict[str, LayerCost] = {}
    for name, spec in specs.items():
        cins, couts = grid(spec.cin, round_to), grid(spec.cout, round_to)
        if spec.depthwise:
            cins = couts
        elif spec.grouped:  # timed at its own widths alone
            cins, couts = [spec.cin], [spec.cout]
        values = []
        for ci in cins:
            row = []
            for co in couts:
                if spec.depthwise and ci != co:
                    row.append(0.0)
                    continue
                s = spec.at(ci, co)
                if s not in timed:
                    timed[s] = rt.block_ms(s, runs)
                row.append(timed[s])
            values.append(row)
        layers[name] = LayerCost(cins, couts, values, spec.depthwise)
    table = CostTable(layers, "ms", {"imgsz": imgsz, **rt.key(), "machine": machine(), "blocks": len(timed)})
    _cache_write(path, _to_json(table))
    return Built(table, path, False, time.perf_counter() - t0)


def _cache_write(path: Path, data: dict) -> None:
    """Write a cache file; a cache that cannot be written is said once and measured again next time."""
    try:
        atomic_write_text(path, json.dumps(data))
    except OSError as e:
        print(f"yoloprune: latency cache {path.parent} not writable ({e.strerror}); set YOLOPRUNE_CACHE to keep "
              "tables between runs", file=sys.stderr)


def _to_json(table: CostTable) -> dict:
    return {"unit": table.unit, "meta": table.meta, "layers": {n: asdict(c) for n, c in table.layers.items()}}


def _from_json(data: dict) -> CostTable:
    return CostTable({n: LayerCost(**c) for n, c in data["layers"].items()}, data["unit"], data["meta"])


__all__ = ["FRACTIONS", "RUNTIMES", "Built", "ConvSpec", "OnnxRuntimeCPU", "Runtime", "TorchRuntime", "cache_dir",
           "channel_block", "conv_specs", "grid", "latency_table", "runtime"]
