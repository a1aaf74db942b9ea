"""The cache of measurements (latency tables, channel blocks): one JSON file per key, under
``$YOLOPRUNE_CACHE`` (default ``~/.cache/yoloprune``)/latency, valid on one kind of machine."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from yoloprune.atomic import atomic_write_text
from yoloprune.speed.timing import machine

log = logging.getLogger("yoloprune")


def cache_dir() -> Path:
    return Path(os.environ.get("YOLOPRUNE_CACHE") or Path.home() / ".cache" / "yoloprune") / "latency"


def digest(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def host() -> dict:
    """The machine a measurement is valid on: its CPU model and how many CPUs this process may use (not the host
    name, which containers change on every start)."""
    return {"cpu": machine()["cpu"], "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count()}


def read(path: Path) -> dict | None:
    """A cache file's data; None when it is missing or damaged (measured again and replaced)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def write(path: Path, data: dict) -> None:
    """Write a cache file; a cache that cannot be written is said once and measured again next time."""
    try:
        atomic_write_text(path, json.dumps(data))
    except OSError as e:
        log.warning("yoloprune: latency cache %s not writable (%s); set YOLOPRUNE_CACHE to keep tables between runs",
                    path.parent, e.strerror)


__all__ = ["cache_dir", "digest", "host", "read", "write"]
