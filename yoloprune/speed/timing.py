"""The one timer: medians of functions called in turn (``alternate``), and what is recorded beside a time."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


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


def median_seconds(fn: Callable[[], object], runs: int = 20, warmup: int = 3) -> float:
    """Median seconds per call of one function (``alternate`` of one)."""
    return alternate([fn], runs, warmup)[0]


@torch.no_grad()
def torch_latency(model: nn.Module, imgsz: int, runs: int = 20) -> float:
    """Median seconds per eager forward pass of a batch-1 image (the model is put back in its mode)."""
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


__all__ = ["alternate", "machine", "median_seconds", "torch_latency"]
