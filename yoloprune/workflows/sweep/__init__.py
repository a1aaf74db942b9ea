"""Ratio-vs-mAP sweeps: prune one base model at several ratios (and methods), optionally fine-tune, evaluate,
and measure what each point costs and buys. Rows are keyed by (method, ratio, finetune_epochs); a sweep started
again computes only the missing rows, and shards run on several machines merge into one table.

In parts: ``config`` (``SweepConfig``), ``run`` (the jobs and the runner), ``results`` (CSV, resume, Markdown,
merge) and ``plots``.
"""

from yoloprune.workflows.sweep.config import COLUMNS, FAILED, KEY, SweepConfig, sweep_methods, title
from yoloprune.workflows.sweep.plots import plot
from yoloprune.workflows.sweep.results import (
    combine,
    done_keys,
    is_unpruned,
    markdown,
    merge,
    read_results,
    reuse_unpruned,
    tag,
    todo,
    write_results,
)
from yoloprune.workflows.sweep.run import add_row, finish, prepare, run_job, start, sweep

__all__ = ["COLUMNS", "FAILED", "KEY", "SweepConfig", "add_row", "combine", "done_keys", "finish", "is_unpruned",
           "markdown", "merge", "plot", "prepare", "read_results", "reuse_unpruned", "run_job", "start", "sweep",
           "sweep_methods", "tag", "title", "todo", "write_results"]
