"""Coupling graph on small hand-built modules: every rule, including the conservative ones."""

from __future__ import annotations

import pytest
import torch
from conftest import PLAIN
from torch import nn

import yoloprune as yp
from yoloprune.engine.plan import plan
from yoloprune.engine.prune import apply


class Residual(nn.Module):
    def __init__(self, gate: bool = False, unknown: bool = False):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(16, 4, 1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gamma = nn.Parameter(torch.ones(8, 1, 1)) if gate else None
        self.unknown = unknown

    def forward(self, x):
        y = torch.relu(self.bn(self.a(x)))
        z = self.b(y)
        if self.gamma is not None:
            z = z * self.gamma
        if self.unknown:
            z = z.flip(1)  # reorders channels: not understood, so frozen
        return self.head(torch.cat([y + z, self.dw(y)], 1))


def _unit_of(graph, module: str, dim: int, index: int):
    return next(u for u in graph.units if any(m.module == module and m.dim == dim and m.index == index for m in u.members))


def test_residual_add_couples_and_cat_offsets_map_consumers():
    g = yp.trace(Residual())
    u = _unit_of(g, "a", 0, 2)
    assert not u.frozen
    touched = {(m.module, m.dim, m.index) for m in u.members}
    # a's channel 2 is b's channel 2 (add), bn's 2, the depthwise conv's 2, and head inputs 2 and 8+2 (cat offsets)
    assert {("b", 0, 2), ("bn", 0, 2), ("dw", 0, 2), ("dw", 1, 2), ("head", 1, 2), ("head", 1, 10)} <= touched
    assert len(g.groups()) == 1  # a, b, bn, dw and head's inputs form one coupled group of 8 units


def test_pruned_toy_matches_masked_toy():
    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.randn(2, 3, 16, 16)
    g = yp.trace(model)
    p = plan(model, g, yp.PruneConfig(round_to=1), 0.5)
    yp.mask(model, p)
    with torch.no_grad():
        masked = model(x)
    apply(model, p, PLAIN)
    assert model.a.out_channels == 4 and model.dw.groups == 4 and model.head.in_channels == 8
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-6)


@pytest.mark.parametrize("kind", ["gate", "unknown"])
def test_channels_through_unknown_ops_or_params_are_frozen(kind):
    g = yp.trace(Residual(**{kind: True}))
    assert _unit_of(g, "a", 0, 0).frozen
    assert _unit_of(g, "b", 0, 0).frozen
    assert g.groups() == {} or all(("a", 0) not in k for k in g.groups())


def test_trace_restores_mode_and_leaves_no_state():
    model = Residual().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    yp.trace(model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_layer_never_reached_is_refused():
    model = Residual()
    model.spare = nn.Conv2d(8, 8, 1)  # defined but unused in forward: its coupling is unknown
    with pytest.raises(yp.UnsupportedModelError, match="spare"):
        yp.trace(model)


def test_detect_outputs_frozen_and_neck_prunable():
    from ultralytics.nn.tasks import DetectionModel

    from yoloprune.api import trace_model

    g = trace_model(DetectionModel("yolov8n.yaml", verbose=False))
    assert _unit_of(g, "model.22.cv3.0.2", 0, 0).frozen
    assert _unit_of(g, "model.22.dfl.conv", 1, 0).frozen
    assert not _unit_of(g, "model.15.cv2.conv", 0, 0).frozen  # P3 neck output feeding the head


class ConstChannel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b, self.bn2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1), \
            nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.b(torch.nn.functional.silu(self.bn(self.a(x)))))


def test_mean_compensation_is_exact_for_a_constant_channel_and_helps_otherwise():
    from yoloprune.engine.compensate import input_means
    from yoloprune.engine.graph import trace
    from yoloprune.engine.plan import Plan

    torch.manual_seed(0)
    toy = ConstChannel().eval()
    with torch.no_grad():
        toy.a.weight[2] = 0
        toy.a.bias[2] = 0
        toy.bn.bias[2] = 0.7  # channel 2 is now silu(0.7) everywhere
    x = torch.rand(4, 3, 16, 16)
    ref = toy(x)
    graph = trace(toy, x[:1])
    unit = _unit_of(graph, "a", 0, 2)
    plain, comp = (ConstChannel() for _ in range(2))
    for m in (plain, comp):
        m.load_state_dict(toy.state_dict())
        m.eval()
    apply(plain, Plan(graph, frozenset({unit.id})), PLAIN)
    apply(comp, Plan(graph, frozenset({unit.id})), PLAIN, means=input_means(comp, x, {"b"}))
    assert comp.b.in_channels == plain.b.in_channels == 7
    assert (plain(x) - ref).abs().max() > 0.01
    assert torch.allclose(comp(x), ref, atol=1e-5)
