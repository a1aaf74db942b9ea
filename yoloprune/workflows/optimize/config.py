"""The settings of an optimize run, what it returns, and its run folder (``state.json``: finished steps)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from yoloprune import sources
from yoloprune.atomic import atomic_write_text
from yoloprune.defaults import CALIB_IMAGES
from yoloprune.errors import ConfigError
from yoloprune.log import say
from yoloprune.targets import Latency, Speedup

MIN_INT8_GAIN = 1.05  # INT8 ships only when it runs at least this much faster than FP32 here
SHORTFALL = 0.05  # a shipped speed-up more than this fraction below the target is said, in the report and on stderr
STEPS = ("baseline", "prune", "recover", "export", "verify", "report")
VERSION = 1  # of state.json
AGREEMENT_CONF = 0.25  # the unpruned model's detections above this score are the labels agreement is scored on


@dataclass
class OptimizeConfig:
    """What to optimize, towards which target, and where the run folder is. ``images``: a folder of images, a data
    yaml (its train images), or a tensor of images (N, 3, H, W; float in [0, 1] or uint8); a share of them is held
    back for verification, the rest calibrate and recover. One target: ``target_speedup`` over the unpruned FP32
    ONNX file, or ``target_latency`` (ms) of the shipped file on this machine."""

    model: str
    images: str | Path | torch.Tensor
    out: str
    target_speedup: float | None = None
    target_latency: float | None = None
    runtime: str = "onnxruntime"
    threads: int = 1
    int8: bool = True
    minutes: float = 10.0  # of label-free recovery
    data: str | None = None  # a data yaml whose val split is scored too
    imgsz: int = 320
    calib_images: int = CALIB_IMAGES
    hold_out: float = 0.2  # share of the images held back for verification (at least 2)
    runs: int = 30  # timing rounds per alternation

    def validate(self) -> None:
        if (self.target_speedup is None) == (self.target_latency is None):
            raise ConfigError("give one target: --target-speedup X or --target-latency MS")
        self.target()  # a target validates itself: above 1, positive, a known runtime, threads >= 1
        if self.runtime != "onnxruntime":
            raise ConfigError(f"optimize ships an ONNX file and times it on onnxruntime, not {self.runtime!r}")
        if isinstance(self.minutes, bool) or not isinstance(self.minutes, (int, float)) or not 0 < self.minutes < 1e9:
            raise ConfigError(f"--minutes must be > 0, got {self.minutes!r}")
        if not 0 < self.hold_out < 1 or self.calib_images < 4 or self.runs < 1 or self.imgsz < 32:
            raise ConfigError("hold_out must be in (0, 1), calib_images >= 4, runs >= 1 and imgsz >= 32")
        if not Path(self.model).is_file():
            raise ConfigError(f"--model {self.model}: no such checkpoint file")
        out = Path(self.out)
        if out.resolve() == Path(self.model).resolve() or out.is_file():
            raise ConfigError(f"--out {self.out} must be a folder for the run, not a file or the input model")

    def target(self) -> Speedup | Latency:
        if self.target_speedup is not None:
            return Speedup(self.target_speedup, self.runtime, self.threads)
        return Latency(self.target_latency, self.runtime, self.threads)

    def identity(self) -> dict:
        """What a resumed run must share with the run it continues."""
        images = self.images
        if isinstance(images, torch.Tensor):
            images = "tensor:" + hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
        else:
            images = str(Path(images).resolve())
        keep = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("images", "model", "out")}
        if self.data:  # a path: the same file however it was written
            keep["data"] = str(Path(self.data).resolve())
        return {**keep, "model": str(Path(self.model).resolve()), "model_sha256": sources.sha256(self.model),
                "images": images}


@dataclass
class OptimizeResult:
    out: Path
    shipped: Path  # model.int8.onnx or model.onnx
    checkpoint: Path  # model.pt: pruned and recovered, in the source's own format
    int8: bool  # whether the shipped file is INT8
    int8_why: str  # why INT8 ships or not
    target: float  # the speed-up asked for (a latency target converted at the measured base latency)
    speedup: float  # the shipped file's, measured beside the unpruned FP32 file
    met: bool  # within SHORTFALL of the target
    agreement: float | None  # mAP50-95 against the unpruned model's detections on the held-back images
    rows: list[dict] = field(default_factory=list)  # per model: speed-up, agreement, mAP (results.csv)
    seconds: dict[str, float] = field(default_factory=dict)  # per step


class _Run:
    """One run folder: its paths, its state (``state.json``), and the steps recorded in it."""

    def __init__(self, cfg: OptimizeConfig) -> None:
        self.cfg, self.out = cfg, Path(cfg.out)
        self.work = self.out / "work"
        self.path = self.out / "state.json"
        ident = cfg.identity()
        self.state = {"version": VERSION, "config": ident, "steps": {}}
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except ValueError:
                raise ConfigError(f"{self.path} is damaged: remove it to start the run over") from None
            diff = [k for k in ident if old.get("config", {}).get(k) != ident[k]]
            if diff:
                raise ConfigError(f"{self.path} records a run with other settings ({', '.join(diff)}): give the "
                                  "same settings to resume it, or another --out")
            self.state["steps"] = old.get("steps", {})

    def file(self, name: str) -> Path:
        return self.out / name

    def done(self, step: str) -> dict | None:
        """A finished step's record, if every file it wrote is still there (else it, and what follows, is redone)."""
        rec = self.state["steps"].get(step)
        if rec is None or not all((self.out / f).exists() for f in rec.get("files", [])):
            return None
        return rec

    def step(self, name: str, fn: Callable[[], dict]) -> dict:
        k = STEPS.index(name) + 1
        rec = self.done(name)
        if rec is not None:
            say(f"[{k}/{len(STEPS)}] {name}: finished before ({rec['seconds']:.1f} s), reused from {self.path}")
            return rec
        for later in STEPS[k - 1:]:  # a step done again makes what followed it stale
            self.state["steps"].pop(later, None)
        t0 = time.perf_counter()
        rec = fn()
        rec |= {"line": rec["line"].replace("\n", "; "), "seconds": time.perf_counter() - t0}
        self.state["steps"][name] = rec
        atomic_write_text(self.path, json.dumps(self.state, indent=1, default=str))
        say(f"[{k}/{len(STEPS)}] {name}: {rec['line']} ({rec['seconds']:.1f} s)")
        return rec
