"""Sweeps on a Ray cluster: every (method, ratio, fine-tune) point is one Ray task that runs the local sweep's
own job (prune, calibrate, fine-tune, evaluate, export, paired latency) on a worker and returns its row.

Ray is an optional extra (``pip install "yoloprune[ray]"``). Workers need not share a disk with the driver: the
base checkpoint, the data splits the points read and the driver's calibration images travel through Ray's object
store, once per node, unless ``shared`` says every node sees the same paths. Each row is written to the sweep
folder (atomically, with the plots) as it arrives; rows already there are not submitted again, so a sweep whose
driver was killed resumes where it stopped. Latency is measured on the worker, the unpruned export timed beside
the pruned one there, and the row names the worker's host and CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from yoloprune import sources
from yoloprune.atomic import atomic_write_bytes
from yoloprune.errors import ConfigError
from yoloprune.runtime import offline_runtime
from yoloprune.workflows.sweep import (
    FAILED,
    SweepConfig,
    add_row,
    combine,
    finish,
    is_unpruned,
    prepare,
    reuse_unpruned,
    run_job,
    start,
    tag,
    title,
    write_results,
)
from yoloprune.workflows.tables import Progress

_CKPT = "_checkpoint"  # row key under which a worker returns the point's checkpoint bytes


@dataclass
class RayConfig:
    """Where and with what the points run."""

    address: str | None = None  # None: start a local Ray instance; "auto" or "host:port": join a running cluster
    cpus_per_point: float = 1.0  # Ray resources each point requests
    gpus_per_point: float = 0.0  # > 0: fine-tuning runs on the GPU(s) Ray assigns to the task
    local_cpus: int | None = None  # CPUs of a local instance (default: all of this machine's)
    shared: bool = False  # every node sees the model and data at the driver's paths: nothing is shipped

    def validate(self) -> None:
        if not (math.isfinite(self.cpus_per_point) and self.cpus_per_point > 0):
            raise ConfigError(f"cpus per point must be > 0, got {self.cpus_per_point}")
        if not (math.isfinite(self.gpus_per_point) and self.gpus_per_point >= 0):
            raise ConfigError(f"gpus per point must be >= 0, got {self.gpus_per_point}")
        if self.local_cpus is not None and self.local_cpus < 1:
            raise ConfigError(f"local Ray CPUs must be >= 1, got {self.local_cpus}")
        if self.local_cpus is not None and self.address is not None:
            raise ConfigError("the CPU count of a Ray instance is set where it is started, not when joining it")


def require_ray():
    """The ``ray`` module, or one clear error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError('--ray needs Ray, an optional extra: pip install "yoloprune[ray]"') from None
    return ray


def _needed_splits(cfg: SweepConfig) -> set[str]:
    """The evaluated split, val (Ultralytics' dataset check requires it) and train when points are fine-tuned."""
    return {cfg.split, "val"} | ({"train"} if cfg.finetune_epochs else set())


def bundle_data(cfg: SweepConfig) -> bytes:
    """The splits the points read, as a zip: ``data.yaml`` (the user's, its splits pointing into the zip),
    ``images/<split>/``, ``labels/<split>/`` and COCO annotations when the dataset has them."""
    from yoloprune.data.spec import load_data

    spec = load_data(cfg.data, cfg.split)
    raw = yaml.safe_load(Path(spec.yaml).read_text())
    raw = {k: v for k, v in raw.items() if k not in ("path", "download", "train", "val", "test")}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # images are compressed already
        for split, images in sorted(spec.splits.items()):
            raw[split] = f"images/{split}"
            if split not in _needed_splits(cfg):
                continue
            for kind, folder in (("images", images), ("labels", spec.labels(split))):
                for f in sorted(folder.rglob("*")):
                    if f.is_file():
                        z.write(f, f"{kind}/{split}/{f.relative_to(folder).as_posix()}")
            ann = spec.annotations(split)
            if ann is not None and ann.is_file():
                z.write(ann, f"annotations/instances_{split}.json")
        z.writestr("data.yaml", yaml.safe_dump(raw, sort_keys=False))
    return buf.getvalue()


def _staging(key: str) -> Path:
    """This node's folder for one sweep's shipped files and base exports, under the temp folder."""
    return Path(tempfile.gettempdir()) / "yoloprune-ray" / key


def _stage(key: str, model_name: str, model: bytes, data: bytes) -> Path:
    """Unpack the shipped model and data once per node, under the temp folder, named by their hash. A folder is
    complete when it appears: it is written under another name and renamed into place."""
    root = _staging(key)
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root.parent))
    (tmp / model_name).write_bytes(model)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        z.extractall(tmp / "data")
    try:
        os.rename(tmp, root)
    except OSError:  # another worker on this node staged it first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


_PREPARED: dict = {}  # per worker process: the last sweep's shared state, reused by its next points


def run_point(cfg: SweepConfig, job: tuple, key: str, model: bytes | None, data: bytes | None, calibration,
              meta: dict, keep_checkpoint: bool, device: str) -> dict:
    """A Ray task: one sweep point on this worker. Returns its row (and its checkpoint's bytes when asked)."""
    offline_runtime()
    if model is not None:
        root = _stage(key, Path(cfg.model).name, model, data)
        cfg = dataclasses.replace(cfg, model=str(root / Path(cfg.model).name), data=str(root / "data" / "data.yaml"))
    else:
        root = _staging(key)
        root.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, device=device)
    state = (key, json.dumps(cfg.recipe(), sort_keys=True))
    if _PREPARED.get("state") != state:
        prep = Path(tempfile.mkdtemp(prefix="prepared-", dir=root))  # this process's base export
        _PREPARED.clear()
        _PREPARED.update(state=state, prepared=prepare(cfg, prep, calibration, meta))
    base, stats, evaluator = _PREPARED["prepared"]
    with tempfile.TemporaryDirectory(prefix="yoloprune-point-") as tmp:
        work = Path(tmp) / "models"
        work.mkdir()
        row = run_job(cfg, base, stats, evaluator, job, work)
        ckpt = work / f"{tag(job)}.pt"
        if keep_checkpoint and row["status"] == "ok" and ckpt.is_file():
            row[_CKPT] = ckpt.read_bytes()
    return row


def _reason(err: BaseException) -> str:
    """One line for a failed task: the worker's exception, not Ray's traceback."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".strip().rstrip(":")


def _reachable(address: str, timeout: float = 10.0) -> bool:
    """Whether something listens at host:port. Ray itself keeps retrying an unreachable head for minutes."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return True  # "auto", ray://...: Ray's own resolution decides
    try:
        socket.create_connection((host.removeprefix("ray://"), int(port)), timeout=timeout).close()
        return True
    except OSError:
        return False


def _connect(ray, rc: RayConfig) -> None:
    """Join the cluster (or start the local instance), or fail in one line."""
    if rc.address and not _reachable(rc.address):
        raise ConfigError(f"cannot join the Ray cluster at {rc.address}: nothing answers there (start it with "
                          "`ray start --head`, or give --ray alone for a local instance)")
    try:
        ray.init(address=rc.address, num_cpus=rc.local_cpus, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, OSError, ray.exceptions.RayError) as e:
        where = f"join the Ray cluster at {rc.address}" if rc.address else "start a local Ray instance"
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ConfigError(f"cannot {where}: {lines[0] if lines else type(e).__name__}") from None


def ray_sweep(cfg: SweepConfig, rc: RayConfig) -> pd.DataFrame:
    """The sweep's missing points as Ray tasks; returns the whole table (also written under ``cfg.out``)."""
    ray = require_ray()
    rc.validate()
    df, jobs = start(cfg)
    out = Path(cfg.out)
    if not jobs:
        write_results(combine([df]), out, title(cfg))
        return combine([df])
    from yoloprune.data.images import calibration_images
    from yoloprune.data.spec import load_data

    base, _ = sources.load_model(cfg.model)  # bad inputs fail here, in one line, before any task starts
    load_data(cfg.data, cfg.split).check_model(base)
    calibration = calibration_images(cfg.data, cfg.imgsz, cfg.calib_images) if cfg.compensate else None
    meta = sources.source_meta(cfg.model)
    if rc.shared:
        task_cfg = dataclasses.replace(cfg, model=str(Path(cfg.model).resolve()), data=str(Path(cfg.data).resolve()))
        model, data = None, None
        key = hashlib.sha256(f"{task_cfg.model}\n{task_cfg.data}\n{meta}".encode()).hexdigest()[:16]
    else:
        task_cfg, model, data = cfg, Path(cfg.model).read_bytes(), bundle_data(cfg)
        key = hashlib.sha256(hashlib.sha256(model).digest() + data).hexdigest()[:16]
    gpus = rc.gpus_per_point
    device = ",".join(str(i) for i in range(max(int(gpus), 1))) if gpus else cfg.device
    started = not ray.is_initialized()
    if started:
        _connect(ray, rc)
    (out / "models").mkdir(parents=True, exist_ok=True)
    progress = Progress(len(jobs))
    try:
        refs = [ray.put(x) for x in (model, data, calibration)]
        task = ray.remote(run_point).options(num_cpus=rc.cpus_per_point, num_gpus=gpus, max_retries=0)
        pending: dict = {}
        waiting = []  # unpruned rows of other methods: the first one's row serves them all

        def submit(job):
            pending[task.remote(task_cfg, job, key, *refs, meta, cfg.keep_models, device)] = job

        for job in jobs:
            row = reuse_unpruned(df, job, cfg.unpruned)
            if row is not None:
                df = add_row(df, row, cfg, progress)
            elif is_unpruned(job, cfg.unpruned) and any(is_unpruned(j, cfg.unpruned) for j in pending.values()):
                waiting.append(job)
            else:
                submit(job)
        while pending or waiting:
            if not pending:  # the unpruned point failed: run the waiting ones themselves
                submit(waiting.pop(0))
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except Exception as e:  # a failed point (ray.exceptions.RayError, ...) is recorded; the others go on
                row = {"method": job[0], "ratio": job[1], "finetune_epochs": job[2], "status": f"{FAILED}: {_reason(e)}"}
            ckpt = row.pop(_CKPT, None)
            if ckpt is not None:
                atomic_write_bytes(out / "models" / f"{tag(job)}.pt", ckpt)
            df = add_row(df, row, cfg, progress)
            for other in list(waiting):
                row = reuse_unpruned(df, other, cfg.unpruned)
                if row is not None:
                    waiting.remove(other)
                    df = add_row(df, row, cfg, progress)
    finally:
        if started:
            ray.shutdown()
            if rc.address is None:  # a local instance staged its files on this machine
                shutil.rmtree(_staging(key), ignore_errors=True)
    return finish(df, cfg)
