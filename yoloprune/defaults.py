"""Defaults shared by the library, the commands, sweeps and the demo, in one place that imports nothing heavy (so
``--help`` answers at once and ``yp.prune(model, ratio=0.3)`` builds the model ``yoloprune prune --ratio 0.3``
builds)."""

from __future__ import annotations

METHOD = "l1"  # importance criterion
CALIB_IMAGES = 64  # calibration images: means for compensation, data-aware scores, least-squares reconstruction
CALIB_IMGSZ = 320  # calibration image size
ROUND_TO = 8  # pruned widths are multiples of this: what CPU kernels turn into time
SWEEP_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
RECOVER_MINUTES = 10.0  # label-free recovery's time budget when no epochs are given
RECOVER_LR = 1e-4  # its Adam learning rate (1e-3 recovered less on a real model; 2e-4 was level on tea-bud)
RECOVER_BATCH = 4
DISTILL_WEIGHT = 1.5  # feature-distillation weight (Ultralytics' default 6.0 cost mAP on tea-bud; docs/benchmarks.md)
# The built-in importance criteria and their help lines (``engine.importance.register`` adds more from Python)
SPEED_RUNTIMES = ("onnxruntime", "torch")  # where --target-speedup is measured (speed.runtimes.RUNTIMES)
UNSTRUCTURED = "unstructured"  # the sweep method that sparsifies (fake pruning) instead of removing channels
# Per task: the names of the primary and secondary metric that evaluation reports
TASK_METRICS: dict[str, tuple[str, str]] = {
    "detect": ("mAP50-95", "mAP50"),
    "segment": ("mask mAP50-95", "mask mAP50"),
    "pose": ("pose mAP50-95", "pose mAP50"),
    "obb": ("OBB mAP50-95", "OBB mAP50"),
    "classify": ("top-1 accuracy", "top-5 accuracy"),
}

# Set (to anything but 0) to load checkpoints that name classes outside the allow-list (sources.safe_pickle)
TRUST_ENV = "YOLOPRUNE_TRUST_CHECKPOINT"
