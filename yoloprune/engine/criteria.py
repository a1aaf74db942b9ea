"""The registry of channel-importance criteria: the one list of method names, their flags and help lines.

It imports no torch, so the command line lists the criteria (``prune --help``) without loading it; a built-in
criterion's function (``engine.importance``) is imported on first use. ``register("name")`` on a function
``(unit, ctx) -> float`` (higher = more important) adds one, from Python, before the command line or a prune reads
the registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yoloprune.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    target: Callable[..., float] | str  # the function, or "module:name" imported on first use
    normalise: bool = False  # divide by the group's mean, so one global threshold compares groups of different fan-in
    needs_data: bool = False  # needs calibration images
    help: str = ""

    @property
    def fn(self) -> Callable[..., float]:
        if callable(self.target):
            return self.target
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


_BUILT_IN = "yoloprune.engine.importance"
CRITERIA: dict[str, Entry] = {
    "l1": Entry(f"{_BUILT_IN}:l1", normalise=True, help="L1 norm of the BN-scaled filters that produce the channel"),
    "l2": Entry(f"{_BUILT_IN}:l2", normalise=True, help="L2 norm of the BN-scaled filters that produce the channel"),
    "bn": Entry(f"{_BUILT_IN}:bn", help="|gamma| of the channel's BatchNorms (network slimming)"),
    "act": Entry(f"{_BUILT_IN}:act", needs_data=True,
                 help="data-aware: what the channel adds to its consumers' normalised outputs beyond its mean"),
}


def register(name: str, *, normalise: bool = False, needs_data: bool = False, help: str = ""):
    """Decorator: make ``fn(unit, ctx) -> float`` available as ``method=name`` (higher = more important)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        CRITERIA[name] = Entry(fn, normalise, needs_data, help or (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return deco


def names() -> tuple[str, ...]:
    return tuple(CRITERIA)


def entry(name: str) -> Entry:
    if name not in CRITERIA:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(CRITERIA)}")
    return CRITERIA[name]


__all__ = ["CRITERIA", "Entry", "entry", "names", "register"]
