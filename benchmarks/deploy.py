"""What is deployed: FP32 and INT8 ONNX files of the unpruned and pruned tea-bud yolov8n, side by side in one run.

For the unpruned model and the default one-shot prune at each target speed-up (``prune --target-speedup``, which
finds the GFLOPs target by timing trial exports on onnxruntime): the ONNX export and its INT8 copy (``export
--int8``, calibrated on 64 unlabeled train images), each scored on val and test by pycocotools through ``val`` on
the file itself, and all files timed together in alternation on onnxruntime (batch 1, one thread, 320 px); speed-ups
are ratios of medians against the unpruned FP32 file. Finished rows are kept in ``--work``.

    python benchmarks/deploy.py [--speedups 1.3,1.6,2.0] [--work outputs/deploy] [--out benchmarks/deploy.md]
"""

from __future__ import annotations

from yoloprune.runtime import offline_runtime

offline_runtime()  # before Ultralytics is imported: no hub checks, no font download

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WorkFolder  # noqa: E402

import yoloprune as yp  # noqa: E402
from yoloprune.api import gflops, load_model, save_checkpoint  # noqa: E402
from yoloprune.atomic import atomic_write_text  # noqa: E402
from yoloprune.data.images import calibration_images  # noqa: E402
from yoloprune.workflows.export import export_onnx, int8_path  # noqa: E402
from yoloprune.workflows.latency import paired_onnx_latency  # noqa: E402
from yoloprune.workflows.quantize import quantize_int8  # noqa: E402
from yoloprune.workflows.speedup import gflops_for_speedup  # noqa: E402
from yoloprune.workflows.tables import markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "teabud.yaml"
V8 = ROOT / "weights" / "teabud-yolov8n.pt"
IMGSZ = 320


class Bench(WorkFolder):
    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.calib = calibration_images(str(DATA), IMGSZ)
        self.val = yp.Evaluator(str(DATA), "val", imgsz=IMGSZ)
        self.test = yp.Evaluator(str(DATA), "test", imgsz=IMGSZ)
        self.base_gflops = gflops(load_model(V8)[0], IMGSZ)

    def point(self, key: str, speedup: float | None) -> None:
        """The checkpoint, its ONNX file and INT8 copy, scored."""
        if self.done(key):
            return
        t0 = time.perf_counter()
        ckpt, search = self.path(key), None
        if speedup is None:
            model, meta = load_model(V8)
            save_checkpoint(model, ckpt, meta)
        else:
            cfg = yp.PruneConfig(imgsz=IMGSZ)
            search = gflops_for_speedup(str(V8), speedup, cfg)
            report = yp.prune(str(V8), config=replace(cfg, target_gflops=search.gflops), calibration=self.calib)
            save_checkpoint(report.model, ckpt, report.ckpt)
            model = report.model
        onnx = export_onnx(ckpt, self.work / "models" / f"{key}.onnx", IMGSZ)
        q = quantize_int8(onnx, int8_path(onnx), self.calib.numpy().astype(np.float32), nc=len(model.names))
        row = {"point": key, "target_speedup": speedup or 1.0, "gflops_ratio": gflops(model, IMGSZ) / self.base_gflops,
               "search_speedup": search.measured if search else 1.0, "int8_float": q.kept_float,
               "int8_box_drift": q.drift.box, "int8_score_drift": q.drift.score, "minutes": 0.0}
        for kind, path in (("fp32", onnx), ("int8", q.path)):
            row[f"{kind}_val"], row[f"{kind}_test"] = self.val(str(path)).map50_95, self.test(str(path)).map50_95
        row["minutes"] = (time.perf_counter() - t0) / 60
        self.rows[key] = row
        self.save()
        print(f"{key}: FP32 {row['fp32_val']:.4f} INT8 {row['int8_val']:.4f} ({row['minutes']:.1f} min)", flush=True)

    def latency(self, runs: int) -> None:
        """Every file timed together, in alternation; speed-ups against the unpruned FP32 file."""
        keys = list(self.rows)
        files = [self.work / "models" / f"{k}.onnx" for k in keys]
        times = paired_onnx_latency(files + [int8_path(f) for f in files], IMGSZ, runs, 1)
        base = times[keys.index("unpruned")]
        for i, k in enumerate(keys):
            self.rows[k].update(fp32_ms=times[i] * 1e3, int8_ms=times[len(keys) + i] * 1e3,
                                fp32_speedup=base / times[i], int8_speedup=base / times[len(keys) + i])
        self.save()


def table(rows: dict) -> str:
    cols = ["point", "target_speedup", "gflops_ratio", "search_speedup", "fp32_val", "fp32_test", "fp32_ms",
            "fp32_speedup", "int8_val", "int8_test", "int8_ms", "int8_speedup", "int8_float", "int8_box_drift"]

    def cell(c: str, v) -> str:
        if c.endswith(("_val", "_test")) and isinstance(v, float):
            return f"{v:.4f}"
        if c.endswith("speedup") and isinstance(v, float):
            return f"{v:.2f}x"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return markdown_table(sorted(rows.values(), key=lambda r: r["target_speedup"]), cols, cell)


HEADER = ("# Deployed files: FP32 and INT8 ONNX, unpruned and pruned to a measured speed-up\n\n"
          "`python benchmarks/deploy.py`: the tea-bud yolov8n, one run on 2 CPU cores, 320 px. mAP50-95 by "
          "pycocotools on val and test, computed on the ONNX files themselves (`yoloprune val`); latency on "
          "onnxruntime, batch 1, one thread, every file timed together in alternation (medians), speed-ups against "
          "the unpruned FP32 file. `search_speedup` is what `--target-speedup`'s search measured for its choice; "
          "`int8_float` is what INT8 export kept in float by its measured drift (`int8_box_drift`: mean box error "
          "at detected positions as a fraction of the image size).\n\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speedups", default="1.3,1.6,2.0")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--work", default=str(ROOT / "outputs" / "deploy"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "deploy.md"))
    args = ap.parse_args()
    bench = Bench(Path(args.work))
    bench.point("unpruned", None)
    for s in (float(x) for x in args.speedups.split(",")):
        bench.point(f"speedup{s:g}", s)
        atomic_write_text(args.out, HEADER + table(bench.rows) + "\n")
    bench.latency(args.runs)
    atomic_write_text(args.out, HEADER + table(bench.rows) + "\n")
    print(table(bench.rows))
    print(json.dumps(bench.rows, indent=1))


if __name__ == "__main__":
    main()
