"""Commands that change a model: prune, compact, sparsify, iterative, recover; and info."""

from __future__ import annotations

import argparse
from pathlib import Path

from yoloprune import defaults
from yoloprune.cli.options import (
    add_runtime,
    add_speed_targets,
    calibration_from,
    check_calibrated,
    check_out,
    criteria,
    default_out,
    positive_float,
    positive_int,
    ratio,
    target_from,
)


def _cmd_prune(args: argparse.Namespace) -> int:
    from yoloprune.api import prune, save_checkpoint
    from yoloprune.engine.plan import PruneConfig
    from yoloprune.sources import source_meta

    target = target_from(args)
    out = args.out or default_out(args.model, f"{args.method}-{target.tag}")
    check_out(args.model, out)
    calibration = calibration_from(args)
    check_calibrated(args, calibration)
    cfg = PruneConfig(method=args.method, scope=args.scope, selection=args.selection, round_to=args.round_to,
                      min_channels=args.min_channels, ignore=tuple(args.ignore), imgsz=args.imgsz, blocks=args.layers,
                      reconstruct=not args.no_reconstruct, recalibrate_bn=args.recalibrate_bn, steps=args.steps)
    report = prune(args.model, config=cfg, calibration=calibration, target=target)
    if report.speed is not None:
        print(report.speed.search.line(), flush=True)
    print(report.table())
    if report.speed is not None:
        print(report.speed.lines()[-1])
    save_checkpoint(report.model, out, report.ckpt, {"pruned": report.summary(), **source_meta(args.model)})
    print(f"saved {out}")
    return 0


def add_prune(sub) -> None:
    p = sub.add_parser("prune", help="structured channel pruning with genuine removal")
    p.add_argument("--model", required=True, help="checkpoint (.pt: Ultralytics or original YOLOv5) or model yaml")
    p.add_argument("--ratio", type=ratio, default=None,
                   help="fraction of prunable channels to remove, in [0, 1); default 0 when no other target is given")
    p.add_argument("--method", choices=criteria(), default=defaults.METHOD,
                   help="importance criterion: " + "; ".join(f"{k}: {h}" for k, h in criteria().items()))
    p.add_argument("--scope", choices=("global", "uniform", "damage"), default="global",
                   help="widths: global: one score threshold across groups; uniform: the same fraction of every "
                        "group; damage: every group's width chosen together by the estimated damage per GFLOP saved "
                        "(with --calib-data)")
    p.add_argument("--selection", choices=("auto", "score", "obs"), default="auto",
                   help="channels within a group: score: the criterion's lowest; obs: those the refit absorbs best "
                        "(structured OBS, with calibration images); auto: obs when calibrated, else score")
    p.add_argument("--round-to", type=positive_int, default=defaults.ROUND_TO,
                   help="keep widths multiples of N, as sweeps and the demo")
    p.add_argument("--min-channels", type=positive_int, default=1)
    p.add_argument("--ignore", nargs="*", default=[], help="module names left alone, e.g. model.22")
    p.add_argument("--target-gflops", type=float, default=None,
                   help="instead of --ratio: prune until GFLOPs fall to this fraction of the original")
    add_speed_targets(p)
    p.add_argument("--imgsz", type=positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--layers", action="store_true",
                   help="with --method bn: also remove residual blocks whose branch |gamma| all fall under the threshold")
    p.add_argument("--calib-data", default=None,
                   help="data yaml (its train images) or a folder of images, no labels needed: fold removed "
                        "channels' means into the layers that read them, refit those layers by least squares to "
                        "reproduce the unpruned model, and feed data-aware criteria")
    p.add_argument("--no-calib", action="store_true",
                   help="no calibration, even where the checkpoint records training images on this machine (used "
                        "by default when --calib-data is not given)")
    p.add_argument("--calib-images", type=positive_int, default=defaults.CALIB_IMAGES,
                   help="number of calibration images")
    p.add_argument("--calib-imgsz", type=positive_int, default=defaults.CALIB_IMGSZ, help="calibration image size")
    p.add_argument("--calib-views", action="store_true",
                   help="with fewer images than --calib-images: add flipped and cropped views of them up to that "
                        "count (helped a detector calibrated on 8 images, hurt an EM model: benchmarks/few_images.md)")
    p.add_argument("--no-reconstruct", action="store_true",
                   help="with --calib-data: mean compensation only, no least-squares refit")
    p.add_argument("--recalibrate-bn", action="store_true",
                   help="with --calib-data: re-estimate BatchNorm statistics on the calibration images afterwards")
    p.add_argument("--steps", type=positive_int, default=1,
                   help="with --calib-data: reach the target in N prune-and-reconstruct steps, each reconstructing "
                        "towards the original model (no training; slower, a little more accurate)")
    p.add_argument("--out", default=None,
                   help="output checkpoint (default: <model>-<method>-<target>.pt: 0.3, g0.5, s1.3x or 12ms)")
    p.set_defaults(func=_cmd_prune)


def _cmd_compact(args: argparse.Namespace) -> int:
    from yoloprune.api import compact, save_checkpoint

    check_out(args.model, args.out)
    report = compact(args.model)
    print(report.table())
    save_checkpoint(report.model, args.out, report.ckpt, {"compacted": report.summary()})
    print(f"saved {args.out}")
    return 0


def add_compact(sub) -> None:
    p = sub.add_parser("compact", help="physically remove channels that are already exactly zero")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_compact)


def _cmd_sparsify(args: argparse.Namespace) -> int:
    from yoloprune.api import load_model, save_checkpoint, sparsify
    from yoloprune.engine.sparsity import SparsifyConfig
    from yoloprune.speed.timing import torch_latency

    check_out(args.model, args.out)
    dense, _ = load_model(args.model)
    report = sparsify(args.model, config=SparsifyConfig(args.amount, args.scope, args.include_head))
    print(report.table())
    t0, t1 = torch_latency(dense, args.imgsz), torch_latency(report.model, args.imgsz)
    print(f"PyTorch CPU latency @{args.imgsz}, batch 1 (median): dense {t0 * 1e3:.1f} ms, sparse {t1 * 1e3:.1f} ms "
          f"({t1 / t0:.2f}x): zeros in dense kernels are still multiplied")
    save_checkpoint(report.model, args.out, report.ckpt, {"sparsified": report.summary()})
    print(f"saved {args.out}")
    return 0


def add_sparsify(sub) -> None:
    p = sub.add_parser("sparsify", help="global or per-layer unstructured L1 sparsity (fake pruning)")
    p.add_argument("--model", required=True)
    p.add_argument("--amount", type=ratio, required=True, help="fraction of conv weights set to zero, in [0, 1)")
    p.add_argument("--scope", choices=("global", "layer"), default="global")
    p.add_argument("--include-head", action="store_true", help="also sparsify the Detect output convs")
    p.add_argument("--imgsz", type=positive_int, default=320, help="image size for the latency measurement")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_sparsify)


def _cmd_info(args: argparse.Namespace) -> int:
    from yoloprune.workflows.info import describe

    print(describe(args.model, imgsz=args.imgsz, verbose=args.verbose))
    return 0


def add_info(sub) -> None:
    p = sub.add_parser("info", help="params, GFLOPs, sparsity, widths, frozen channels and why")
    p.add_argument("--model", required=True)
    p.add_argument("--imgsz", type=positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--verbose", action="store_true", help="list every layer's width")
    p.set_defaults(func=_cmd_info)


def _cmd_iterative(args: argparse.Namespace) -> int:
    from yoloprune.workflows.iterative import IterativeConfig, iterative_prune

    check_out(args.model, args.out)
    cfg = IterativeConfig(model=args.model, data=args.data, out=args.out, target=target_from(args), steps=args.steps, epochs=args.epochs,
                          method=args.method,
                          round_to=args.round_to, distill=args.distill, max_map_drop=args.max_map_drop,
                          imgsz=args.imgsz, batch=args.batch, workers=args.workers, calib_images=args.calib_images)
    df = iterative_prune(cfg)
    print(df.to_string(index=False))
    print(f"saved {args.out} (step table beside it: {Path(args.out).stem}.steps.csv/.md)")
    return 0


def add_iterative(sub) -> None:
    p = sub.add_parser("iterative", help="prune to a ratio or GFLOPs target in steps, with a short distilled "
                       "fine-tune after each")
    p.add_argument("--model", required=True, help="checkpoint to prune (also the distillation teacher)")
    p.add_argument("--data", required=True, help="data yaml: calibration (train), fine-tuning and val mAP")
    p.add_argument("--ratio", type=ratio, default=None, help="overall fraction of prunable channels to remove")
    p.add_argument("--target-gflops", type=float, default=None, help="final GFLOPs as a fraction of the original")
    p.add_argument("--target-speedup", type=float, default=None,
                   help="final speed-up over the original on --runtime: a one-shot prune --target-speedup search "
                        "sets the final GFLOPs and channel block; each step's speed-up is measured and tabled")
    add_runtime(p)
    p.add_argument("--steps", type=positive_int, default=3, help="pruning steps")
    p.add_argument("--epochs", type=int, default=1, help="fine-tune epochs after each step")
    p.add_argument("--method", choices=criteria(), default=defaults.METHOD, help="importance criterion")
    p.add_argument("--round-to", type=positive_int, default=defaults.ROUND_TO, help="keep widths multiples of N")
    p.add_argument("--distill", action="store_true", help="fine-tune with the original model as the teacher")
    p.add_argument("--max-map-drop", type=float, default=None,
                   help="stop when the val metric (mAP50-95; a task model's own) falls more than this below the original's (e.g. 0.02)")
    p.add_argument("--calib-images", type=positive_int, default=defaults.CALIB_IMAGES,
                   help="calibration images per step")
    p.add_argument("--imgsz", type=positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--batch", type=positive_int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", required=True, help="output checkpoint; the step table goes beside it")
    p.set_defaults(func=_cmd_iterative)


def _cmd_recover(args: argparse.Namespace) -> int:
    from yoloprune.engine.recover import RecoverConfig
    from yoloprune.workflows.recover import RecoverRun, recover_model

    check_out(args.model, args.out)
    if args.teacher is not None:
        check_out(args.teacher, args.out)
    minutes = None if args.epochs is not None else (args.minutes or defaults.RECOVER_MINUTES)
    training = RecoverConfig(epochs=args.epochs, minutes=minutes, lr=args.lr, batch=args.batch, seed=args.seed)
    out, _ = recover_model(RecoverRun(model=args.model, images=args.images, out=args.out, teacher=args.teacher,
                                      imgsz=args.imgsz, max_images=args.max_images, project=args.project,
                                      name=args.name, training=training))
    print(f"saved {out}")
    return 0


def add_recover(sub) -> None:
    p = sub.add_parser("recover", help="label-free recovery: train a pruned model to reproduce the model it was "
                       "pruned from, on unlabeled images")
    p.add_argument("--model", required=True, help="pruned checkpoint (.pt)")
    p.add_argument("--images", required=True,
                   help="a folder of images (no labels are read) or a data yaml (its train images)")
    p.add_argument("--teacher", default=None, metavar="W",
                   help="the unpruned checkpoint (default: the one the model records as its source)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=positive_int, default=None, help="train this many epochs")
    g.add_argument("--minutes", type=positive_float, default=None,
                   help=f"train for this long (default without --epochs: {defaults.RECOVER_MINUTES:g})")
    p.add_argument("--imgsz", type=positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--batch", type=positive_int, default=defaults.RECOVER_BATCH)
    p.add_argument("--lr", type=positive_float, default=defaults.RECOVER_LR, help="Adam learning rate")
    p.add_argument("--max-images", type=positive_int, default=2000, help="read at most this many images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--project", default="runs", help="parent folder of the run folder")
    p.add_argument("--name", default=None, help="run folder name (default: recover, numbered if taken)")
    p.add_argument("--out", required=True, help="output checkpoint, in the model's own format")
    p.set_defaults(func=_cmd_recover)
