"""Graph build + pruning at ratio 0.5: yoloprune vs Torch-Pruning's MagnitudePruner, side by side in one run.

For each family (YOLOv5u, YOLOv8, YOLO11 at n and s scale) both tools prune a fresh copy of the same randomly
initialised model, with the same input. A tool "handles" a family when pruning finishes and the pruned model
still runs with unchanged output shape. Times are medians of --repeats runs. Ratios are relative to
Torch-Pruning on yolov5nu, measured in the same run. Each tool gets one untimed warm-up run per model. A tool
that gives no result within --limit seconds on a model is reported as such.

    python -m benchmarks.prune_speed [--repeats 3] [--limit 120] [--out benchmarks/prune_speed.md]
"""

from __future__ import annotations

import copy
import signal
import statistics
import time

import torch
from ultralytics.nn.modules import Detect
from ultralytics.nn.tasks import DetectionModel

from benchmarks import harness
from yoloprune import PruneConfig
from yoloprune.api import apply, trace_model
from yoloprune.engine.plan import plan

FAMILIES = ["yolov5nu", "yolov5su", "yolov8n", "yolov8s", "yolo11n", "yolo11s"]


def _yoloprune(model: torch.nn.Module) -> None:
    graph = trace_model(model)
    apply(model, plan(model, graph, PruneConfig(method="l1", round_to=1), 0.5))


def _torch_pruning(model: torch.nn.Module) -> None:
    import torch_pruning as tp

    example = torch.randn(1, 3, harness.IMGSZ, harness.IMGSZ)
    ignored = []
    for head in (m for m in model.modules() if isinstance(m, Detect)):
        ignored += [seq[-1] for seq in (*head.cv2, *head.cv3)] + [head.dfl]
        for name in ("one2one_cv2", "one2one_cv3"):
            ignored += [seq[-1] for seq in (getattr(head, name, None) or [])]
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
        ignored_layers=ignored, output_transform=lambda out: out[0] if isinstance(out, tuple) else out,
    )
    pruner.step()


def _alarm(signum, frame):
    raise TimeoutError


def _time(tool, base: torch.nn.Module, x: torch.Tensor, shape, repeats: int, limit: int) -> tuple[float | None, str]:
    times, note = [], ""
    signal.signal(signal.SIGALRM, _alarm)
    for i in range(repeats + 1):  # the first run is an untimed warm-up (imports, allocator, caches)
        model = copy.deepcopy(base).eval()
        t0 = time.perf_counter()
        signal.alarm(limit)
        try:
            tool(model)
        except TimeoutError:
            return None, f"no result within {limit} s"
        except Exception as e:  # a tool failing on a family is a result, not a crash of the benchmark
            return None, f"fails: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
        finally:
            signal.alarm(0)
        if i:
            times.append(time.perf_counter() - t0)
        try:
            with torch.no_grad():
                out = model.eval()(x)[0]
            if out.shape != shape:
                return None, f"broken model: output {tuple(out.shape)} != {tuple(shape)}"
            note = f"params {harness.params(model) / harness.params(base):.2f}x"
        except Exception as e:
            return None, f"broken model: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    return statistics.median(times), note


def main() -> None:
    ap = harness.parser(__file__, __doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=120, help="seconds one tool may take on one model")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(1, 3, harness.IMGSZ, harness.IMGSZ)
    rows, ref = [], None
    for fam in FAMILIES:
        base = DetectionModel(f"{fam}.yaml", verbose=False).eval()
        with torch.no_grad():
            shape = base(x)[0].shape
        tp_t, tp_note = _time(_torch_pruning, base, x, shape, args.repeats, args.limit)
        yp_t, yp_note = _time(_yoloprune, base, x, shape, args.repeats, args.limit)
        if fam == "yolov5nu":
            ref = tp_t
        rows.append((fam, yp_t, yp_note, tp_t, tp_note))
        print(rows[-1], flush=True)
    lines = ["| model | yoloprune s | yoloprune / TP(yolov5nu) | yoloprune result | Torch-Pruning s | Torch-Pruning result |",
             "|---|---|---|---|---|---|"]
    for fam, yp_t, yp_note, tp_t, tp_note in rows:
        rel = f"{yp_t / ref:.2f}" if yp_t and ref else "-"
        lines.append(f"| {fam} | {yp_t if yp_t is None else f'{yp_t:.2f}'} | {rel} | {yp_note} | "
                     f"{tp_t if tp_t is None else f'{tp_t:.2f}'} | {tp_note} |")
    intro = f"Median of {args.repeats} runs, ratio 0.5, l1, {harness.IMGSZ}px input, CPU."
    print(harness.write_markdown(args.out, intro, "\n".join(lines)))


if __name__ == "__main__":
    main()
