"""What the benchmark scripts share: where things are, the image size, their command line, their Markdown, their
saved rows, the one-shot and recover steps, and (re-exported) the library's alternating timer.

Every script is a module of this package, run from the repository root as ``python -m benchmarks.<name>`` and
importing this as ``from benchmarks import harness``; ``python -m benchmarks list`` says what each one measures.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from yoloprune.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
OUTPUTS = ROOT / "outputs"  # work folders (git ignores it)
DATA = ROOT / "data" / "teabud.yaml"
WEIGHTS = ROOT / "weights"
IMGSZ = 320


def weights(name: str) -> Path:
    """A shipped checkpoint: ``weights/<name>.pt``."""
    return WEIGHTS / f"{name}.pt"


def __getattr__(name: str):
    """``alternate`` and ``paired_onnx_latency``: the library's alternating timer (``yoloprune.speed.timing``),
    imported on first use so that ``python -m benchmarks list`` loads no torch."""
    if name == "alternate":
        from yoloprune.speed.timing import alternate

        return alternate
    if name == "paired_onnx_latency":
        from yoloprune.speed.runtimes import paired_onnx_latency

        return paired_onnx_latency
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- command line -----------------------------------------------------------------------------------------------


def parser(script: str, doc: str | None, *, out: bool | None = None, work: bool = False,
           runs: int | None = None) -> argparse.ArgumentParser:
    """The command line of the benchmark ``script`` (its ``__file__``), its docstring as the help, with the flags
    the benchmarks share:

    - ``--out``, the Markdown file: ``out=True`` writes ``benchmarks/<name>.md`` unless told otherwise, ``None``
      writes only when given, ``False`` has no such flag;
    - ``work=True``: ``--work`` (the resumable work folder, ``outputs/<name>``) and ``--render-only``;
    - ``runs``: ``--runs``, latency runs per model, with that default.
    """
    name = Path(script).stem
    ap = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if out is not False:
        ap.add_argument("--out", default=str(BENCHMARKS / f"{name}.md") if out else None,
                        help="Markdown file to write" + ("" if out else " (default: print only)"))
    if work:
        ap.add_argument("--work", default=str(OUTPUTS / name),
                        help="work folder: finished rows (rows.json) and their models; a killed run resumes from it")
        ap.add_argument("--render-only", action="store_true",
                        help="only re-write the Markdown from the saved rows, computing nothing")
    if runs is not None:
        ap.add_argument("--runs", type=int, default=runs, help="latency runs per model")
    return ap


def floats(text: str) -> list[float]:
    """``"0.7,0.5"`` -> ``[0.7, 0.5]`` (an empty text: none)."""
    return [float(x) for x in text.split(",") if x]


# --- Markdown ---------------------------------------------------------------------------------------------------


def fmt(v) -> str:
    """A table cell as most columns have it: floats to 3 significant digits, the rest as they are."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def write_markdown(path: str | Path | None, *parts: str, keep_notes: bool = False) -> str:
    """The Markdown of ``parts`` (a title, an intro, a table, ...: a blank line between them), written atomically to
    ``path`` unless it is None, and returned. ``keep_notes``: the paragraphs the file has after its first table
    (notes added by hand about the run its rows come from) stay at its end."""
    text = "\n\n".join(p.strip("\n") for p in parts if p.strip())
    if path is not None and keep_notes and (notes := notes_after_table(path)):
        text += "\n\n" + notes
    if path is not None:
        atomic_write_text(path, text + "\n")
    return text


def notes_after_table(path: str | Path) -> str:
    """What a Markdown file has after its first table ('' if nothing, or no file)."""
    lines = Path(path).read_text().splitlines() if Path(path).exists() else []
    i = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    while i < len(lines) and lines[i].startswith("|"):
        i += 1
    return "\n".join(lines[i:]).strip("\n")


def render_saved(args: argparse.Namespace, render: Callable[[dict], tuple[str, ...]]) -> bool:
    """``--render-only``: re-write ``args.out`` from the rows saved in ``args.work`` (``render(rows)``: the file's
    parts), computing nothing and keeping the notes after its table. False when not asked: the benchmark runs."""
    if not args.render_only:
        return False
    saved = Path(args.work) / "rows.json"
    if not args.out:
        raise SystemExit("--render-only needs --out")
    if saved.exists():
        write_markdown(args.out, *render(load_json(saved)), keep_notes=True)
        print(f"{args.out}: re-written from {saved}")
    else:
        print(f"{saved}: no saved rows, {args.out} left as it is")
    return True


# --- saved rows -------------------------------------------------------------------------------------------------


def load_json(path: str | Path) -> dict:
    """Saved results, or ``{}`` when there are none yet."""
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def save_json(path: str | Path, results: dict) -> None:
    atomic_write_text(path, json.dumps(results, indent=1))


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def evaluators(data: str | Path = DATA, imgsz: int = IMGSZ) -> tuple:
    """pycocotools evaluators of ``data``'s val and test splits."""
    import yoloprune as yp

    return yp.Evaluator(str(data), "val", imgsz=imgsz), yp.Evaluator(str(data), "test", imgsz=imgsz)


def pose_data(work: Path) -> Path:
    """The tea-bud pose data (``make-data --task pose``, the same seed) in ``work``, generated when absent."""
    from yoloprune.data.teabud import TeaBudConfig, generate

    out = work / "teabud-pose"
    return out.with_suffix(".yaml") if out.with_suffix(".yaml").exists() else generate(TeaBudConfig(out=out,
                                                                                                      task="pose"))


class WorkFolder:
    """A benchmark's resumable work folder: finished rows in ``rows.json``, their models in ``models/``. A row
    counts as done only with its model there, so a killed run redoes the point it was in. With ``data``: its val
    and test evaluators (``val``, ``test``) and its calibration images (``calib``) at ``imgsz``."""

    def __init__(self, work: Path, data: Path | None = None, imgsz: int = IMGSZ) -> None:
        self.work = Path(work)
        (self.work / "models").mkdir(parents=True, exist_ok=True)
        self.rows_path = self.work / "rows.json"
        self.rows = load_json(self.rows_path)
        self.data, self.imgsz = data, imgsz
        if data is not None:
            from yoloprune.data.images import calibration_images

            self.val, self.test = evaluators(data, imgsz)
            self.calib = calibration_images(str(data), imgsz)

    def path(self, key: str) -> Path:
        return self.work / "models" / f"{key}.pt"

    def onnx(self, key: str) -> Path:
        return self.work / "models" / f"{key}.onnx"

    def done(self, key: str) -> bool:
        return key in self.rows and self.path(key).exists()

    def save(self) -> None:
        save_json(self.rows_path, self.rows)

    def save_unchanged(self, key: str, src: Path):
        """The checkpoint at ``src`` as row ``key``'s model, unchanged; the model."""
        from yoloprune.api import load_model, save_checkpoint

        model, ckpt = load_model(src)
        save_checkpoint(model, self.path(key), ckpt)
        return model

    def speedups(self, keys: list[str], base: int, runs: int) -> None:
        """Rows ``keys`` exported to ONNX and timed together in alternation (onnxruntime, batch 1, one thread):
        ``latency_ms`` and ``speedup`` against ``keys[base]``, the ratio of medians."""
        from yoloprune.speed.runtimes import paired_onnx_latency
        from yoloprune.workflows.export import export_onnx

        files = [export_onnx(self.path(k), self.onnx(k), self.imgsz) for k in keys]
        lat = paired_onnx_latency(files, self.imgsz, runs, threads=1)
        for k, s in zip(keys, lat, strict=True):
            self.rows[k].update(latency_ms=s * 1e3, speedup=lat[base] / s)
        self.save()


# --- one-shot and recover ---------------------------------------------------------------------------------------


def prune_to(src: Path, out: Path, target: float, imgsz: int, calib) -> float:
    """The default one-shot recipe at ``target`` x GFLOPs, saved to ``out`` with its provenance; minutes taken."""
    import yoloprune as yp
    from yoloprune.api import save_checkpoint
    from yoloprune.sources import source_meta

    t0 = time.perf_counter()
    report = yp.prune(str(src), config=yp.PruneConfig(imgsz=imgsz), target=yp.Gflops(target), calibration=calib)
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
    return (time.perf_counter() - t0) / 60, {"epochs": len(result.rows), "best_epoch": result.best_epoch,
                                            "distance": f"{result.distance_before:.3f} -> {result.distance:.3f}",
                                            "lr": result.lr, "backoffs": result.backoffs, "stopped": result.stopped}
