"""yoloprune vs Torch-Pruning on the shipped tea-bud YOLOv5nu, pruned to the same GFLOPs, side by side in one run.

Both tools prune a copy of weights/teabud-yolov5nu.pt with L1 filter norms: yoloprune with ``target_gflops`` (its
defaults plus mean compensation on 32 train images and widths in multiples of 8),
Torch-Pruning's MagnitudePruner with its pruning ratio bisected until GFLOPs match (Ultralytics' own counter for
both). Each pruned model is evaluated (pycocotools mAP on val) as pruned and after the same short fine-tune
(yoloprune's fine-tune trainer for both: a Torch-Pruning model is a plain Ultralytics model too). Both are exported
to ONNX with the unpruned model and timed with onnxruntime in alternation (medians), so the realised speed-up can
be compared with the GFLOPs ratio.

    python -m benchmarks.vs_torch_pruning [--gflops 0.5] [--epochs 2] [--out benchmarks/vs_torch_pruning.md]
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from ultralytics.nn.modules import Detect

import yoloprune as yp
from benchmarks import harness
from yoloprune.api import gflops, load_model, save_checkpoint
from yoloprune.data.images import calibration_images
from yoloprune.workflows.export import export_onnx
from yoloprune.workflows.train import TrainConfig, train


def torch_pruning_to(base: torch.nn.Module, target: float) -> torch.nn.Module:
    """Torch-Pruning MagnitudePruner (L1), ratio bisected until GFLOPs <= target (absolute)."""
    import torch_pruning as tp

    def run(ratio: float) -> torch.nn.Module:
        model = copy.deepcopy(base).eval()
        for p in model.parameters():  # Torch-Pruning skips layers whose weights do not require grad
            p.requires_grad_(True)
        ignored = []
        for head in (m for m in model.modules() if isinstance(m, Detect)):
            ignored += [seq[-1] for seq in (*head.cv2, *head.cv3)] + [head.dfl]
        tp.pruner.MagnitudePruner(
            model, torch.zeros(1, 3, harness.IMGSZ, harness.IMGSZ),
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio, ignored_layers=ignored,
            output_transform=lambda out: out[0] if isinstance(out, tuple) else out,
        ).step()
        return model

    lo, hi, best = 0.0, 0.95, None
    for _ in range(10):
        mid = (lo + hi) / 2
        model = run(mid)
        if gflops(model, harness.IMGSZ) <= target:
            best, hi = model, mid
        else:
            lo = mid
    return best


def main() -> None:
    ap = harness.parser(__file__, __doc__, runs=50)
    ap.add_argument("--model", default=str(harness.weights("teabud-yolov5nu")))
    ap.add_argument("--data", default=str(harness.DATA))
    ap.add_argument("--gflops", type=float, default=0.5, help="target GFLOPs as a fraction of the original")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tune epochs, the same for both")
    args = ap.parse_args()
    imgsz = harness.IMGSZ

    base, _ = load_model(args.model)
    g0 = gflops(base, imgsz)
    ours = copy.deepcopy(base)
    calib = calibration_images(args.data, imgsz)
    yp.prune(ours, config=yp.PruneConfig(method="l1", imgsz=imgsz, round_to=8), target=yp.Gflops(args.gflops),
             calibration=calib)
    theirs = torch_pruning_to(base, gflops(ours, imgsz))
    evaluator = yp.Evaluator(args.data, "val", imgsz=imgsz)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="yoloprune-bench-") as tmp:
        tmp = Path(tmp)
        onnx = {"unpruned": export_onnx(base, tmp / "base.onnx", imgsz)}
        for name, model in (("yoloprune", ours), ("Torch-Pruning", theirs)):
            ckpt = save_checkpoint(model, tmp / f"{name}.pt")
            tuned = train(TrainConfig(model=str(ckpt), data=args.data, out=str(tmp / f"{name}-ft.pt"),
                                      epochs=args.epochs, imgsz=imgsz, finetune=True, project=str(tmp / name)))
            rows[name] = {"gflops": gflops(model, imgsz), "params": harness.params(model),
                          "map": evaluator(model).map50_95, "map_ft": evaluator(str(tuned)).map50_95}
            onnx[name] = export_onnx(model, tmp / f"{name}.onnx", imgsz)
        times = harness.paired_onnx_latency(list(onnx.values()), imgsz, args.runs, threads=1)
        lat = dict(zip(onnx, times, strict=True))
    base_map = evaluator(base).map50_95
    intro = (f"Tea-bud YOLOv5nu ({args.model}), {imgsz}px, target {args.gflops:.0%} of {g0:.3f} GFLOPs, "
             f"fine-tune {args.epochs} epochs (same recipe for both), onnxruntime CPU batch 1, 1 thread, median of "
             f"{args.runs} alternated runs. Unpruned: mAP50-95 {base_map:.4f}, {lat['unpruned'] * 1e3:.2f} ms.")
    lines = ["| tool | GFLOPs | params | mAP50-95 pruned | mAP50-95 fine-tuned | latency ms | speed-up | "
             "GFLOPs ratio | realised / GFLOPs ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        speedup, fratio = lat["unpruned"] / lat[name], g0 / r["gflops"]
        lines.append(f"| {name} | {r['gflops']:.3f} | {r['params']:,} | {r['map']:.4f} | {r['map_ft']:.4f} | "
                     f"{lat[name] * 1e3:.2f} | {speedup:.2f}x | {fratio:.2f}x | {speedup / fratio:.0%} |")
    print(harness.write_markdown(args.out, intro, "\n".join(lines)))


if __name__ == "__main__":
    main()
