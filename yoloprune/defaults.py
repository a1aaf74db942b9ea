"""Defaults shared by the commands and the library, in one place that imports nothing heavy (so ``--help`` answers
at once and prune, sweep, iterative and the demo agree)."""

from __future__ import annotations

CALIB_IMAGES = 64  # calibration images: means for compensation, data-aware scores, least-squares reconstruction
ROUND_TO = 8  # commands keep pruned widths multiples of this: what CPU kernels turn into time
DISTILL_WEIGHT = 1.5  # feature-distillation weight (Ultralytics' default 6.0 cost mAP on tea-bud; README)
# The built-in importance criteria and their help lines (``importance.register`` adds more from Python)
CRITERIA_HELP = {
    "l1": "L1 norm of the BN-scaled filters that produce the channel",
    "l2": "L2 norm of the BN-scaled filters that produce the channel",
    "bn": "|gamma| of the channel's BatchNorms (network slimming)",
    "act": "data-aware: what the channel adds to its consumers' normalised outputs beyond its mean",
}
SWEEP_METHODS = (*CRITERIA_HELP, "unstructured")
