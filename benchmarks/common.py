"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import time
from pathlib import Path

from yoloprune.atomic import atomic_write_text


class WorkFolder:
    """A benchmark's resumable work folder: finished rows in ``rows.json``, their models in ``models/``. A row
    counts as done only with its model there, so a killed run redoes the point it was in."""

    def __init__(self, work: Path) -> None:
        self.work = work
        (work / "models").mkdir(parents=True, exist_ok=True)
        self.rows_path = work / "rows.json"
        self.rows = json.loads(self.rows_path.read_text()) if self.rows_path.exists() else {}

    def path(self, key: str) -> Path:
        return self.work / "models" / f"{key}.pt"

    def done(self, key: str) -> bool:
        return key in self.rows and self.path(key).exists()

    def save(self) -> None:
        atomic_write_text(self.rows_path, json.dumps(self.rows, indent=1))


def prune_to(src: Path, out: Path, target: float, imgsz: int, calib) -> float:
    """The default one-shot recipe at ``target`` x GFLOPs, saved to ``out`` with its provenance; minutes taken."""
    import yoloprune as yp
    from yoloprune.api import save_checkpoint
    from yoloprune.sources import source_meta

    t0 = time.perf_counter()
    report = yp.prune(str(src), config=yp.PruneConfig(target_gflops=target, imgsz=imgsz), calibration=calib)
    save_checkpoint(report.model, out, report.ckpt, source_meta(str(src)))
    return (time.perf_counter() - t0) / 60


def recover_to(src: Path, images: str, out: Path, imgsz: int, project: Path, minutes: float,
               teacher: str | None = None) -> tuple[float, dict]:
    """``recover`` for ``minutes`` with no labels; minutes taken, and the row's epochs and teacher distance."""
    from yoloprune.engine.recover import RecoverConfig
    from yoloprune.workflows.recover import RecoverRun, recover_model

    t0 = time.perf_counter()
    _, result = recover_model(RecoverRun(model=str(src), images=images, teacher=teacher, out=str(out), imgsz=imgsz,
                                         project=str(project), name=out.stem,
                                         training=RecoverConfig(minutes=minutes)))
    return (time.perf_counter() - t0) / 60, {"epochs": len(result.rows),
                                            "distance": f"{result.distance_before:.3f} -> {result.distance:.3f}"}
