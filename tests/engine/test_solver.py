"""Widths by estimated damage and channels by the refit's objective (engine.solver)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build
from torch import nn

import yoloprune as yp
from yoloprune.api import gflops
from yoloprune.engine.graph import Member, Unit
from yoloprune.engine.plan import PruneConfig, allowed_removals
from yoloprune.engine.reconstruct import record
from yoloprune.engine.solver import Consumer, Curve, _Layer, allocate, removal_curve


def _group(layer: str, n: int, start: int) -> list[Unit]:
    """``n`` units, each one output channel of ``layer`` read by ``layer + '_next'``."""
    return [Unit(start + i, [Member(layer, 0, i), Member(f"{layer}_next", 1, i)]) for i in range(n)]


def test_allocation_takes_the_cheaper_group_meets_the_budget_within_a_step_and_never_empties_one():
    groups = [_group("a", 32, 0), _group("b", 32, 100)]
    steep = Curve(list(range(32)), [float(r) ** 2 for r in range(33)])
    flat = Curve(list(range(32)), [0.01 * r for r in range(33)])
    cfg = PruneConfig(round_to=8)
    allowed = [allowed_removals(32, cfg)] * 2
    assert allowed[0] == [0, 8, 16, 24]  # widths 32, 24, 16, 8: never 0
    layers = {n: _Layer(100.0, 32, 32, False) for n in ("a", "a_next", "b", "b_next")}  # equal FLOPs per channel
    one_step = 8 * 100.0 * 32 * 2  # a step of 8 channels: out of the layer and into the next
    counts = allocate(groups, [steep, flat], allowed, copy.deepcopy(layers), budget=2 * one_step, by_flops=True)
    assert counts == [0, 16], "the group whose removals cost less is cut first"
    counts = allocate(groups, [steep, flat], allowed, copy.deepcopy(layers), budget=1e12, by_flops=True)
    assert counts == [24, 24]  # everything allowed, and no group emptied
    counts = allocate(groups, [steep, flat], allowed, copy.deepcopy(layers), budget=20, by_flops=False)
    assert sum(counts) >= 20 and sum(counts) - 20 < 8  # a count budget: met within one step


def test_obs_removes_a_duplicated_channel_at_no_cost_and_its_update_keeps_the_output():
    torch.manual_seed(0)
    a, b = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 2, 1)
    with torch.no_grad():
        a.weight[3] = a.weight[1]
        a.bias[3] = a.bias[1]  # channel 3 duplicates channel 1
    model = nn.Sequential(a, nn.ReLU(), b).eval()
    x = torch.randn(16, 8, 8, 8)
    ref = record(model, x, {})
    consumer = Consumer(b, "2", ref, None)
    costs = consumer.costs()
    assert float(costs[3]) < 0.05 * float(costs[[0, 2]].min())  # what channel 1 carries anyway is (nearly) free
    curve = removal_curve([Unit(i, [Member("0", 0, i), Member("2", 1, i)]) for i in range(4)], dict(
        model.named_modules()), {}, ref, torch.tensor([0.0, 1.0, 2.0, 3.0]), "obs", 2)
    assert curve.order[0] in (1, 3), "OBS drops one of the twins first, whatever the scores say"
    assert curve.damage[1] < 0.05 * (curve.damage[2] - curve.damage[1])  # and the next removal costs far more
    consumer.remove(3)
    kept = [0, 1, 2]
    refit = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        refit.weight.copy_(consumer.w[:, kept].reshape(2, 3, 1, 1).float())
        refit.bias.copy_(b.bias)
        inputs = model[1](a(x))
        err = (refit(inputs[:, kept]) - b(inputs)).abs().max() / b(inputs).abs().max()
    assert err < 1e-2, "the weight update moves the dropped channel's weights onto its twin"


@pytest.mark.parametrize("scope,selection", [("damage", "score"), ("damage", "obs"), ("global", "obs")])
def test_damage_widths_and_obs_selection_reach_the_gflops_target_and_run(scope, selection):
    model = build("yolov8n.yaml")
    g0 = gflops(model, 64)
    calib = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    report = yp.prune(model, config=yp.PruneConfig(imgsz=64, scope=scope, selection=selection), target=yp.Gflops(0.6),
                      calibration=calib)
    assert 0.5 < gflops(model, 64) / g0 <= 0.6
    assert report.refits and model(torch.rand(1, 3, 64, 64))[0].shape[1] == 4 + 80
    widths = [m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
              and m.out_channels != build("yolov8n.yaml").get_submodule(n).out_channels]
    assert widths and all(w % 8 == 0 for w in widths)


def test_damage_and_obs_need_calibration():
    for kw in ({"scope": "damage"}, {"selection": "obs"}):
        with pytest.raises(yp.ConfigError, match="calibration"):
            yp.prune(build("yolov8n.yaml"), ratio=0.3, **kw)


def test_auto_selection_is_obs_with_calibration_and_score_without():
    calib = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    def pruned(calibration, selection):
        model = build("yolov8n.yaml")
        yp.prune(model, config=yp.PruneConfig(imgsz=64, selection=selection), target=yp.Ratio(0.4), calibration=calibration)
        return model.state_dict()

    def same(a, b):
        return all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a.values(), b.values(), strict=True))

    auto, obs, score = (pruned(calib, s) for s in ("auto", "obs", "score"))
    assert same(auto, obs) and not same(auto, score)
    assert same(pruned(None, "auto"), pruned(None, "score"))
