"""Unstructured sparsity hits its amount, leaves no prune machinery behind; dead residual blocks are removed."""

from __future__ import annotations

import pytest
import torch
from conftest import build, rel_err

import yoloprune as yp
from yoloprune.api import hooks_for, sparsify
from yoloprune.engine.sparsity import target_convs
from yoloprune.engine.surgery import dead_blocks


@pytest.mark.parametrize("amount", [0.3, 0.6])
def test_global_and_layer_scopes_hit_the_amount_and_differ_per_layer(amount):
    g = sparsify(build("yolov8n.yaml"), amount, scope="global")
    u = sparsify(build("yolov8n.yaml"), amount, scope="layer")
    assert abs(g.sparsity - amount) < 0.01 and abs(u.sparsity - amount) < 0.01
    per_layer = torch.tensor(list(u.layers.values()))
    assert (per_layer - amount).abs().max() < 0.01, "per-layer scope gives every layer the same amount"
    spread = torch.tensor(list(g.layers.values()))
    assert spread.max() - spread.min() > 0.2, "a global threshold prunes layers unevenly"
    assert g.compressed_after < 0.95 * g.compressed_before
    assert g.params == sum(p.numel() for p in build("yolov8n.yaml").parameters()), "fake pruning keeps shapes"


def test_no_prune_machinery_left_and_head_outputs_untouched():
    model = build("yolo11n.yaml")
    hooks = hooks_for(model)
    head = {n: model.get_submodule(n).weight.clone() for n in hooks.head_output_convs(model)}
    sparsify(model, 0.5)
    assert head and all(torch.equal(model.get_submodule(n).weight, w) for n, w in head.items())
    for name, m in model.named_modules():
        assert not hasattr(m, "weight_orig") and not hasattr(m, "weight_mask"), name
        assert not m._forward_pre_hooks, name
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())
    assert set(head).isdisjoint(target_convs(model, hooks))
    assert set(head) <= set(target_convs(model, hooks, include_head=True))


def test_sparsity_zero_filters_are_reported():
    model = build("yolov8n.yaml")
    with torch.no_grad():
        model.model[0].conv.weight[:3] *= 1e-6  # three filters far below every other weight
    report = sparsify(model, 0.05)
    assert report.zero_filters.get("model.0.conv", 0) >= 3


def test_bad_amount_and_scope_refused():
    for kwargs in ({"amount": 1.0}, {"amount": -0.1}, {"amount": float("nan")}, {"amount": 0.2, "scope": "x"}):
        with pytest.raises(yp.ConfigError):
            sparsify(build("yolov8n.yaml"), **kwargs)


@pytest.mark.parametrize("yaml", ["yolov5nu.yaml", "yolov8n.yaml", "yolo11n.yaml"])
def test_zeroed_bottleneck_is_removed_with_outputs_unchanged(yaml):
    model = build(yaml)
    hooks = hooks_for(model)
    blocks = hooks.residual_blocks(model)
    victims = list(blocks)[:2]
    with torch.no_grad():
        for name in victims:
            bn = model.get_submodule(blocks[name].bn)
            bn.weight.zero_()
            bn.bias.zero_()
    assert dead_blocks(model, hooks) == victims
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)[0]
    params = sum(p.numel() for p in model.parameters())
    report = yp.compact(model)
    assert report.removed_blocks == victims
    assert sum(p.numel() for p in model.parameters()) < params - 1000
    assert not dead_blocks(model, hooks) and len(hooks.residual_blocks(model)) == len(blocks) - 2
    with torch.no_grad():
        assert rel_err(model(x)[0], ref) < 1e-5


def test_live_branch_is_kept():
    model = build("yolov8n.yaml")
    hooks = hooks_for(model)
    name, branch = next(iter(hooks.residual_blocks(model).items()))
    with torch.no_grad():
        model.get_submodule(branch.bn).weight.zero_()  # gamma zero but beta not: the branch still adds act(beta)
    assert name not in dead_blocks(model, hooks)


def test_compact_removes_constant_channels_whose_consumers_absorb_them_exactly():
    model = build("yolov8n.yaml")
    sppf = model.model[9]
    with torch.no_grad():
        sppf.cv1.conv.weight[:5] = 0  # constant channels: BN still adds its shift; SPPF's 1x1 cv2 absorbs it
        model.model[0].conv.weight[:2] = 0  # constant too, but read by a padded 3x3 conv: must stay
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)[0]
    report = yp.compact(model)
    assert sppf.cv1.conv.out_channels == 128 - 5 and sppf.cv2.conv.in_channels == 4 * (128 - 5)
    assert model.model[0].conv.out_channels == 16
    assert report.removed_units == 5
    with torch.no_grad():
        assert rel_err(model(x)[0], ref) < 1e-5


def test_bn_pruning_with_blocks_removes_near_dead_branches():
    model = build("yolov8n.yaml")
    names = list(hooks_for(model).residual_blocks(model))[:2]
    with torch.no_grad():
        for n in names:
            model.get_submodule(n).cv2.bn.weight.fill_(1e-4)  # slimmed away: far under every other |gamma|
    kept = build("yolov8n.yaml")
    with torch.no_grad():
        for n in names:
            kept.get_submodule(n).cv2.bn.weight.fill_(1e-4)
    report = yp.prune(model, ratio=0.2, method="bn", imgsz=128, blocks=True)
    assert report.removed_blocks == names and len(hooks_for(model).residual_blocks(model)) == len(hooks_for(kept).residual_blocks(kept)) - 2
    assert not yp.prune(kept, ratio=0.2, method="bn", imgsz=128).removed_blocks
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 128, 128))[0].shape == kept(torch.zeros(1, 3, 128, 128))[0].shape
    with pytest.raises(yp.ConfigError, match="bn"):
        yp.prune(build("yolov8n.yaml"), ratio=0.2, method="l1", blocks=True)
