"""Command line: argparse subcommands that parse, call the library, and map known errors to one line + exit 2."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from yoloprune import defaults
from yoloprune.errors import ConfigError, YoloPruneError, check_ratio
from yoloprune.runtime import offline_runtime


def _ratio(text: str) -> float:
    try:
        return check_ratio(float(text))
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(f"ratio must be a number in [0, 1), got {text!r}") from None


def _float_at_least(low: float, strict: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected a number {'>' if strict else '>='} {low:g}, got {text!r}")
        return value
    return parse


_positive_float = _float_at_least(0.0, strict=True)
_nonnegative_float = _float_at_least(0.0, strict=False)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _check_out(model: str, out: str | None) -> None:
    """Outputs never overwrite the input checkpoint."""
    if out is None:
        return
    if Path(out).resolve() == Path(model).resolve():
        raise ConfigError(f"--out {out} is the input model; choose another path (inputs are never overwritten)")
    if Path(out).is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file path")


def _resolve_imgsz(args: argparse.Namespace) -> None:
    """One image size for GFLOPs, evaluation and export in every command whose --imgsz defaults to None: --imgsz,
    else the checkpoint's training size, else 640."""
    if getattr(args, "imgsz", 0) is not None or not getattr(args, "model", None):
        return
    from yoloprune.sources import train_imgsz

    size = train_imgsz(args.model)
    args.imgsz = size or 640
    why = "the checkpoint's training size" if size else "default"
    print(f"image size {args.imgsz} px ({why}; --imgsz to change)", flush=True)


def _cmd_make_data(args: argparse.Namespace) -> int:
    from yoloprune.data.teabud import TeaBudConfig, generate

    cfg = TeaBudConfig(out=Path(args.out), seed=args.seed, n_train=args.n_train, n_val=args.n_val,
                       n_test=args.n_test, imgsz=args.imgsz, task=args.task)
    print(f"data yaml: {generate(cfg)}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from yoloprune.workflows.train import TrainConfig, default_teacher, train

    _check_out(args.model, args.out)
    teacher = getattr(args, "teacher", None)
    if teacher == "source":
        teacher = default_teacher(args.model)
        if teacher is None:
            raise ConfigError(f"{args.model} records no source checkpoint that is still present; give --teacher W")
    if args.command == "finetune":
        source = None if teacher else default_teacher(args.model)
        print(f"distilling from {teacher}" if teacher else "plain fine-tuning" + (
            f" (the model was pruned from {source}: --teacher distils from it)" if source else ""), flush=True)
    cfg = TrainConfig(model=args.model, data=args.data, out=args.out, epochs=args.epochs, imgsz=args.imgsz,
                      batch=args.batch, workers=args.workers, lr0=args.lr0, device=args.device, seed=args.seed,
                      time=args.time, project=args.project, name=args.name,
                      finetune=args.command == "finetune" or (args.command == "train-sparse"
                                                             and Path(args.model).suffix not in (".yaml", ".yml")),
                      sr=getattr(args, "sr", 0.0), sr_decay=getattr(args, "sr_decay", False), teacher=teacher,
                      dis=getattr(args, "dis", None))
    print(f"saved {train(cfg)}")
    return 0


def _cmd_sparsify(args: argparse.Namespace) -> int:
    from yoloprune.api import load_model, save_checkpoint, sparsify
    from yoloprune.engine.sparsity import SparsifyConfig
    from yoloprune.speed.timing import torch_latency

    _check_out(args.model, args.out)
    dense, _ = load_model(args.model)
    report = sparsify(args.model, config=SparsifyConfig(args.amount, args.scope, args.include_head))
    print(report.table())
    t0, t1 = torch_latency(dense, args.imgsz), torch_latency(report.model, args.imgsz)
    print(f"PyTorch CPU latency @{args.imgsz}, batch 1 (median): dense {t0 * 1e3:.1f} ms, sparse {t1 * 1e3:.1f} ms "
          f"({t1 / t0:.2f}x): zeros in dense kernels are still multiplied")
    save_checkpoint(report.model, args.out, report.ckpt, {"sparsified": report.summary()})
    print(f"saved {args.out}")
    return 0


def _default_out(model: str, tag: str) -> str:
    path = Path(model)
    return str(path.with_name(f"{path.stem}-{tag}.pt"))


def _calibration(args: argparse.Namespace):
    """``--calib-data``'s images; else the checkpoint's recorded training images when they are on this machine
    (said in one line); else None, with one line on what that costs and how to give images."""
    from yoloprune.data.images import calibration_images, recorded_train_images

    source = args.calib_data
    if source is None and not args.no_calib:
        source, recorded = recorded_train_images(args.model)
        if source is not None:
            print(f"calibrating on {args.calib_images} train images of {source}, the checkpoint's recorded training "
                  "data (--calib-data to choose images, --no-calib for none)", flush=True)
        else:
            print((f"the checkpoint's recorded training data ({recorded}) is not readable on this machine; "
                   if recorded else "") + "no calibration images: channels are removed without mean compensation or reconstruction, which "
                  "costs a trained model most of its accuracy; give --calib-data with a folder of a few dozen of "
                  "your images (no labels needed)", flush=True)
    return None if source is None else calibration_images(source, args.calib_imgsz, args.calib_images)


def _target(args: argparse.Namespace):
    """The one target the options name (``--ratio``, ``--target-gflops``, ``--target-speedup`` or
    ``--target-latency``; ratio 0 when none), refusing two at once and a runtime given without a speed target."""
    from yoloprune.targets import Gflops, Latency, Ratio, Speedup

    given = {"--ratio": args.ratio, "--target-gflops": args.target_gflops,
             "--target-speedup": args.target_speedup, "--target-latency": args.target_latency}
    named = [k for k, v in given.items() if v is not None]
    if len(named) > 1:
        raise ConfigError(f"give one target, not {' and '.join(named)}")
    timed = args.target_speedup is not None or args.target_latency is not None
    if not timed and (args.runtime is not None or args.threads is not None):
        raise ConfigError("--runtime and --threads say where a speed target is timed: give --target-speedup or "
                          "--target-latency with them")
    where = {"runtime": args.runtime or defaults.SPEED_RUNTIMES[0], "threads": args.threads or 1}
    if args.target_speedup is not None:
        return Speedup(args.target_speedup, **where)
    if args.target_latency is not None:
        return Latency(args.target_latency, **where)
    if args.target_gflops is not None:
        return Gflops(args.target_gflops)
    return Ratio(args.ratio or 0.0)


def _check_calibrated(args: argparse.Namespace, calibration) -> None:
    """Options that act on calibration images are refused without them, not dropped."""
    if calibration is None:
        used = [f for f, on in (("--no-reconstruct", args.no_reconstruct), ("--recalibrate-bn", args.recalibrate_bn),
                                ("--steps", args.steps > 1)) if on]
        if used:
            raise ConfigError(f"{', '.join(used)} act on calibration images: give --calib-data (none was found)")


def _cmd_prune(args: argparse.Namespace) -> int:
    from yoloprune.api import prune, save_checkpoint
    from yoloprune.engine.plan import PruneConfig
    from yoloprune.sources import source_meta

    target = _target(args)
    out = args.out or _default_out(args.model, f"{args.method}-{target.tag}")
    _check_out(args.model, out)
    calibration = _calibration(args)
    _check_calibrated(args, calibration)
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


def _cmd_compact(args: argparse.Namespace) -> int:
    from yoloprune.api import compact, save_checkpoint

    _check_out(args.model, args.out)
    report = compact(args.model)
    print(report.table())
    save_checkpoint(report.model, args.out, report.ckpt, {"compacted": report.summary()})
    print(f"saved {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from yoloprune.workflows.info import describe

    print(describe(args.model, imgsz=args.imgsz, verbose=args.verbose))
    return 0


def _add_speed_targets(p) -> None:
    p.add_argument("--target-speedup", type=float, default=None,
                   help="instead of --ratio: prune until the model runs this many times faster than the "
                        "unpruned one on --runtime, measured on this machine: every conv is timed at the widths "
                        "pruning can leave (a latency table, cached), and trial prunes are timed to check")
    p.add_argument("--target-latency", type=float, default=None, metavar="MS",
                   help="instead of --ratio: prune until the model runs in MS milliseconds (batch 1) on "
                        "--runtime on this machine")
    _add_runtime(p)


def _add_runtime(p) -> None:
    p.add_argument("--runtime", choices=defaults.SPEED_RUNTIMES, default=None,
                   help="where latency is measured: onnxruntime on the CPU (the ONNX export), or eager PyTorch (on "
                        f"the CUDA device when there is one, else the CPU); default {defaults.SPEED_RUNTIMES[0]}")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for timing (onnxruntime intra-op threads, or torch's); default 1")


def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="structured channel pruning with genuine removal")
    p.add_argument("--model", required=True, help="checkpoint (.pt: Ultralytics or original YOLOv5) or model yaml")
    p.add_argument("--ratio", type=_ratio, default=None,
                   help="fraction of prunable channels to remove, in [0, 1); default 0 when no other target is given")
    p.add_argument("--method", choices=tuple(defaults.CRITERIA_HELP), default=defaults.METHOD,
                   help="importance criterion: " + "; ".join(f"{k}: {h}" for k, h in defaults.CRITERIA_HELP.items()))
    p.add_argument("--scope", choices=("global", "uniform", "damage"), default="global",
                   help="widths: global: one score threshold across groups; uniform: the same fraction of every "
                        "group; damage: every group's width chosen together by the estimated damage per GFLOP saved "
                        "(with --calib-data)")
    p.add_argument("--selection", choices=("auto", "score", "obs"), default="auto",
                   help="channels within a group: score: the criterion's lowest; obs: those the refit absorbs best "
                        "(structured OBS, with calibration images); auto: obs when calibrated, else score")
    p.add_argument("--round-to", type=_positive_int, default=defaults.ROUND_TO,
                   help="keep widths multiples of N, as sweeps and the demo")
    p.add_argument("--min-channels", type=_positive_int, default=1)
    p.add_argument("--ignore", nargs="*", default=[], help="module names left alone, e.g. model.22")
    p.add_argument("--target-gflops", type=float, default=None,
                   help="instead of --ratio: prune until GFLOPs fall to this fraction of the original")
    _add_speed_targets(p)
    p.add_argument("--imgsz", type=_positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--layers", action="store_true",
                   help="with --method bn: also remove residual blocks whose branch |gamma| all fall under the threshold")
    p.add_argument("--calib-data", default=None,
                   help="data yaml (its train images) or a folder of images, no labels needed: fold removed "
                        "channels' means into the layers that read them, refit those layers by least squares to "
                        "reproduce the unpruned model, and feed data-aware criteria")
    p.add_argument("--no-calib", action="store_true",
                   help="no calibration, even where the checkpoint records training images on this machine (used "
                        "by default when --calib-data is not given)")
    p.add_argument("--calib-images", type=_positive_int, default=defaults.CALIB_IMAGES,
                   help="number of calibration images")
    p.add_argument("--calib-imgsz", type=_positive_int, default=defaults.CALIB_IMGSZ, help="calibration image size")
    p.add_argument("--no-reconstruct", action="store_true",
                   help="with --calib-data: mean compensation only, no least-squares refit")
    p.add_argument("--recalibrate-bn", action="store_true",
                   help="with --calib-data: re-estimate BatchNorm statistics on the calibration images afterwards")
    p.add_argument("--steps", type=_positive_int, default=1,
                   help="with --calib-data: reach the target in N prune-and-reconstruct steps, each reconstructing "
                        "towards the original model (no training; slower, a little more accurate)")
    p.add_argument("--out", default=None,
                   help="output checkpoint (default: <model>-<method>-<target>.pt: 0.3, g0.5, s1.3x or 12ms)")
    p.set_defaults(func=_cmd_prune)


def _cmd_iterative(args: argparse.Namespace) -> int:
    from yoloprune.workflows.iterative import IterativeConfig, iterative_prune

    _check_out(args.model, args.out)
    if args.target_speedup is None and (args.runtime is not None or args.threads is not None):
        raise ConfigError("--runtime and --threads say where --target-speedup is timed: give it with them")
    cfg = IterativeConfig(model=args.model, data=args.data, out=args.out, ratio=args.ratio,
                          target_gflops=args.target_gflops, target_speedup=args.target_speedup,
                          runtime=args.runtime or defaults.SPEED_RUNTIMES[0], threads=args.threads or 1,
                          steps=args.steps, epochs=args.epochs,
                          method=args.method,
                          round_to=args.round_to, distill=args.distill, max_map_drop=args.max_map_drop,
                          imgsz=args.imgsz, batch=args.batch, workers=args.workers, calib_images=args.calib_images)
    df = iterative_prune(cfg)
    print(df.to_string(index=False))
    print(f"saved {args.out} (step table beside it: {Path(args.out).stem}.steps.csv/.md)")
    return 0


def _add_iterative(sub) -> None:
    p = sub.add_parser("iterative", help="prune to a ratio or GFLOPs target in steps, with a short distilled "
                       "fine-tune after each")
    p.add_argument("--model", required=True, help="checkpoint to prune (also the distillation teacher)")
    p.add_argument("--data", required=True, help="data yaml: calibration (train), fine-tuning and val mAP")
    p.add_argument("--ratio", type=_ratio, default=None, help="overall fraction of prunable channels to remove")
    p.add_argument("--target-gflops", type=float, default=None, help="final GFLOPs as a fraction of the original")
    p.add_argument("--target-speedup", type=float, default=None,
                   help="final speed-up over the original on --runtime: a one-shot prune --target-speedup search "
                        "sets the final GFLOPs and channel block; each step's speed-up is measured and tabled")
    _add_runtime(p)
    p.add_argument("--steps", type=_positive_int, default=3, help="pruning steps")
    p.add_argument("--epochs", type=int, default=1, help="fine-tune epochs after each step")
    p.add_argument("--method", choices=tuple(defaults.CRITERIA_HELP), default=defaults.METHOD,
                   help="importance criterion")
    p.add_argument("--round-to", type=_positive_int, default=defaults.ROUND_TO, help="keep widths multiples of N")
    p.add_argument("--distill", action="store_true", help="fine-tune with the original model as the teacher")
    p.add_argument("--max-map-drop", type=float, default=None,
                   help="stop when the val metric (mAP50-95; a task model's own) falls more than this below the original's (e.g. 0.02)")
    p.add_argument("--calib-images", type=_positive_int, default=defaults.CALIB_IMAGES,
                   help="calibration images per step")
    p.add_argument("--imgsz", type=_positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--batch", type=_positive_int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", required=True, help="output checkpoint; the step table goes beside it")
    p.set_defaults(func=_cmd_iterative)


def _cmd_recover(args: argparse.Namespace) -> int:
    from yoloprune.engine.recover import RecoverConfig
    from yoloprune.workflows.recover import RecoverRun, recover_model

    _check_out(args.model, args.out)
    if args.teacher is not None:
        _check_out(args.teacher, args.out)
    minutes = None if args.epochs is not None else (args.minutes or defaults.RECOVER_MINUTES)
    training = RecoverConfig(epochs=args.epochs, minutes=minutes, lr=args.lr, batch=args.batch, seed=args.seed)
    out, _ = recover_model(RecoverRun(model=args.model, images=args.images, out=args.out, teacher=args.teacher,
                                      imgsz=args.imgsz, max_images=args.max_images, project=args.project,
                                      name=args.name, training=training))
    print(f"saved {out}")
    return 0


def _add_recover(sub) -> None:
    p = sub.add_parser("recover", help="label-free recovery: train a pruned model to reproduce the model it was "
                       "pruned from, on unlabeled images")
    p.add_argument("--model", required=True, help="pruned checkpoint (.pt)")
    p.add_argument("--images", required=True,
                   help="a folder of images (no labels are read) or a data yaml (its train images)")
    p.add_argument("--teacher", default=None, metavar="W",
                   help="the unpruned checkpoint (default: the one the model records as its source)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=_positive_int, default=None, help="train this many epochs")
    g.add_argument("--minutes", type=_positive_float, default=None,
                   help=f"train for this long (default without --epochs: {defaults.RECOVER_MINUTES:g})")
    p.add_argument("--imgsz", type=_positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--batch", type=_positive_int, default=defaults.RECOVER_BATCH)
    p.add_argument("--lr", type=_positive_float, default=defaults.RECOVER_LR, help="Adam learning rate")
    p.add_argument("--max-images", type=_positive_int, default=2000, help="read at most this many images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--project", default="runs", help="parent folder of the run folder")
    p.add_argument("--name", default=None, help="run folder name (default: recover, numbered if taken)")
    p.add_argument("--out", required=True, help="output checkpoint, in the model's own format")
    p.set_defaults(func=_cmd_recover)


def _add_compact(sub) -> None:
    p = sub.add_parser("compact", help="physically remove channels that are already exactly zero")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_compact)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="params, GFLOPs, sparsity, widths, frozen channels and why")
    p.add_argument("--model", required=True)
    p.add_argument("--imgsz", type=_positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--verbose", action="store_true", help="list every layer's width")
    p.set_defaults(func=_cmd_info)


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


def _add_val(sub) -> None:
    p = sub.add_parser("val", help="COCO mAP (pycocotools) and the Ultralytics validator's mAP")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="Ultralytics data yaml")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--imgsz", type=_positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--batch", type=_positive_int, default=16)
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    p.set_defaults(func=_cmd_val)


def _ratios(text: str) -> list[float]:
    values = [_ratio(t) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated ratios like 0,0.1,0.2, got {text!r}")
    return values


def _speedups(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or any(not v >= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated speed-ups >= 1 like 1,1.3,1.6, got {text!r}")
    return values


def _methods(text: str) -> list[str]:
    values = [t.strip() for t in text.split(",") if t.strip()]
    bad = [v for v in values if v not in defaults.SWEEP_METHODS]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"methods must be from {','.join(defaults.SWEEP_METHODS)}, got {text!r}")
    return values


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


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="prune at several ratios, evaluate, measure; table and plots")
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--ratios", type=_ratios, default=list(defaults.SWEEP_RATIOS))
    p.add_argument("--target-speedups", type=_speedups, default=None, metavar="X,Y,...",
                   help="instead of --ratios: points at these speed-ups over the unpruned model on onnxruntime "
                        "(CPU), measured on this machine (each pruned as prune --target-speedup does)")
    p.add_argument("--threads", type=_positive_int, default=1, help="onnxruntime threads for timing")
    p.add_argument("--int8", action="store_true",
                   help="also quantize every point's ONNX export (as export --int8 does): INT8 mAP and latency columns")
    p.add_argument("--method", type=_methods, default=[defaults.METHOD],
                   help="one or more criteria (l1,l2,bn,act,...) or unstructured (default: l1)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune every point for K epochs (default: 0)")
    p.add_argument("--distill", action="store_true", help="fine-tune points with the unpruned model as the teacher")
    p.add_argument("--recover-epochs", type=int, default=0,
                   help="label-free recovery of every pruned point for K epochs on the train images (no labels "
                        "read), towards the unpruned model, before any fine-tune")
    p.add_argument("--round-to", type=_positive_int, default=defaults.ROUND_TO,
                   help="keep pruned widths multiples of N: what CPU kernels turn into time")
    p.add_argument("--no-reconstruct", action="store_true",
                   help="mean compensation only: no least-squares refit from the calibration images")
    p.add_argument("--calib-images", type=_positive_int, default=defaults.CALIB_IMAGES,
                   help="train images for calibration")
    p.add_argument("--steps", type=_positive_int, default=1,
                   help="prune-and-reconstruct steps per point")
    p.add_argument("--layers", action="store_true",
                   help="bn rows also remove residual blocks whose branch falls under the gamma threshold")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--imgsz", type=_positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
    p.add_argument("--batch", type=_positive_int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where points are fine-tuned: cpu, 0, 0,1 (Ultralytics' device)")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR", help="join the results of these sweep folders")
    g = p.add_argument_group("on a Ray cluster (pip install \"yoloprune[ray]\")")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run each point as a Ray task: alone, on a local Ray instance started here; 'auto' or "
                        "host:port joins a running cluster (default: off)")
    g.add_argument("--cpus-per-point", type=_positive_float, default=1.0, help="Ray CPUs each point requests")
    g.add_argument("--gpus-per-point", type=_nonnegative_float, default=0.0,
                   help="Ray GPUs each point requests; points are fine-tuned on them")
    g.add_argument("--ray-cpus", type=_positive_int, default=None,
                   help="CPUs of the local Ray instance (default: all of this machine's)")
    g.add_argument("--ray-shared", action="store_true",
                   help="every node sees --model and --data at the same paths: ship nothing through Ray")
    p.add_argument("--out", required=True, help="output folder (rows already there are kept, not recomputed)")
    p.set_defaults(func=_cmd_sweep)


def _cmd_export(args: argparse.Namespace) -> int:
    from yoloprune.workflows.export import ExportConfig, export

    if args.format == "onnx":
        _check_out(args.model, args.out)
    cfg = ExportConfig(model=args.model, out=args.out, imgsz=args.imgsz, dynamic=args.dynamic,
                       simplify=args.simplify, data=args.data, baseline=args.baseline, int8=args.int8,
                       calib_data=args.calib_data, calib_images=args.calib_images, format=args.format)
    print(export(cfg).table())
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="ONNX export, checked with onnxruntime against PyTorch")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="output .onnx file (a folder for --format openvino / ncnn)")
    p.add_argument("--format", choices=("onnx", "openvino", "ncnn"), default="onnx",
                   help="onnx, or another runtime's format through Ultralytics' exporter (its package installed)")
    p.add_argument("--imgsz", type=_positive_int, default=None, help="image size (default: the checkpoint's training size, else 640; printed)")
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
    p.add_argument("--calib-images", type=_positive_int, default=64, help="INT8 calibration images to use")
    p.set_defaults(func=_cmd_export)


def _cmd_demo(args: argparse.Namespace) -> int:
    from yoloprune.workflows.demo import DemoConfig, run_demo

    given = {"ratios": args.ratios, "methods": args.method}
    run_demo(DemoConfig(out=args.out, model=args.model, data=args.data, slimmed=args.slimmed,
                        **{k: v for k, v in given.items() if v is not None}))
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job on the shipped data and weights: sweep, table, plots, export")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--ratios", type=_ratios, default=None, help="default: 0,0.1,0.2,...,0.6")
    p.add_argument("--method", type=_methods, default=None, help="criteria for the baseline model (default: l1)")
    p.add_argument("--model", default=None, help="default: the shipped weights/teabud-yolov8n.pt")
    p.add_argument("--data", default=None, help="default: the shipped data/teabud.yaml")
    p.add_argument("--slimmed", default=None, help="sparsity-trained model to sweep with bn and block removal "
                   "(default with the shipped baseline: weights/teabud-yolov8n-sparse.pt)")
    p.set_defaults(func=_cmd_demo)


def _add_make_data(sub) -> None:
    p = sub.add_parser("make-data", help="generate the tea-bud-style dataset")
    p.add_argument("--out", required=True, help="dataset folder; the data yaml is written beside it as <out>.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--imgsz", type=_positive_int, default=320)
    p.add_argument("--task", choices=("detect", "segment", "pose"), default="detect",
                   help="labels: boxes; + instance polygons; + the picking point (stem base) as a keypoint")
    p.set_defaults(func=_cmd_make_data)


def _train_options(p, epochs: int) -> None:
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=_positive_int, default=epochs)
    p.add_argument("--imgsz", type=_positive_int, default=320)
    p.add_argument("--batch", type=_positive_int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--lr0", type=float, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time", type=float, default=None,
                   help="hours of training; Ultralytics fits the epochs and LR schedule to it (overrides --epochs)")
    p.add_argument("--project", default="runs", help="parent folder of the run folder")
    p.add_argument("--name", default=None,
                   help="run folder name (default: the command, numbered if taken: finetune, finetune2, ...)")
    p.set_defaults(func=_cmd_train)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a detector from a yaml with the Ultralytics trainer")
    p.add_argument("--model", required=True, help="model yaml (e.g. yolov8n.yaml) or checkpoint")
    _train_options(p, epochs=50)
    p = sub.add_parser("finetune", help="fine-tune a pruned checkpoint, keeping its architecture")
    p.add_argument("--model", required=True, help="pruned checkpoint (.pt)")
    p.add_argument("--teacher", nargs="?", const="source", default=None, metavar="W",
                   help="distil from checkpoint W through Ultralytics' distill_model; --teacher alone: from the "
                        "checkpoint the model was pruned from (recorded in its metadata). Default: plain fine-tuning, "
                        "which did better in short runs on the tea-bud data (README)")
    p.add_argument("--dis", type=float, default=defaults.DISTILL_WEIGHT,
                   help="distillation loss weight (Ultralytics' own 6.0 swamped the detection loss here)")
    _train_options(p, epochs=10)
    p = sub.add_parser("train-sparse", help="sparsity training (L1 on prunable BN gammas) for network slimming; "
                       "from a checkpoint it uses the fine-tuning defaults")
    p.add_argument("--model", required=True, help="checkpoint (.pt) to start from, or a model yaml")
    p.add_argument("--sr", type=float, default=1e-4, help="L1 strength on BN gammas")
    p.add_argument("--sr-decay", action="store_true", help="decay sr linearly to 10%% over the run")
    _train_options(p, epochs=30)


def _add_sparsify(sub) -> None:
    p = sub.add_parser("sparsify", help="global or per-layer unstructured L1 sparsity (fake pruning)")
    p.add_argument("--model", required=True)
    p.add_argument("--amount", type=_ratio, required=True, help="fraction of conv weights set to zero, in [0, 1)")
    p.add_argument("--scope", choices=("global", "layer"), default="global")
    p.add_argument("--include-head", action="store_true", help="also sparsify the Detect output convs")
    p.add_argument("--imgsz", type=_positive_int, default=320, help="image size for the latency measurement")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_sparsify)


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit code 2, like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


# Help lines for options that are the same wherever they appear
_COMMON_HELP = {
    "--model": "checkpoint (.pt: Ultralytics or original YOLOv5) or model yaml",
    "--data": "data yaml (Ultralytics format)",
    "--out": "output path (written atomically; never the input)",
    "--split": "data split to evaluate",
    "--batch": "batch size",
    "--workers": "dataloader workers",
    "--scope": "global: one threshold across layers; uniform/layer: the same fraction in every group or layer",
    "--min-channels": "never keep fewer channels than this in a coupled group",
    "--ratios": "comma-separated prune ratios, each in [0, 1)",
    "--dynamic": "dynamic batch and image size in the ONNX graph",
    "--seed": "random seed",
    "--n-train": "training images", "--n-val": "validation images", "--n-test": "test images",
    "--epochs": "training epochs",
    "--lr0": "initial learning rate (default: Ultralytics' for train, 0.002 for finetune)",
    "--device": "cpu, or CUDA device(s) such as 0 or 0,1",
    "--imgsz": "image size",
}


def _document(parser: argparse.ArgumentParser) -> None:
    """Every option gets a help line, and every help line shows the option's default."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        if not action.help:
            action.help = _COMMON_HELP.get(action.option_strings[-1], action.dest.replace("_", " "))
        if action.default not in (None, False) and not action.required:
            action.help += " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="yoloprune", description="Structured pruning for YOLO detectors (Ultralytics models and "
                     "original YOLOv5 checkpoints).")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_info, _add_prune, _add_recover, _add_iterative, _add_compact, _add_sparsify, _add_val,
                _add_sweep, _add_export, _add_make_data, _add_train):
        add(sub)
    for name, p in sub.choices.items():
        if name != "make-data":
            p.add_argument("--trust-checkpoint", action="store_true",
                           help="load checkpoints that name classes outside the allow-list (this runs what the file "
                                f"names: only for files you trust; or set {defaults.TRUST_ENV}=1)")
        _document(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    trust_before = os.environ.get(defaults.TRUST_ENV)
    try:
        if getattr(args, "trust_checkpoint", False):  # the environment carries it to worker processes too
            os.environ[defaults.TRUST_ENV] = "1"
        if args.command not in ("make-data",):
            offline_runtime()
        _resolve_imgsz(args)
        return args.func(args)
    except YoloPruneError as e:
        print(f"yoloprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outputs are written atomically: whatever was finished is whole, nothing is half-written
        print(f"yoloprune: interrupted ({args.command}); finished outputs are kept, none is half-written"
              + ("; run the same command to resume" if args.command in ("sweep", "demo") else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    finally:
        if trust_before is None:
            os.environ.pop(defaults.TRUST_ENV, None)
        else:
            os.environ[defaults.TRUST_ENV] = trust_before


if __name__ == "__main__":
    sys.exit(main())
