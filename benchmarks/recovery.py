"""How much accuracy each recovery recipe keeps, side by side in one run, at 30% and 50% fewer GFLOPs.

On the shipped tea-bud yolov8n, for each GFLOPs target:
- ``l1 mean-comp``: one-shot l1 with mean compensation only (yoloprune before reconstruction), then E epochs of
  plain fine-tuning;
- ``l1 + reconstruction``: one-shot l1 with least-squares reconstruction (today's default), then E epochs plain and
  E epochs distilled from the unpruned model (yoloprune's weight 1.5, projectors fitted first);
- ``iterative``: the same target in E steps of one epoch each (the same total epochs);
- ``unpruned``: the fair reference, the unpruned model fine-tuned with the same recipe for E epochs.
On the shipped tea-bud yolov5nu (Torch-Pruning cannot prune YOLOv8's C2f): yoloprune (default one-shot) against
Torch-Pruning's MagnitudePruner at the same GFLOPs, both fine-tuned the same way for E epochs (plain, no teacher).

Every model is evaluated with pycocotools on val and test, and timed with onnxruntime (batch 1, one thread, 320 px)
in alternation with the unpruned model of its family; the speed-up is the ratio of medians. Finished rows are
kept in ``--work`` (rows.json, models/), so a killed run resumes where it stopped.

    python benchmarks/recovery.py [--epochs 5] [--targets 0.7,0.5] [--work outputs/recovery]
                                  [--out benchmarks/recovery.md]
    python benchmarks/recovery.py --epochs 15 --default-only   # the longer fine-tunes, same work folder
"""

from __future__ import annotations

from yoloprune.runtime import offline_runtime

offline_runtime()  # before Ultralytics is imported: no hub checks, no font download

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WorkFolder  # noqa: E402

import yoloprune as yp  # noqa: E402
from yoloprune.api import gflops, load_model, save_checkpoint  # noqa: E402
from yoloprune.atomic import atomic_write_text  # noqa: E402
from yoloprune.data.images import calibration_images  # noqa: E402
from yoloprune.sources import source_meta  # noqa: E402
from yoloprune.workflows.export import export_onnx  # noqa: E402
from yoloprune.workflows.iterative import IterativeConfig, iterative_prune  # noqa: E402
from yoloprune.workflows.latency import paired_onnx_latency  # noqa: E402
from yoloprune.workflows.tables import markdown_table  # noqa: E402
from yoloprune.workflows.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMGSZ = 320
V8, V5 = ROOT / "weights" / "teabud-yolov8n.pt", ROOT / "weights" / "teabud-yolov5nu.pt"
DATA = ROOT / "data" / "teabud.yaml"


class Bench(WorkFolder):
    def __init__(self, work: Path, epochs: int) -> None:
        super().__init__(work)
        self.epochs = epochs
        self.val = yp.Evaluator(str(DATA), "val", imgsz=IMGSZ)
        self.test = yp.Evaluator(str(DATA), "test", imgsz=IMGSZ)
        self.calib = calibration_images(str(DATA), IMGSZ)

    def record(self, key: str, family: str, target: float, recipe: str, ckpt: Path, seconds: float,
               base: Path) -> None:
        model, _ = load_model(ckpt)
        v, t = self.val(model), self.test(model)
        g0 = gflops(load_model(base)[0], IMGSZ)
        self.rows[key] = {"family": family, "target": target, "recipe": recipe, "val_map50_95": v.map50_95,
                          "val_map50": v.map50, "test_map50_95": t.map50_95, "test_map50": t.map50,
                          "params": sum(p.numel() for p in model.parameters()),
                          "gflops": gflops(model, IMGSZ), "gflops_ratio": gflops(model, IMGSZ) / g0,
                          "train_min": seconds / 60}
        self.save()
        print(f"{key}: val {v.map50_95:.4f} test {t.map50_95:.4f} GFLOPs x{self.rows[key]['gflops_ratio']:.3f} "
              f"({seconds / 60:.1f} min)", flush=True)

    def finetune(self, src: Path, key: str, teacher: Path | None, family: str, target: float, recipe: str,
                 base: Path) -> None:
        if self.done(key):
            return
        t0 = time.perf_counter()
        train(TrainConfig(model=str(src), data=str(DATA), out=str(self.path(key)), epochs=self.epochs, imgsz=IMGSZ,
                          finetune=True, teacher=str(teacher) if teacher else None,
                          project=str(self.work / "runs" / key)))
        self.record(key, family, target, recipe, self.path(key), time.perf_counter() - t0, base)

    def one_shot(self, base: Path, key: str, target: float, family: str, recipe: str, **prune) -> Path:
        if not self.done(key):
            report = yp.prune(str(base), config=yp.PruneConfig(method="l1", target_gflops=target, imgsz=IMGSZ,
                                                               round_to=8, **prune), calibration=self.calib)
            save_checkpoint(report.model, self.path(key), report.ckpt, source_meta(str(base)))
            self.record(key, family, target, recipe, self.path(key), 0.0, base)
        return self.path(key)


def torch_pruning(bench: Bench, target: float, key: str) -> Path:
    from vs_torch_pruning import torch_pruning_to

    if not bench.done(key):
        base, _ = load_model(str(V5))
        model = torch_pruning_to(base, target * gflops(base, IMGSZ))
        save_checkpoint(model, bench.path(key))
        bench.record(key, "yolov5nu", target, "Torch-Pruning one-shot", bench.path(key), 0.0, V5)
    return bench.path(key)


def run_long(bench: Bench, targets: list[float]) -> None:
    """Only the reference and the default recipe (today's default one-shot, then E epochs): longer E for less."""
    e = bench.epochs
    for t in targets:
        new = bench.one_shot(V8, f"yolov8n-{t:g}-default", t, "yolov8n", "default one-shot")
        bench.finetune(new, f"yolov8n-{t:g}-default-ft{e}", None, "yolov8n", t, f"default one-shot + {e} ep", V8)
    bench.finetune(V8, f"yolov8n-unpruned-ft{e}", None, "yolov8n", 1.0, f"unpruned + {e} ep fine-tune", V8)


def run(bench: Bench, targets: list[float]) -> None:
    e = bench.epochs
    for base, fam in ((V8, "yolov8n"), (V5, "yolov5nu")):
        key = f"{fam}-unpruned"
        if not bench.done(key):
            save_checkpoint(load_model(str(base))[0], bench.path(key))
            bench.record(key, fam, 1.0, "unpruned", bench.path(key), 0.0, base)
    bench.finetune(V8, f"yolov8n-unpruned-ft{e}", None, "yolov8n", 1.0, f"unpruned + {e} ep fine-tune", V8)
    for t in targets:
        tag = f"{t:g}"
        old = bench.one_shot(V8, f"yolov8n-{tag}-meancomp", t, "yolov8n", "l1 mean-comp one-shot", reconstruct=False)
        new = bench.one_shot(V8, f"yolov8n-{tag}-recon", t, "yolov8n", "l1 + reconstruction one-shot")
        bench.finetune(old, f"yolov8n-{tag}-meancomp-ft{e}", None, "yolov8n", t, f"l1 mean-comp + {e} ep", V8)
        bench.finetune(new, f"yolov8n-{tag}-recon-ft{e}", None, "yolov8n", t, f"l1 + reconstruction + {e} ep", V8)
        bench.finetune(new, f"yolov8n-{tag}-recon-kd{e}", V8, "yolov8n", t,
                       f"l1 + reconstruction + {e} ep distilled", V8)
        key = f"yolov8n-{tag}-iterative{e}"
        if not bench.done(key):
            t0 = time.perf_counter()
            iterative_prune(IterativeConfig(model=str(V8), data=str(DATA), out=str(bench.path(key)), target_gflops=t,
                                            steps=e, epochs=1, imgsz=IMGSZ))
            bench.record(key, "yolov8n", t, f"iterative, {e} steps x 1 ep", bench.path(key),
                         time.perf_counter() - t0, V8)
        ours = bench.one_shot(V5, f"yolov5nu-{tag}-recon", t, "yolov5nu", "yoloprune one-shot")
        theirs = torch_pruning(bench, t, f"yolov5nu-{tag}-tp")
        bench.finetune(ours, f"yolov5nu-{tag}-recon-ft{e}", None, "yolov5nu", t, f"yoloprune + {e} ep", V5)
        bench.finetune(theirs, f"yolov5nu-{tag}-tp-ft{e}", None, "yolov5nu", t, f"Torch-Pruning + {e} ep", V5)


def latency(bench: Bench, runs: int) -> None:
    """Speed-up of every row against the unpruned model of its family, timed in alternation."""
    for fam in ("yolov8n", "yolov5nu"):
        keys = [k for k, r in bench.rows.items() if r["family"] == fam]
        ref = [i for i, k in enumerate(keys) if bench.rows[k]["target"] == 1.0]  # the unpruned architecture
        if not ref:
            continue
        onnx = [export_onnx(bench.path(k), bench.work / "models" / f"{k}.onnx", IMGSZ) for k in keys]
        lat = paired_onnx_latency(onnx, IMGSZ, runs, threads=1)
        base = lat[ref[0]]
        for k, s in zip(keys, lat, strict=True):
            bench.rows[k]["latency_ms"] = s * 1e3
            bench.rows[k]["speedup"] = base / s
    bench.save()


def table(bench: Bench) -> str:
    cols = ["family", "target", "recipe", "val_map50_95", "val_map50", "test_map50_95", "test_map50", "params",
            "gflops", "speedup", "train_min"]

    def cell(c: str, v) -> str:
        return (f"{v:.4f}" if c.endswith(("50_95", "50")) else f"{v:,}" if c == "params"
                else f"{v:.3g}" if isinstance(v, float) else str(v))

    rows = sorted(bench.rows.values(), key=lambda r: (r["family"], -r["target"], r["recipe"]))
    return markdown_table(rows, cols, cell)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5, help="fine-tune epochs E (the same for every recipe)")
    ap.add_argument("--targets", default="0.7,0.5", help="GFLOPs targets as fractions of the original")
    ap.add_argument("--work", default=str(ROOT / "outputs" / "recovery"))
    ap.add_argument("--runs", type=int, default=30, help="latency runs per model")
    ap.add_argument("--out", default=None, help="Markdown table to write")
    ap.add_argument("--default-only", action="store_true",
                    help="only the unpruned reference and the default recipe (the 15-epoch rows: --epochs 15)")
    args = ap.parse_args()
    bench = Bench(Path(args.work), args.epochs)
    (run_long if args.default_only else run)(bench, [float(t) for t in args.targets.split(",")])
    latency(bench, args.runs)
    text = (f"`python benchmarks/recovery.py --epochs {args.epochs}`: {IMGSZ} px, pycocotools mAP on val and test, "
            f"E = {args.epochs} fine-tune epochs for every recipe, GFLOPs at {IMGSZ} px, speed-up = onnxruntime CPU "
            "latency (batch 1, one thread, medians of alternated runs) against the unpruned model of the family.\n\n"
            + table(bench))
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
