"""CPU latency, batch 1: PyTorch eager and onnxruntime, as medians over repeated runs after a warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn


def median_seconds(fn: Callable[[], object], runs: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.no_grad()
def torch_latency(model: nn.Module, imgsz: int, runs: int = 20) -> float:
    """Median seconds per eager forward pass of a batch-1 image on CPU (model copied, not modified)."""
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, imgsz, imgsz, dtype=p.dtype, device=p.device)
    try:
        return median_seconds(lambda: model(x), runs)
    finally:
        model.train(was_training)


def machine() -> dict[str, str]:
    """The host name and CPU model of this machine, recorded beside latencies measured on it."""
    import platform
    import socket

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": socket.gethostname(), "cpu": cpu}


def ort_session(model: str | Path | bytes, threads: int | None = None):
    """An onnxruntime CPU session of an ONNX file (or of a serialized model's bytes)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


def alternate(fns: list[Callable[[], object]], runs: int = 20, warmup: int = 3) -> list[float]:
    """Median seconds per call of each function, called in turn ``runs`` times after ``warmup`` untimed rounds,
    so that a busy or throttled machine slows them alike and their ratios stay meaningful."""
    times: list[list[float]] = [[] for _ in fns]
    for i in range(runs + warmup):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def paired_onnx_latency(paths: list[str | Path], imgsz: int, runs: int = 20, threads: int | None = None) -> list[float]:
    """Median seconds per run of several ONNX models measured in alternation (``alternate``)."""
    sessions = [ort_session(p, threads) for p in paths]
    feeds = [{s.get_inputs()[0].name: np.zeros((1, 3, imgsz, imgsz), np.float32)} for s in sessions]
    return alternate([lambda s=s, f=f: s.run(None, f) for s, f in zip(sessions, feeds, strict=True)], runs)
