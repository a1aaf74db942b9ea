"""``yoloprune optimize``: one command from a trained detector to the fastest deployable file that still agrees with
it, with every figure measured on the file that ships.

Steps, each recorded in ``OUT/state.json`` when it ends (a rerun resumes after the last finished one and reuses its
files): ``baseline`` (the unpruned model exported to ONNX FP32, and INT8 unless told not to, timed in alternation:
the INT8 gain g; INT8 ships only when it is at least ``MIN_INT8_GAIN`` faster), ``prune`` (a speed target of X / g,
so that pruning and INT8 together make X), ``recover`` (label-free, towards the unpruned model), ``export`` (FP32,
then INT8 when it ships), ``verify`` (the shipped file timed beside the unpruned FP32 file, its agreement with the
unpruned model's detections on held-back images, and its mAP on ``--data``) and ``report`` (``report.md``,
``results.csv``, ``accuracy_vs_speedup.png``).
"""

from __future__ import annotations

from yoloprune.workflows.optimize.config import (
    MIN_INT8_GAIN,
    SHORTFALL,
    STEPS,
    OptimizeConfig,
    OptimizeResult,
    _Run,
)
from yoloprune.workflows.optimize.report import write_report
from yoloprune.workflows.optimize.steps import (
    _baseline,
    _export,
    _prune,
    _recover,
    _verify,
    agreement_data,
    split_images,
)


def optimize(cfg: OptimizeConfig) -> OptimizeResult:
    """Run (or resume) the steps in ``cfg.out``; returns what ships and what it was measured to do."""
    cfg.validate()
    run = _Run(cfg)
    run.out.mkdir(parents=True, exist_ok=True)
    base = run.step("baseline", lambda: _baseline(run))
    pruned = run.step("prune", lambda: _prune(run, base))
    run.step("recover", lambda: _recover(run, pruned))
    exported = run.step("export", lambda: _export(run, base, pruned))
    verified = run.step("verify", lambda: _verify(run, base, exported))
    run.step("report", lambda: write_report(run.out, cfg, run.state["steps"]))
    rows = verified["rows"]
    return OptimizeResult(run.out, run.file(exported["shipped"]), run.file("model.pt"),
                          exported.get("int8", base["int8"]),  # a state.json of an older export step: the baseline's
                          exported.get("int8_why", base["int8_why"]), base["target"], verified["speedup"],
                          verified["met"],
                          rows[-1].get("agreement"), rows,
                          {k: v["seconds"] for k, v in run.state["steps"].items()})


__all__ = ["MIN_INT8_GAIN", "SHORTFALL", "STEPS", "OptimizeConfig", "OptimizeResult", "agreement_data", "optimize",
           "split_images"]
