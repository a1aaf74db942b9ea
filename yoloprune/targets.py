"""What a prune aims at: a ``Ratio`` of prunable channels, a ``Gflops`` fraction, a ``Speedup`` or a ``Latency``
measured on a runtime. Each validates itself on construction, so a target that cannot work is never made; the
library (``yoloprune.prune(model, target=...)``), the command line, sweeps and iterative pruning take the same
objects. ``tag`` names the target in file names (``best-l1-s1.3x.pt``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from yoloprune.defaults import SPEED_RUNTIMES
from yoloprune.errors import ConfigError, check_ratio


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Ratio:
    """Remove this fraction of the prunable units (coupled channels), in [0, 1)."""

    value: float = 0.0
    kind = "ratio"

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", check_ratio(self.value))

    @property
    def tag(self) -> str:
        return f"{self.value:g}"

    def __str__(self) -> str:
        return f"ratio {self.value:g}"


@dataclass(frozen=True)
class Gflops:
    """Prune until GFLOPs fall to this fraction of the unpruned model's, in (0, 1]."""

    fraction: float
    kind = "gflops"

    def __post_init__(self) -> None:
        f = _positive(self.fraction, "the GFLOPs target")
        if f > 1:
            raise ConfigError(f"the GFLOPs target is a fraction of the original GFLOPs in (0, 1], got {f:g}")
        object.__setattr__(self, "fraction", f)

    @property
    def tag(self) -> str:
        return f"g{self.fraction:g}"

    def __str__(self) -> str:
        return f"{self.fraction:g}x GFLOPs"


@dataclass(frozen=True)
class Cost:
    """Prune until a cost table given beside it (``engine.costs``; a latency table) predicts this fraction of the
    unpruned model's cost, in (0, 1]. The speed search sets it; users ask for a ``Speedup`` or ``Latency``."""

    fraction: float
    kind = "cost"

    def __post_init__(self) -> None:
        f = _positive(self.fraction, "the cost target")
        if f > 1:
            raise ConfigError(f"the cost target is a fraction of the unpruned model's cost in (0, 1], got {f:g}")
        object.__setattr__(self, "fraction", f)

    @property
    def tag(self) -> str:
        return f"c{self.fraction:.3g}"

    def __str__(self) -> str:
        return f"{self.fraction:.3g}x predicted cost"


BUDGETS = ("latency", "gflops")  # how a speed target is searched: see speed.search


def _check_runtime(runtime: str, threads: int, budget: str = "latency") -> None:
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; choose {', '.join(BUDGETS)}")
    if runtime not in SPEED_RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose {', '.join(SPEED_RUNTIMES)}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")


@dataclass(frozen=True)
class Speedup:
    """Prune until the model runs ``x`` times faster than the unpruned one on ``runtime`` (``threads`` CPU
    threads), on this machine. ``budget``: cut to the latency a table of the runtime's conv times predicts
    (default), or search the GFLOPs fraction that runs as fast (for comparison)."""

    x: float
    runtime: str = SPEED_RUNTIMES[0]
    threads: int = 1
    budget: str = "latency"
    kind = "speedup"

    def __post_init__(self) -> None:
        x = _positive(self.x, "the target speed-up")
        if x <= 1:
            raise ConfigError(f"the target speed-up must be above 1 (a speed-up over the unpruned model), got {x:g}")
        object.__setattr__(self, "x", x)
        _check_runtime(self.runtime, self.threads, self.budget)

    @property
    def tag(self) -> str:
        return f"s{self.x:g}x"

    def __str__(self) -> str:
        return f"{self.x:g}x speed-up on {self.runtime}"


@dataclass(frozen=True)
class Latency:
    """Prune until the model runs in ``ms`` milliseconds (batch 1) on ``runtime``, on this machine."""

    ms: float
    runtime: str = SPEED_RUNTIMES[0]
    threads: int = 1
    budget: str = "latency"
    kind = "latency"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ms", _positive(self.ms, "the target latency (milliseconds)"))
        _check_runtime(self.runtime, self.threads, self.budget)

    @property
    def tag(self) -> str:
        return f"{self.ms:g}ms"

    def __str__(self) -> str:
        return f"{self.ms:g} ms on {self.runtime}"


Target = Ratio | Gflops | Cost | Speedup | Latency
TIMED = (Speedup, Latency)

__all__ = ["BUDGETS", "TIMED", "Cost", "Gflops", "Latency", "Ratio", "Speedup", "Target"]
