"""``yoloprune optimize``: a detector to its fastest deployable ONNX file for a speed target, measured where it ships
(``workflows.optimize``); the command only parses and prints."""

from __future__ import annotations

import argparse

from yoloprune import defaults
from yoloprune.cli.options import positive_float, positive_int


def _cmd_optimize(args: argparse.Namespace) -> int:
    from yoloprune.workflows.optimize import OptimizeConfig, optimize

    cfg = OptimizeConfig(model=args.model, images=args.images, out=args.out, target_speedup=args.target_speedup,
                         target_latency=args.target_latency, runtime=args.runtime, threads=args.threads,
                         int8=not args.no_int8, minutes=args.minutes, data=args.data, imgsz=args.imgsz,
                         calib_images=args.calib_images)
    result = optimize(cfg)  # Ctrl-C: the command line's one line (every finished step is in state.json)
    agreement = "n/a" if result.agreement is None else f"{result.agreement:.4f}"
    print(f"shipped {result.shipped}: {result.speedup:.2f}x the unpruned FP32 ONNX file (target "
          f"{result.target:.2f}x{'' if result.met else ', missed'}), agreement mAP50-95 {agreement}; "
          f"checkpoint {result.checkpoint}; report {result.out / 'report.md'}")
    return 0


def add_optimize(sub) -> None:
    p = sub.add_parser("optimize", help="baseline, INT8 check, prune to a speed target, label-free recovery, "
                       "export and verification on the shipped file, resumable, in one run folder")
    p.add_argument("--model", required=True, help="checkpoint to optimize (.pt: Ultralytics or original YOLOv5)")
    p.add_argument("--images", required=True,
                   help="a folder of images (no labels are read) or a data yaml (its train images): 20%% (at least 2) "
                        "are held back to verify agreement, the rest calibrate and recover")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-speedup", type=positive_float, default=None,
                   help="the shipped file must run this many times faster than the unpruned FP32 ONNX file")
    g.add_argument("--target-latency", type=positive_float, default=None, metavar="MS",
                   help="the shipped file must run in MS milliseconds (batch 1) on this machine")
    p.add_argument("--runtime", choices=("onnxruntime",), default="onnxruntime",
                   help="where the shipped file is timed")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads for timing")
    p.add_argument("--no-int8", action="store_true",
                   help="ship FP32 ONNX (by default INT8 ships when it runs at least 5%% faster here)")
    p.add_argument("--minutes", type=positive_float, default=defaults.RECOVER_MINUTES,
                   help="label-free recovery time")
    p.add_argument("--data", default=None, help="data yaml: also score mAP50-95 on its val split")
    p.add_argument("--imgsz", type=positive_int, default=None,
                   help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--calib-images", type=positive_int, default=defaults.CALIB_IMAGES,
                   help="calibration images for pruning and INT8")
    p.add_argument("--out", required=True,
                   help="run folder: model.int8.onnx or model.onnx, model.pt, report.md, results.csv, "
                        "accuracy_vs_speedup.png, state.json (a rerun resumes)")
    p.set_defaults(func=_cmd_optimize)
