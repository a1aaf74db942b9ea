"""Commands that measure and ship: val, sweep, export, demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from yoloprune import defaults
from yoloprune.cli.options import (
    check_out,
    methods,
    nonnegative_float,
    positive_float,
    positive_int,
    ratios,
    speedups,
)
from yoloprune.errors import ConfigError


def _cmd_val(args: argparse.Namespace) -> int:
    import json

    from yoloprune.atomic import atomic_write_text
    from yoloprune.workflows.evaluate import evaluate

    result = evaluate(args.model, args.data, args.split, imgsz=args.imgsz, batch=args.batch)
    print(result.table())
    if args.json:
        atomic_write_text(args.json, json.dumps(result.to_dict(), indent=2))
        print(f"wrote {args.json}")
    return 0


def add_val(sub) -> None:
    p = sub.add_parser("val", help="COCO mAP (pycocotools) and the Ultralytics validator's mAP")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="Ultralytics data yaml")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--imgsz", type=positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--batch", type=positive_int, default=16)
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    p.set_defaults(func=_cmd_val)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from yoloprune.workflows.sweep import SweepConfig, markdown, merge, sweep

    if args.ray is not None:
        from yoloprune.workflows.cluster import RayConfig, ray_sweep, require_ray

        if args.merge:
            raise ConfigError("--ray runs a sweep; --merge joins finished ones: give one of them")
        require_ray()  # before any work: the extra may be missing
    if args.merge:
        df = merge(args.merge, args.out)
    else:
        if not args.model or not args.data:
            raise ConfigError("sweep needs --model and --data (or --merge DIR...)")
        if args.ratios != list(defaults.SWEEP_RATIOS) and args.target_speedups is not None:
            raise ConfigError("give --ratios or --target-speedups, not both")
        cfg = SweepConfig(model=args.model, data=args.data, out=args.out, ratios=args.ratios, methods=args.method,
                          finetune_epochs=args.finetune_epochs, split=args.split, imgsz=args.imgsz,
                          batch=args.batch, workers=args.workers, round_to=args.round_to, layers=args.layers,
                          reconstruct=not args.no_reconstruct, calib_images=args.calib_images,
                          distill=args.distill, steps=args.steps, device=args.device,
                          recover_epochs=args.recover_epochs, speedups=args.target_speedups,
                          latency_threads=args.threads, int8=args.int8)
        if args.ray is not None:
            rc = RayConfig(address=None if args.ray == "local" else args.ray, cpus_per_point=args.cpus_per_point,
                           gpus_per_point=args.gpus_per_point, local_cpus=args.ray_cpus, shared=args.ray_shared)
            df = ray_sweep(cfg, rc)
        else:
            df = sweep(cfg)
    print(markdown(df))
    print(f"wrote {Path(args.out) / 'results.csv'}, results.md, map_vs_ratio.png, map_vs_latency.png")
    return 0


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="prune at several ratios, evaluate, measure; table and plots")
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--ratios", type=ratios, default=list(defaults.SWEEP_RATIOS))
    p.add_argument("--target-speedups", type=speedups, default=None, metavar="X,Y,...",
                   help="instead of --ratios: points at these speed-ups over the unpruned model on onnxruntime "
                        "(CPU), measured on this machine (each pruned as prune --target-speedup does)")
    p.add_argument("--threads", type=positive_int, default=1, help="onnxruntime threads for timing")
    p.add_argument("--int8", action="store_true",
                   help="also quantize every point's ONNX export (as export --int8 does): INT8 mAP and latency columns")
    p.add_argument("--method", type=methods, default=[defaults.METHOD],
                   help="one or more criteria (l1,l2,bn,act,...) or unstructured (default: l1)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune every point for K epochs (default: 0)")
    p.add_argument("--distill", action="store_true", help="fine-tune points with the unpruned model as the teacher")
    p.add_argument("--recover-epochs", type=int, default=0,
                   help="label-free recovery of every pruned point for K epochs on the train images (no labels "
                        "read), towards the unpruned model, before any fine-tune")
    p.add_argument("--round-to", type=positive_int, default=defaults.ROUND_TO,
                   help="keep pruned widths multiples of N: what CPU kernels turn into time")
    p.add_argument("--no-reconstruct", action="store_true",
                   help="mean compensation only: no least-squares refit from the calibration images")
    p.add_argument("--calib-images", type=positive_int, default=defaults.CALIB_IMAGES,
                   help="train images for calibration")
    p.add_argument("--steps", type=positive_int, default=1,
                   help="prune-and-reconstruct steps per point")
    p.add_argument("--layers", action="store_true",
                   help="bn rows also remove residual blocks whose branch falls under the gamma threshold")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--imgsz", type=positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--batch", type=positive_int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where points are fine-tuned: cpu, 0, 0,1 (Ultralytics' device)")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR", help="join the results of these sweep folders")
    g = p.add_argument_group("on a Ray cluster (pip install \"yoloprune[ray]\")")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run each point as a Ray task: alone, on a local Ray instance started here; 'auto' or "
                        "host:port joins a running cluster (default: off)")
    g.add_argument("--cpus-per-point", type=positive_float, default=1.0, help="Ray CPUs each point requests")
    g.add_argument("--gpus-per-point", type=nonnegative_float, default=0.0,
                   help="Ray GPUs each point requests; points are fine-tuned on them")
    g.add_argument("--ray-cpus", type=positive_int, default=None,
                   help="CPUs of the local Ray instance (default: all of this machine's)")
    g.add_argument("--ray-shared", action="store_true",
                   help="every node sees --model and --data at the same paths: ship nothing through Ray")
    p.add_argument("--out", required=True, help="output folder (rows already there are kept, not recomputed)")
    p.set_defaults(func=_cmd_sweep)


def _cmd_export(args: argparse.Namespace) -> int:
    from yoloprune.workflows.export import ExportConfig, export

    if args.format == "onnx":
        check_out(args.model, args.out)
    cfg = ExportConfig(model=args.model, out=args.out, imgsz=args.imgsz, dynamic=args.dynamic,
                       simplify=args.simplify, data=args.data, baseline=args.baseline, int8=args.int8,
                       calib_data=args.calib_data, calib_images=args.calib_images, format=args.format)
    print(export(cfg).table())
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="ONNX export, checked with onnxruntime against PyTorch")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="output .onnx file (a folder for --format openvino / ncnn)")
    p.add_argument("--format", choices=("onnx", "openvino", "ncnn"), default="onnx",
                   help="onnx, or another runtime's format through Ultralytics' exporter (its package installed)")
    p.add_argument("--imgsz", type=positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--dynamic", action="store_true")
    p.add_argument("--simplify", action="store_true", help="simplify with onnxslim (must be installed)")
    p.add_argument("--data", default=None, help="data yaml whose val images feed the check (default: random)")
    p.add_argument("--baseline", default=None, help="unpruned checkpoint whose export's latency is measured beside")
    p.add_argument("--int8", action="store_true", help="also write OUT's stem + .int8.onnx: onnxruntime static INT8 "
                   "(QDQ, per-channel weights), with as much of the head in float as its measured drift needs; "
                   "with --format openvino, the folder itself is INT8 (NNCF through Ultralytics' exporter, the "
                   "head in float)")
    p.add_argument("--calib-data", default=None, help="INT8 calibration images: a folder or a data yaml (default: "
                   "--data, else the checkpoint's recorded training data)")
    p.add_argument("--calib-images", type=positive_int, default=64, help="INT8 calibration images to use")
    p.set_defaults(func=_cmd_export)


def _cmd_demo(args: argparse.Namespace) -> int:
    from yoloprune.workflows.demo import DemoConfig, run_demo

    given = {"ratios": args.ratios, "methods": args.method}
    run_demo(DemoConfig(out=args.out, model=args.model, data=args.data, slimmed=args.slimmed,
                        **{k: v for k, v in given.items() if v is not None}))
    return 0


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job on the shipped data and weights: sweep, table, plots, export")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--ratios", type=ratios, default=None, help="default: 0,0.1,0.2,...,0.6")
    p.add_argument("--method", type=methods, default=None, help="criteria for the baseline model (default: l1)")
    p.add_argument("--model", default=None, help="default: the shipped weights/teabud-yolov8n.pt")
    p.add_argument("--data", default=None, help="default: the shipped data/teabud.yaml")
    p.add_argument("--slimmed", default=None, help="sparsity-trained model to sweep with bn and block removal "
                   "(default with the shipped baseline: weights/teabud-yolov8n-sparse.pt)")
    p.set_defaults(func=_cmd_demo)
