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

    python -m benchmarks.recovery [--epochs 5] [--targets 0.7,0.5] [--work outputs/recovery]
                                  [--out benchmarks/recovery.md] [--render-only]
    python -m benchmarks.recovery --epochs 15 --default-only   # the longer fine-tunes, same work folder
"""

from __future__ import annotations

import time
from pathlib import Path

import yoloprune as yp
from benchmarks import harness
from benchmarks.vs_torch_pruning import torch_pruning_to
from yoloprune.api import gflops, load_model, save_checkpoint
from yoloprune.sources import source_meta
from yoloprune.workflows.iterative import IterativeConfig, iterative_prune
from yoloprune.workflows.tables import markdown_table
from yoloprune.workflows.train import TrainConfig, train

V8, V5 = harness.weights("teabud-yolov8n"), harness.weights("teabud-yolov5nu")


class Bench(harness.WorkFolder):
    def __init__(self, work: Path, epochs: int) -> None:
        super().__init__(work, harness.DATA)
        self.epochs = epochs

    def record(self, key: str, family: str, target: float, recipe: str, ckpt: Path, seconds: float,
               base: Path) -> None:
        model, _ = load_model(ckpt)
        v, t = self.val(model), self.test(model)
        g0 = gflops(load_model(base)[0], self.imgsz)
        self.rows[key] = {"family": family, "target": target, "recipe": recipe, "val_map50_95": v.map50_95,
                          "val_map50": v.map50, "test_map50_95": t.map50_95, "test_map50": t.map50,
                          "params": harness.params(model), "gflops": gflops(model, self.imgsz),
                          "gflops_ratio": gflops(model, self.imgsz) / g0, "train_min": seconds / 60}
        self.save()
        print(f"{key}: val {v.map50_95:.4f} test {t.map50_95:.4f} GFLOPs x{self.rows[key]['gflops_ratio']:.3f} "
              f"({seconds / 60:.1f} min)", flush=True)

    def finetune(self, src: Path, key: str, teacher: Path | None, family: str, target: float, recipe: str,
                 base: Path) -> None:
        if self.done(key):
            return
        t0 = time.perf_counter()
        train(TrainConfig(model=str(src), data=str(self.data), out=str(self.path(key)), epochs=self.epochs,
                          imgsz=self.imgsz, finetune=True, teacher=str(teacher) if teacher else None,
                          project=str(self.work / "runs" / key)))
        self.record(key, family, target, recipe, self.path(key), time.perf_counter() - t0, base)

    def one_shot(self, base: Path, key: str, target: float, family: str, recipe: str, **prune) -> Path:
        if not self.done(key):
            cfg = yp.PruneConfig(method="l1", imgsz=self.imgsz, round_to=8, **prune)
            report = yp.prune(str(base), config=cfg, target=yp.Gflops(target), calibration=self.calib)
            save_checkpoint(report.model, self.path(key), report.ckpt, source_meta(str(base)))
            self.record(key, family, target, recipe, self.path(key), 0.0, base)
        return self.path(key)


def torch_pruning(bench: Bench, target: float, key: str) -> Path:
    if not bench.done(key):
        base, _ = load_model(str(V5))
        model = torch_pruning_to(base, target * gflops(base, bench.imgsz))
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
            bench.save_unchanged(key, base)
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
            iterative_prune(IterativeConfig(model=str(V8), data=str(bench.data), out=str(bench.path(key)),
                                            target=yp.Gflops(t), steps=e, epochs=1, imgsz=bench.imgsz))
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
        if ref:
            bench.speedups(keys, ref[0], runs)


def table(rows: dict) -> str:
    cols = ["family", "target", "recipe", "val_map50_95", "val_map50", "test_map50_95", "test_map50", "params",
            "gflops", "speedup", "train_min"]

    def cell(c: str, v) -> str:
        return f"{v:.4f}" if c.endswith(("50_95", "50")) else f"{v:,}" if c == "params" else harness.fmt(v)

    shown = sorted(rows.values(), key=lambda r: (r["family"], -r["target"], r["recipe"]))
    return markdown_table(shown, cols, cell)


def intro(epochs: int) -> str:
    px = harness.IMGSZ
    return (f"`python -m benchmarks.recovery --epochs {epochs}`: {px} px, pycocotools mAP on val and test, "
            f"E = {epochs} fine-tune epochs for every recipe, GFLOPs at {px} px, speed-up = onnxruntime CPU latency "
            "(batch 1, one thread, medians of alternated runs) against the unpruned model of the family.")


def main() -> None:
    ap = harness.parser(__file__, __doc__, work=True, runs=30)
    ap.add_argument("--epochs", type=int, default=5, help="fine-tune epochs E (the same for every recipe)")
    ap.add_argument("--targets", default="0.7,0.5", help="GFLOPs targets as fractions of the original")
    ap.add_argument("--default-only", action="store_true",
                    help="only the unpruned reference and the default recipe (the 15-epoch rows: --epochs 15)")
    args = ap.parse_args()
    if harness.render_saved(args, lambda rows: (intro(args.epochs), table(rows))):
        return
    bench = Bench(Path(args.work), args.epochs)
    (run_long if args.default_only else run)(bench, harness.floats(args.targets))
    latency(bench, args.runs)
    print(harness.write_markdown(args.out, intro(args.epochs), table(bench.rows)))


if __name__ == "__main__":
    main()
