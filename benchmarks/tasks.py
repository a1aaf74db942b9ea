"""Every Ultralytics task family at prune ratio 0.5 (l1, global, no calibration): params and GFLOPs kept, and the
masked-vs-removed exactness at 0.3, on randomly initialised models built from Ultralytics' own yaml files (their
shipped class counts; pose with 17 keypoints). GFLOPs at 640 px (classifiers at 224, their training size).

    python -m benchmarks.tasks [--out benchmarks/tasks.md]
"""

from __future__ import annotations

import copy
import time

import torch

import yoloprune as yp
from benchmarks import harness
from yoloprune import sources
from yoloprune.api import apply, trace_model
from yoloprune.sources import build_model

FAMILIES = {
    "segment": ["yolov8n-seg", "yolov8n-seg-p6", "yolov9c-seg", "yolov9e-seg", "yolo11n-seg", "yolo12n-seg",
                "yolo26n-seg"],
    "pose": ["yolov8n-pose", "yolov8n-pose-p6", "yolo11n-pose", "yolo12n-pose", "yolo26n-pose"],
    "obb": ["yolov8n-obb", "yolo11n-obb", "yolo12n-obb", "yolo26n-obb"],
    "classify": ["yolov8n-cls", "yolov8-cls-resnet50", "yolov8-cls-resnet101", "yolo11n-cls", "yolo12n-cls",
                 "yolo26n-cls"],
}


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return sources.adapter_for(model).contract_outputs(model, model.eval()(x))


def exactness(model: torch.nn.Module, ratio: float = 0.3) -> float:
    """Worst relative error between the masked and the physically pruned model over every contract output."""
    size = 2 * sources.adapter_for(model).max_stride(model)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    p = yp.plan(model, trace_model(model), yp.PruneConfig(round_to=1), ratio)
    masked = copy.deepcopy(model)
    yp.mask(masked, p)
    removed = copy.deepcopy(masked)
    apply(removed, p)
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
               for a, b in zip(_outputs(removed, x), _outputs(masked, x), strict=True))


def row(name: str, task: str) -> dict:
    torch.manual_seed(0)
    model = build_model(f"{name}.yaml").eval()
    imgsz = 224 if task == "classify" else 640
    err = exactness(model)
    t0 = time.perf_counter()
    report = yp.prune(model, ratio=0.5, imgsz=imgsz)
    return {"task": task, "model": name, "params": report.before.params,
            "params_kept": report.after.params / report.before.params,
            "gflops": report.before.gflops, "gflops_kept": report.after.gflops / report.before.gflops,
            "rel_err": err, "seconds": time.perf_counter() - t0}


def main() -> None:
    args = harness.parser(__file__, __doc__, out=True).parse_args()
    lines = ["| task | model | params | params kept at 0.5 | GFLOPs | GFLOPs kept at 0.5 | masked vs removed (0.3) | prune s |",
             "|---|---|---|---|---|---|---|---|"]
    for task, names in FAMILIES.items():
        for name in names:
            r = row(name, task)
            lines.append(f"| {task} | {name} | {r['params'] / 1e6:.2f}M | {r['params_kept']:.2f}x | {r['gflops']:.1f} | "
                         f"{r['gflops_kept']:.2f}x | {r['rel_err']:.1e} | {r['seconds']:.1f} |")
            print(lines[-1], flush=True)
    harness.write_markdown(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
