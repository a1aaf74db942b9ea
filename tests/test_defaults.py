"""One set of defaults: the library, the command line, sweeps, iterative pruning and the demo agree."""

from __future__ import annotations

import inspect

import torch
from conftest import build

import yoloprune as yp
from yoloprune import defaults
from yoloprune.cli import build_parser, main
from yoloprune.data.images import calibration_images
from yoloprune.workflows.demo import DemoConfig
from yoloprune.workflows.iterative import IterativeConfig
from yoloprune.workflows.sweep import SweepConfig


def _defaults(command: str) -> dict:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return {a.dest: a.default for a in sub._actions}


def test_library_and_command_line_defaults_are_the_same():
    prune, sweep, iterative = _defaults("prune"), _defaults("sweep"), _defaults("iterative")
    cfg = yp.PruneConfig()
    assert prune["round_to"] == cfg.round_to == sweep["round_to"] == iterative["round_to"] == defaults.ROUND_TO == 8
    assert SweepConfig("m", "d", "o").round_to == IterativeConfig("m", "d", "o").round_to == defaults.ROUND_TO
    assert prune["method"] == cfg.method == iterative["method"] == defaults.METHOD
    assert prune["selection"] == cfg.selection == "auto" and prune["scope"] == cfg.scope == "global"
    assert sweep["method"] == SweepConfig("m", "d", "o").methods == DemoConfig().methods == [defaults.METHOD]
    calib_default = inspect.signature(calibration_images).parameters["n"].default
    assert prune["calib_images"] == sweep["calib_images"] == iterative["calib_images"] == calib_default
    assert calib_default == SweepConfig("m", "d", "o").calib_images == IterativeConfig("m", "d", "o").calib_images
    assert prune["calib_imgsz"] == inspect.signature(calibration_images).parameters["imgsz"].default
    assert sweep["ratios"] == SweepConfig("m", "d", "o").ratios == list(defaults.SWEEP_RATIOS)
    from yoloprune.engine.recover import RecoverConfig

    recover, training = _defaults("recover"), RecoverConfig()
    assert (recover["lr"], recover["batch"]) == (training.lr, training.batch) == (defaults.RECOVER_LR, 4)
    assert training.minutes == defaults.RECOVER_MINUTES and recover["minutes"] is None  # None: the default budget


def test_library_prune_builds_the_model_the_command_builds(tmp_path):
    """``yp.prune(model, ratio=0.3)`` and ``yoloprune prune --ratio 0.3`` give the same widths, in multiples of 8."""
    path = tmp_path / "m.pt"
    yp.save_checkpoint(build("yolov8n.yaml"), path)
    library = yp.prune(str(path), ratio=0.3).model
    assert main(["prune", "--model", str(path), "--ratio", "0.3", "--imgsz", "64", "--out", str(tmp_path / "c.pt")]) == 0
    command, _ = yp.load_model(tmp_path / "c.pt")
    shapes = {k: tuple(v.shape) for k, v in library.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in command.state_dict().items()}
    full = build("yolov8n.yaml")
    widths = [m.out_channels for n, m in library.named_modules() if isinstance(m, torch.nn.Conv2d)
              and m.out_channels != full.get_submodule(n).out_channels]
    assert widths and all(w % 8 == 0 for w in widths)
