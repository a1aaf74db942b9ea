"""The command line: a thin layer over the library. ``main`` parses, runs the command, and turns a user's error
into one line on stderr with exit code 2 (Ctrl-C: one line, 130). The commands live in ``prune``, ``evaluate`` and
``train``; the option groups and value parsers they share, and the configs built from them, in ``options``."""

from __future__ import annotations

import argparse
import os
import sys

from yoloprune import defaults
from yoloprune.cli.evaluate import add_demo, add_export, add_sweep, add_val
from yoloprune.cli.optimize import add_optimize
from yoloprune.cli.options import document, resolve_imgsz
from yoloprune.cli.prune import add_compact, add_info, add_iterative, add_prune, add_recover, add_sparsify
from yoloprune.cli.train import add_make_data, add_train
from yoloprune.errors import YoloPruneError
from yoloprune.log import to_console
from yoloprune.runtime import offline_runtime


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit code 2, like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="yoloprune", description="Structured pruning for YOLO detectors (Ultralytics models and "
                     "original YOLOv5 checkpoints).")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_demo, add_info, add_prune, add_recover, add_iterative, add_compact, add_sparsify, add_val,
                add_sweep, add_export, add_optimize, add_make_data, add_train):
        add(sub)
    for name, p in sub.choices.items():
        if name != "make-data":
            p.add_argument("--trust-checkpoint", action="store_true",
                           help="load checkpoints that name classes outside the allow-list (this runs what the file "
                                f"names: only for files you trust; or set {defaults.TRUST_ENV}=1)")
        document(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    trust_before = os.environ.get(defaults.TRUST_ENV)
    try:
        if getattr(args, "trust_checkpoint", False):  # the environment carries it to worker processes too
            os.environ[defaults.TRUST_ENV] = "1"
        to_console()  # the library reports through logging; the command line shows it
        if args.command not in ("make-data",):
            offline_runtime()
        resolve_imgsz(args)
        return args.func(args)
    except YoloPruneError as e:
        print(f"yoloprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outputs are written atomically: whatever was finished is whole, nothing is half-written
        print(f"yoloprune: interrupted ({args.command}); finished outputs are kept, none is half-written"
              + ("; run the same command to resume" if args.command in ("sweep", "demo", "optimize") else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    finally:
        if trust_before is None:
            os.environ.pop(defaults.TRUST_ENV, None)
        else:
            os.environ[defaults.TRUST_ENV] = trust_before
