"""The command line's shared parts: value parsers, option groups (runtime, speed targets, training)
used by several commands, and the configs and targets built from them in one place."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from yoloprune import defaults
from yoloprune.errors import ConfigError, check_ratio


def ratio(text: str) -> float:
    try:
        return check_ratio(float(text))
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(f"ratio must be a number in [0, 1), got {text!r}") from None


def float_at_least(low: float, strict: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected a number {'>' if strict else '>='} {low:g}, got {text!r}")
        return value
    return parse


positive_float = float_at_least(0.0, strict=True)


nonnegative_float = float_at_least(0.0, strict=False)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def check_out(model: str, out: str | None) -> None:
    """Outputs never overwrite the input checkpoint."""
    if out is None:
        return
    if Path(out).resolve() == Path(model).resolve():
        raise ConfigError(f"--out {out} is the input model; choose another path (inputs are never overwritten)")
    if Path(out).is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file path")


def resolve_imgsz(args: argparse.Namespace) -> None:
    """One image size for GFLOPs, evaluation and export in every command whose --imgsz defaults to None: --imgsz,
    else the checkpoint's training size, else 640."""
    if getattr(args, "imgsz", 0) is not None or not getattr(args, "model", None):
        return
    from yoloprune.sources import train_imgsz

    size = train_imgsz(args.model)
    args.imgsz = size or 640
    why = "the checkpoint's training size" if size else "default"
    print(f"image size {args.imgsz} px ({why}; --imgsz to change)", flush=True)


def default_out(model: str, tag: str) -> str:
    path = Path(model)
    return str(path.with_name(f"{path.stem}-{tag}.pt"))


def calibration_from(args: argparse.Namespace):
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
    views = getattr(args, "calib_views", False)  # prune's option; other commands calibrate on the images as they are
    return None if source is None else calibration_images(source, args.calib_imgsz, args.calib_images, views=views)


def target_from(args: argparse.Namespace):
    """The one target the options name (``--ratio``, ``--target-gflops``, ``--target-speedup`` or
    ``--target-latency``; ratio 0 when none), refusing two at once and a runtime given without a speed target."""
    from yoloprune.targets import Gflops, Latency, Ratio, Speedup

    latency = getattr(args, "target_latency", None)  # commands without --target-latency (iterative)
    given = {"--ratio": args.ratio, "--target-gflops": args.target_gflops,
             "--target-speedup": args.target_speedup, "--target-latency": latency}
    named = [k for k, v in given.items() if v is not None]
    if len(named) > 1:
        raise ConfigError(f"give one target, not {' and '.join(named)}")
    timed = args.target_speedup is not None or latency is not None
    if not timed and (args.runtime is not None or args.threads is not None):
        raise ConfigError("--runtime and --threads say where a speed target is timed: give --target-speedup or "
                          "--target-latency with them")
    where = {"runtime": args.runtime or defaults.SPEED_RUNTIMES[0], "threads": args.threads or 1}
    if args.target_speedup is not None:
        return Speedup(args.target_speedup, **where)
    if latency is not None:
        return Latency(latency, **where)
    if args.target_gflops is not None:
        return Gflops(args.target_gflops)
    return Ratio(args.ratio or 0.0)


def check_calibrated(args: argparse.Namespace, calibration) -> None:
    """Options that act on calibration images are refused without them, not dropped."""
    if calibration is None:
        used = [f for f, on in (("--no-reconstruct", args.no_reconstruct), ("--recalibrate-bn", args.recalibrate_bn),
                                ("--steps", args.steps > 1), ("--calib-views", getattr(args, "calib_views", False)))
                if on]
        if used:
            raise ConfigError(f"{', '.join(used)} act on calibration images: give --calib-data (none was found)")


def add_speed_targets(p) -> None:
    p.add_argument("--target-speedup", type=float, default=None,
                   help="instead of --ratio: prune until the model runs this many times faster than the "
                        "unpruned one on --runtime, measured on this machine: every conv is timed at the widths "
                        "pruning can leave (a latency table, cached), and trial prunes are timed to check")
    p.add_argument("--target-latency", type=float, default=None, metavar="MS",
                   help="instead of --ratio: prune until the model runs in MS milliseconds (batch 1) on "
                        "--runtime on this machine")
    add_runtime(p)


def add_runtime(p) -> None:
    p.add_argument("--runtime", choices=defaults.SPEED_RUNTIMES, default=None,
                   help="where latency is measured: onnxruntime on the CPU (the ONNX export), or eager PyTorch (on "
                        f"the CUDA device when there is one, else the CPU); default {defaults.SPEED_RUNTIMES[0]}")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for timing (onnxruntime intra-op threads, or torch's); default 1")


def ratios(text: str) -> list[float]:
    values = [ratio(t) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated ratios like 0,0.1,0.2, got {text!r}")
    return values


def speedups(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or any(not v >= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated speed-ups >= 1 like 1,1.3,1.6, got {text!r}")
    return values


def criteria() -> dict[str, str]:
    """The criteria registry's names and help lines (``engine.importance.register``): the one list of methods."""
    from yoloprune.engine.criteria import CRITERIA

    return {name: e.help for name, e in CRITERIA.items()}


def methods(text: str) -> list[str]:
    known = (*criteria(), defaults.UNSTRUCTURED)  # as workflows.sweep.sweep_methods, without importing pandas
    values = [t.strip() for t in text.split(",") if t.strip()]
    bad = [v for v in values if v not in known]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"methods must be from {','.join(known)}, got {text!r}")
    return values


# Help lines for options that are the same wherever they appear
COMMON_HELP = {
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


def document(parser: argparse.ArgumentParser) -> None:
    """Every option gets a help line, and every help line shows the option's default."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        if not action.help:
            action.help = COMMON_HELP.get(action.option_strings[-1], action.dest.replace("_", " "))
        if action.default not in (None, False) and not action.required:
            action.help += " (default: %(default)s)"
