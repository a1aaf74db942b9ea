"""Commands that train or make data: train, finetune, train-sparse, make-data."""

from __future__ import annotations

import argparse
from pathlib import Path

from yoloprune import defaults
from yoloprune.cli.options import (
    check_out,
    positive_int,
)
from yoloprune.errors import ConfigError


def _cmd_train(args: argparse.Namespace) -> int:
    from yoloprune.workflows.train import TrainConfig, default_teacher, train

    check_out(args.model, args.out)
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


def train_options(p, epochs: int) -> None:
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=positive_int, default=epochs)
    p.add_argument("--imgsz", type=positive_int, default=320)
    p.add_argument("--batch", type=positive_int, default=16)
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


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a detector from a yaml with the Ultralytics trainer")
    p.add_argument("--model", required=True, help="model yaml (e.g. yolov8n.yaml) or checkpoint")
    train_options(p, epochs=50)
    p = sub.add_parser("finetune", help="fine-tune a pruned checkpoint, keeping its architecture")
    p.add_argument("--model", required=True, help="pruned checkpoint (.pt)")
    p.add_argument("--teacher", nargs="?", const="source", default=None, metavar="W",
                   help="distil from checkpoint W through Ultralytics' distill_model; --teacher alone: from the "
                        "checkpoint the model was pruned from (recorded in its metadata). Default: plain fine-tuning, "
                        "which did better in short runs on the tea-bud data (README)")
    p.add_argument("--dis", type=float, default=defaults.DISTILL_WEIGHT,
                   help="distillation loss weight (Ultralytics' own 6.0 swamped the detection loss here)")
    train_options(p, epochs=10)
    p = sub.add_parser("train-sparse", help="sparsity training (L1 on prunable BN gammas) for network slimming; "
                       "from a checkpoint it uses the fine-tuning defaults")
    p.add_argument("--model", required=True, help="checkpoint (.pt) to start from, or a model yaml")
    p.add_argument("--sr", type=float, default=1e-4, help="L1 strength on BN gammas")
    p.add_argument("--sr-decay", action="store_true", help="decay sr linearly to 10%% over the run")
    train_options(p, epochs=30)


def _cmd_make_data(args: argparse.Namespace) -> int:
    from yoloprune.data.teabud import TeaBudConfig, generate

    cfg = TeaBudConfig(out=Path(args.out), seed=args.seed, n_train=args.n_train, n_val=args.n_val,
                       n_test=args.n_test, imgsz=args.imgsz, task=args.task)
    print(f"data yaml: {generate(cfg)}")
    return 0


def add_make_data(sub) -> None:
    p = sub.add_parser("make-data", help="generate the tea-bud-style dataset")
    p.add_argument("--out", required=True, help="dataset folder; the data yaml is written beside it as <out>.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--imgsz", type=positive_int, default=320)
    p.add_argument("--task", choices=("detect", "segment", "pose"), default="detect",
                   help="labels: boxes; + instance polygons; + the picking point (stem base) as a keypoint")
    p.set_defaults(func=_cmd_make_data)
