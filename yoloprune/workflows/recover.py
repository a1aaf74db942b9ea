"""``yoloprune recover``: a pruned model trained to reproduce the model it was pruned from, on unlabeled images.

The images are a folder (no labels needed, none is read) or a data yaml's train split; the teacher is the checkpoint
the pruned file records as its source unless one is given. The run works in a run folder, as fine-tuning does
(``runs/recover``, numbered if taken), writing ``results.csv`` after every epoch; the output is the best epoch's
model, every width kept, in the source's own format.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from yoloprune import sources
from yoloprune.atomic import atomic_write_text
from yoloprune.data.images import image_folder, letterboxed_files, letterboxed_images
from yoloprune.engine.recover import PROBE_STEPS, RecoverConfig, RecoverResult, recover
from yoloprune.errors import ConfigError
from yoloprune.log import say


@dataclass
class RecoverRun:
    """One recovery run: what to train, on which images, towards which teacher, and where it writes."""

    model: str
    images: str  # a folder of images, or a data yaml (its train images)
    out: str
    teacher: str | None = None  # default: the checkpoint the model was pruned from, as its metadata records
    imgsz: int = 320
    max_images: int = 2000  # read at most this many images
    project: str = "runs"
    name: str | None = None  # run folder name (default: recover, numbered if taken)
    training: RecoverConfig = field(default_factory=RecoverConfig)


def unlabeled_images(source: str | Path, imgsz: int, n: int) -> torch.Tensor:
    """Up to ``n`` images of a folder or of a data yaml's train split, letterboxed, as uint8 (N, 3, imgsz, imgsz)."""
    source = Path(source)
    if source.is_dir() and not (source / "train").is_dir():
        x = letterboxed_files(image_folder(source, n), imgsz)
    else:
        x = letterboxed_images(source, "train", n, imgsz)
    return torch.from_numpy(x).mul_(255).round_().to(torch.uint8)


def resolve_teacher(run: RecoverRun, ckpt: dict) -> Path:
    """The teacher's checkpoint: the one given, or the pruned file's recorded source if it is still here."""
    if run.teacher:
        return Path(run.teacher)
    src = sources.recorded_source(ckpt)
    if src is None:
        raise ConfigError(f"{run.model} records no source checkpoint that is still present; give --teacher W "
                          "(the model it was pruned from)")
    return src


def _check_pair(student, teacher, teacher_path: Path) -> None:
    a, b = sources.adapter_for(student), sources.adapter_for(teacher)
    if type(a) is not type(b) or a.task(student) != b.task(teacher):
        raise ConfigError(f"teacher {teacher_path} is a {b.name} {b.task(teacher)} model; the model to recover is "
                          f"a {a.name} {a.task(student)} model")
    if a.num_classes(student) != b.num_classes(teacher):
        raise ConfigError(f"teacher {teacher_path} predicts {b.num_classes(teacher)} classes, the model to "
                          f"recover {a.num_classes(student)}")


def run_folder(project: str | Path, name: str | None) -> Path:
    """``project/name``, or the first free of ``project/recover``, ``recover2``, ... (as Ultralytics numbers runs)."""
    if name:
        return Path(project) / name
    for i in range(1, 10_000):
        path = Path(project) / ("recover" if i == 1 else f"recover{i}")
        if not path.exists():
            return path
    raise ConfigError(f"{project}: no free run folder name")


def _progress(folder: Path, total: str):
    """After each epoch: one line, and the run's results.csv rewritten (atomically)."""
    def report(result: RecoverResult) -> None:
        row = result.rows[-1]
        say(f"epoch {row.epoch}{total}  loss {row.train_loss:.4f}  held-back distance to the teacher "
              f"{row.distance:.4f} (before {result.distance_before:.4f})  {row.seconds / 60:.1f} min")
        table = pd.DataFrame([asdict(r) for r in result.rows])
        atomic_write_text(folder / "results.csv", table.to_csv(index=False))
    return report


def summary(result: RecoverResult) -> str:
    """The rate trained at, how the probe chose it, the back-offs and why training stopped, in one phrase."""
    probe = ", ".join(f"{lr:.2g}: {d:.4f}" for lr, d in result.probe)
    return (f"rate {result.lr:.2g}" + (f" (probe, distance after {PROBE_STEPS} steps: {probe})" if probe else "")
            + (f", {result.backoffs} back-off(s)" if result.backoffs else "") + f"; stopped: {result.stopped}")


def few_images_hint(result: RecoverResult, images: int) -> str | None:
    """One line when the probe found no rate that helps: what the user can do about it."""
    if not result.probe_failed:
        return None
    return (f"every rate the probe tried raised the held-back distance on these {images} images, so recovery trains "
            "at its lowest rate and may gain little; more images of the model's own scenes give it more to learn "
            "from")


def recover_model(run: RecoverRun) -> tuple[Path, RecoverResult]:
    """Train, and write the best epoch's model to ``run.out``. Returns the output path and the run's figures."""
    run.training.validate()
    student, ckpt = sources.load_model(run.model)
    teacher_path = resolve_teacher(run, ckpt)
    teacher, _ = sources.load_model(teacher_path)
    _check_pair(student, teacher, teacher_path)
    images = unlabeled_images(run.images, run.imgsz, run.max_images)
    folder = run_folder(run.project, run.name)
    folder.mkdir(parents=True, exist_ok=True)
    say(f"run folder: {folder} (per-epoch results.csv in it); teacher {teacher_path}; {len(images)} images at "
          f"{run.imgsz} px")
    settings = {**asdict(run), "teacher": str(teacher_path), "images_read": len(images)}
    atomic_write_text(folder / "recover.json", json.dumps(settings, indent=1, default=str))
    total = f"/{run.training.epochs}" if run.training.epochs else ""
    result = recover(student, teacher, sources.adapter_for(student), images, run.training, _progress(folder, total))
    meta = {"recovered": {"teacher": str(Path(teacher_path).resolve()), "epochs": len(result.rows),
                          "best_epoch": result.best_epoch, "distance_before": result.distance_before,
                          "distance": result.distance, "lr": result.lr, "backoffs": result.backoffs,
                          "stopped": result.stopped}}
    out = sources.save_checkpoint(student, run.out, ckpt, meta)
    say(f"held-back distance to the teacher {result.distance_before:.4f} -> {result.distance:.4f} "
        f"(best epoch {result.best_epoch} of {len(result.rows)}; {summary(result)})", err=True)
    if hint := few_images_hint(result, len(images)):
        say(hint, err=True)
    return out, result


__all__ = ["RecoverRun", "recover_model", "resolve_teacher", "run_folder", "unlabeled_images"]
