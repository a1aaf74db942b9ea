"""What is deployed: the tea-bud yolov8n pruned to measured speed-ups, GFLOPs-targeted against latency-targeted,
as FP32 and INT8 ONNX files, OpenVINO and ncnn, side by side in one run.

Points: the unpruned model, and at each target speed-up (1.3x, 1.6x, 2x on onnxruntime, one thread) the default
one-shot prune two ways: **gflops** (``budget="gflops"``: the GFLOPs target whose prune runs that fast, widths in
multiples of 8 as the GFLOPs path has them) and **latency** (``prune --target-speedup``'s default: a latency table
of every conv on this machine's onnxruntime, widths in the runtime's measured channel block). Each point's ONNX
export and its INT8 copy (``export --int8``, calibrated on 64 unlabeled train images) are scored on val and test by
pycocotools through ``val`` on the file itself. All ONNX files are timed together in alternation (batch 1, one
thread, 320 px), and the latency points' OpenVINO and ncnn exports (one thread each) in alternation with the
unpruned ONNX file; speed-ups are ratios of medians against the unpruned FP32 ONNX file. Finished rows are kept in
``--work``.

    python -m benchmarks.deploy [--speedups 1.3,1.6,2.0] [--work outputs/deploy] [--out benchmarks/deploy.md]
                                [--render-only]
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np

import yoloprune as yp
from benchmarks import harness
from yoloprune.api import gflops, load_model, save_checkpoint
from yoloprune.speed.runtimes import ort_session
from yoloprune.workflows.export import ExportConfig, export, export_onnx, int8_path
from yoloprune.workflows.quantize import quantize_int8
from yoloprune.workflows.tables import markdown_table

V8 = harness.weights("teabud-yolov8n")


class Bench(harness.WorkFolder):
    def __init__(self, work: Path) -> None:
        super().__init__(work, harness.DATA)
        self.base_gflops = gflops(load_model(V8)[0], self.imgsz)

    def point(self, key: str, speedup: float | None, budget: str, tuned: Path | None = None) -> None:
        """The checkpoint, its ONNX file and INT8 copy, scored (``tuned``: a fine-tuned copy of a point, which
        has its widths)."""
        if self.done(key):
            return
        t0 = time.perf_counter()
        ckpt, search = self.path(key), None
        if speedup is None or tuned is not None:
            model = self.save_unchanged(key, tuned or V8)
        else:
            report = yp.prune(str(V8), config=yp.PruneConfig(imgsz=self.imgsz), calibration=self.calib,
                              target=yp.Speedup(speedup, budget=budget))
            search = report.speed.search
            print(search.line(), flush=True)
            save_checkpoint(report.model, ckpt, report.ckpt)
            model = report.model
        onnx = export_onnx(ckpt, self.onnx(key), self.imgsz)
        q = quantize_int8(onnx, int8_path(onnx), self.calib.numpy().astype(np.float32), nc=len(model.names))
        row = {"point": key, "budget": budget, "target_speedup": speedup or 1.0,
               "gflops_ratio": gflops(model, self.imgsz) / self.base_gflops,
               "round_to": search.round_to if search else "",
               "search_speedup": search.measured if search else 1.0 if tuned is None else "",
               "predicted_ms": search.predicted_ms if search and search.predicted_ms else "",
               "search_ms": search.pruned_ms if search else "",
               "int8_float": q.kept_float, "int8_box_drift": q.drift.box, "minutes": 0.0}
        for kind, path in (("fp32", onnx), ("int8", q.path)):
            row[f"{kind}_val"], row[f"{kind}_test"] = self.val(str(path)).map50_95, self.test(str(path)).map50_95
        row["minutes"] = (time.perf_counter() - t0) / 60
        self.rows[key] = row
        self.save()
        print(f"{key}: FP32 {row['fp32_val']:.4f} INT8 {row['int8_val']:.4f} ({row['minutes']:.1f} min)", flush=True)

    def latency(self, runs: int) -> None:
        """Every ONNX file timed together, in alternation; speed-ups against the unpruned FP32 file."""
        keys = list(self.rows)
        files = [self.onnx(k) for k in keys]
        files += [int8_path(f) for f in files]
        times = [t * 1e3 for t in harness.paired_onnx_latency(files, self.imgsz, runs, threads=1)]
        base = times[keys.index("unpruned")]
        for i, k in enumerate(keys):
            self.rows[k].update(fp32_ms=times[i], int8_ms=times[len(keys) + i], fp32_speedup=base / times[i],
                                int8_speedup=base / times[len(keys) + i])
        self.save()

    def runtimes(self, runs: int) -> None:
        """OpenVINO (its default precision, and INT8 by NNCF through Ultralytics' exporter, calibrated on 64 train
        images) and ncnn folders of the unpruned and latency points, scored on val and test, and timed (one thread
        each) in alternation with the unpruned ONNX file."""
        keys = [k for k, r in self.rows.items() if r["budget"] in ("", "latency", "latency-ft")]
        for name, fmt, int8, runner in (("openvino", "openvino", False, _openvino_runner),
                                        ("openvino_int8", "openvino", True, _openvino_runner),
                                        ("ncnn", "ncnn", False, _ncnn_runner)):
            needs = {"openvino": ["openvino", "nncf"] if int8 else ["openvino"], "ncnn": ["ncnn", "pnnx"]}[fmt]
            if any(importlib.util.find_spec(m) is None for m in needs):
                print(f"{name}: {' or '.join(needs)} not installed, skipped", flush=True)
                continue
            runners = [_ort_runner(ort_session(self.onnx("unpruned"), 1))]
            for k in keys:
                folder = self.work / "models" / f"{k}{'-int8' if int8 else ''}_{fmt}_model"
                if not folder.exists():
                    export(ExportConfig(model=str(self.path(k)), out=str(folder), imgsz=self.imgsz,
                                        data=str(self.data), format=fmt, int8=int8, calib_data=str(self.data),
                                        calib_images=64))
                if f"{name}_val" not in self.rows[k]:
                    self.rows[k][f"{name}_val"] = self.val(str(folder)).map50_95
                    self.rows[k][f"{name}_test"] = self.test(str(folder)).map50_95
                    self.save()
                runners.append(runner(folder))
            times = [t * 1e3 for t in harness.alternate(runners, runs)]
            for k, t in zip(keys, times[1:], strict=True):
                self.rows[k].update({f"{name}_ms": t, f"{name}_speedup": times[0] / t})
            self.save()


def _ort_runner(sess):
    feed = {sess.get_inputs()[0].name: np.zeros((1, 3, harness.IMGSZ, harness.IMGSZ), np.float32)}
    return lambda: sess.run(None, feed)


def _openvino_runner(folder: Path):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(next(folder.glob("*.xml")))), "CPU",
                                  {"INFERENCE_NUM_THREADS": 1})
    request = compiled.create_infer_request()
    x = np.zeros((1, 3, harness.IMGSZ, harness.IMGSZ), np.float32)
    return lambda: request.infer({0: x})


def _ncnn_runner(folder: Path):
    import ncnn

    net = ncnn.Net()
    net.opt.num_threads = 1
    net.load_param(str(folder / "model.ncnn.param"))
    net.load_model(str(folder / "model.ncnn.bin"))
    x = ncnn.Mat(np.zeros((3, harness.IMGSZ, harness.IMGSZ), np.float32))

    def run():
        ex = net.create_extractor()
        ex.input(net.input_names()[0], x)
        ex.extract(net.output_names()[0])
    return run


COLS = ["point", "target_speedup", "gflops_ratio", "round_to", "search_speedup", "predicted_ms", "search_ms",
        "fp32_val", "fp32_test", "fp32_ms", "fp32_speedup", "int8_val", "int8_test", "int8_ms", "int8_speedup",
        "openvino_val", "openvino_ms", "openvino_speedup", "openvino_int8_val", "openvino_int8_test", "openvino_int8_ms",
        "openvino_int8_speedup", "ncnn_val", "ncnn_ms", "ncnn_speedup", "int8_float"]


def table(rows: dict) -> str:
    def cell(c: str, v) -> str:
        if c.endswith(("_val", "_test")) and isinstance(v, float):
            return f"{v:.4f}"
        if c.endswith("speedup") and isinstance(v, float):
            return f"{v:.2f}x"
        return harness.fmt(v)

    order = sorted(rows.values(), key=lambda r: (r["target_speedup"], r["budget"]))
    return markdown_table(order, [c for c in COLS if any(c in r for r in order)], cell)


HEADER = ("# Deployed files: pruned to a measured speed-up, GFLOPs-targeted against latency-targeted; FP32, INT8, "
          "OpenVINO, ncnn\n\n"
          "`python -m benchmarks.deploy`: the tea-bud yolov8n, one run on 2 CPU cores, 320 px. `gflops` points: the "
          "GFLOPs target whose prune runs the target speed-up (widths in multiples of 8); `latency` points: `prune "
          "--target-speedup` (a latency table of this machine's onnxruntime, widths in its measured channel block, "
          "`round_to`). `search_speedup` / `search_ms`: what the search measured for its choice; `predicted_ms`: "
          "the latency table's prediction for it. mAP50-95 by pycocotools on val and test, computed on the ONNX "
          "files themselves (`yoloprune val`). Latency: onnxruntime, batch 1, one thread, every ONNX file timed "
          "together in alternation (medians); OpenVINO (its CPU plugin's default precision: bfloat16 on this CPU), "
          "OpenVINO INT8 (`export --format openvino --int8`: NNCF through Ultralytics' exporter, the head in float, "
          "calibrated on 64 train images) and ncnn, one thread each, scored the same way and timed in alternation "
          "with the unpruned ONNX file; every speed-up is against the unpruned FP32 ONNX "
          "file. `int8_float`: what INT8 export kept in float by its measured drift. `-ft15` rows: that latency point "
          "fine-tuned 15 epochs on the labelled train split (`yoloprune finetune --epochs 15 --imgsz 320`, plain), "
          "its widths unchanged; the unpruned model fine-tuned the same way scores 0.5255 val / 0.5475 test "
          "([finetune15.md](finetune15.md)).")


def main() -> None:
    ap = harness.parser(__file__, __doc__, out=True, work=True, runs=40)
    ap.add_argument("--speedups", default="1.3,1.6,2.0")
    ap.add_argument("--finetuned", type=int, default=15,
                    help="also score <point>-ft<E>.pt in the work folder's models, where present (yoloprune finetune)")
    args = ap.parse_args()
    if harness.render_saved(args, lambda rows: (HEADER, table(rows))):
        return
    bench = Bench(Path(args.work))
    bench.point("unpruned", None, "")
    for s in harness.floats(args.speedups):
        for budget in ("gflops", "latency"):
            bench.point(f"{budget}{s:g}", s, budget)
            harness.write_markdown(args.out, HEADER, table(bench.rows))
    for key in [k for k in bench.rows if k.startswith("latency")]:  # fine-tuned copies, when they are there
        tuned = bench.work / "models" / f"{key}-ft{args.finetuned}.pt"
        if tuned.is_file() and "-ft" not in key:
            bench.point(f"{key}-ft{args.finetuned}", bench.rows[key]["target_speedup"], "latency-ft", tuned)
    bench.latency(args.runs)
    bench.runtimes(args.runs)
    harness.write_markdown(args.out, HEADER, table(bench.rows))
    print(table(bench.rows))
    print(json.dumps(bench.rows, indent=1))


if __name__ == "__main__":
    main()
