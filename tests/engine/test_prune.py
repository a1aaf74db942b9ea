"""Structured pruning: exactness of masking vs removal vs compaction, shapes, params, trainability."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import PLAIN, assert_masked_equals_removed_equals_compacted, build, head_out, rel_err

import yoloprune as yp
from yoloprune.api import apply, trace_model
from yoloprune.engine.compact import dead_units
from yoloprune.engine.surgery import channels

_out = head_out


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_masked_equals_removed_equals_compacted(family, ratio):
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    assert_masked_equals_removed_equals_compacted(lambda: build(family), ratio, x)


@pytest.mark.parametrize("ratio", [0.1, 0.4, 0.7])
def test_prune_ratios_keep_model_working(family, ratio):
    model = build(family)
    x = torch.randn(2, 3, 160, 160)
    shape = _out(model, x).shape
    params = sum(q.numel() for q in model.parameters())
    report = yp.prune(model, ratio=ratio, method="l1", imgsz=160)
    assert report.after.params < report.before.params == params
    assert report.after.gflops < report.before.gflops
    assert _out(model, x).shape == shape
    assert torch.isfinite(_out(model, x)).all()
    model.train()
    preds = model(x)
    loss = sum(v.float().pow(2).mean() for v in _leaves(preds))
    loss.backward()
    grads = [q.grad for q in model.parameters() if q.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def _leaves(out):
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from _leaves(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from _leaves(v)


def test_higher_ratio_prunes_more():
    sizes = []
    for r in (0.0, 0.2, 0.4, 0.6):
        model = build("yolov8n.yaml")
        sizes.append(yp.prune(model, ratio=r, imgsz=128).after.params)
    assert sizes[0] == sum(q.numel() for q in build("yolov8n.yaml").parameters())
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4


@pytest.mark.parametrize("method", ["l1", "l2", "bn"])
def test_methods_rank_differently_but_all_prune(method):
    model = build("yolov8n.yaml")
    report = yp.prune(model, ratio=0.3, method=method, imgsz=128)
    assert 0 < report.removed_units < report.prunable_units
    assert report.after.params < report.before.params


def test_bn_method_removes_smallest_gammas_first():
    model = build("yolov8n.yaml")
    bn = model.model[0].bn
    with torch.no_grad():
        bn.weight[:4] = 1e-4  # four near-dead channels in the stem
    yp.prune(model, ratio=0.25, method="bn", scope="uniform", imgsz=128, round_to=1)
    assert bn.num_features == 12
    assert bn.weight.abs().min() > 0.4  # exactly the four tiny gammas went


def test_round_to_and_min_channels():
    model = build("yolov8n.yaml")
    before = {n: channels(m, 0) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    yp.prune(model, ratio=0.6, round_to=8, min_channels=8, imgsz=128)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.num_features != before[name]:
            assert m.num_features % 8 == 0 and m.num_features >= 8, name


def test_ignored_layers_are_left_alone():
    model = build("yolov8n.yaml")
    widths = {n: m.out_channels for n, m in model.named_modules() if n.startswith("model.9.") and hasattr(m, "out_channels")}
    yp.prune(model, ratio=0.5, ignore=("model.9",), imgsz=128)
    for n, w in widths.items():
        assert dict(model.named_modules())[n].out_channels == w


def test_uniform_scope_prunes_every_group_by_ratio():
    model = build("yolov8n.yaml")
    graph = trace_model(model)
    p = yp.plan(model, graph, yp.PruneConfig(scope="uniform"), 0.5)
    for units in graph.groups().values():
        n_removed = sum(u.id in p.remove for u in units)
        assert n_removed == min(int(0.5 * len(units)), len(units) - 1)


def test_target_gflops_reaches_fraction():
    model = build("yolov8n.yaml")
    report = yp.prune(model, target=yp.Gflops(0.5), imgsz=128)
    assert report.after.gflops <= 0.5 * report.before.gflops
    assert report.after.gflops > 0.35 * report.before.gflops  # bisection lands near the target


def test_compact_keeps_channels_whose_zero_filter_still_emits_bn_shift():
    """A zeroed conv filter followed by BN outputs act(beta - mean*gamma/std) != 0: removing it would change outputs."""
    model = build("yolov8n.yaml")
    with torch.no_grad():
        model.model[0].conv.weight[:3] = 0
    assert dead_units(model, trace_model(model)) == []


def test_compact_removes_bn_zeroed_channels_exactly():
    model = build("yolov5nu.yaml")
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        for bn in (model.model[0].bn, model.model[1].bn):
            bn.weight[:5] = 0
            bn.bias[:5] = 0
    ref = _out(model, x)
    report = yp.compact(model)
    assert report.removed_units == 10
    assert model.model[0].conv.out_channels == 11 and model.model[1].conv.in_channels == 11
    assert rel_err(_out(model, x), ref) < 1e-5


def test_c2f_split_width_matches_after_pruning():
    """The ONNX exporter switches C2f to forward_split, which splits at `c`: it must follow the new width."""
    from ultralytics.nn.modules import C2f

    model = build("yolov8n.yaml")
    yp.prune(model, ratio=0.4, imgsz=128)
    x = torch.randn(1, 3, 128, 128)
    ref = _out(model, x)
    for m in model.modules():
        if isinstance(m, C2f):
            assert 2 * m.c == m.cv1.conv.out_channels
            m.forward = m.forward_split
    assert rel_err(_out(model, x), ref) < 1e-6


def test_bad_config_is_refused():
    model = build("yolov8n.yaml")
    for kwargs in ({"ratio": 1.0}, {"ratio": -0.1}, {"ratio": float("nan")}, {"method": "l3"}, {"scope": "x"}):
        with pytest.raises(yp.ConfigError):
            yp.prune(model, **kwargs)


class _StrictWidth(torch.nn.Module):
    """Checks its width against a number stored at build time: invisible to the graph, broken by pruning."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.width = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 4, 1), 8

    def forward(self, x):
        y = self.a(x)
        if y.shape[1] != self.width:
            raise RuntimeError("width changed")
        return self.b(y)


def test_model_broken_by_pruning_is_refused_and_left_untouched():
    from yoloprune.engine.graph import trace
    from yoloprune.engine.plan import PruneConfig, plan
    from yoloprune.engine.prune import apply_checked

    model = _StrictWidth().eval()
    graph = trace(model, imgsz=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(yp.UnsupportedModelError, match="no longer runs"):
        apply_checked(model, plan(model, graph, PruneConfig(round_to=1), 0.5), PLAIN)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model(torch.zeros(1, 3, 8, 8))


def test_yolo26_width_read_from_shape_is_frozen_and_it_prunes_exactly():
    """YOLO26's attention reads C from x.shape and views another tensor with it: those channels must be frozen."""
    base = build("yolo26n.yaml")
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    graph = trace_model(base)
    p = yp.plan(base, graph, yp.PruneConfig(), 0.4)
    masked, removed = copy.deepcopy(base), copy.deepcopy(base)
    yp.mask(masked, p)
    apply(removed, p)
    with torch.no_grad():
        assert rel_err(removed(x)[0], masked(x)[0]) < 1e-5
    assert sum(q.numel() for q in removed.parameters()) < 0.8 * sum(q.numel() for q in base.parameters())
    assert any("width read from a shape" in u.frozen for u in graph.units)
    copy.deepcopy(base)  # a shape the model cached during the trace (Detect.shape) still copies and pickles


def test_bn_ratio_above_the_safe_maximum_is_refused():
    from yoloprune.engine.importance import ScoreContext, group_scores
    from yoloprune.engine.plan import safe_max_ratio

    model = build("yolov8n.yaml")
    graph = trace_model(model)
    ctx = ScoreContext(dict(model.named_modules()), graph.bn_after)
    safe = safe_max_ratio([group_scores(us, ctx, "bn") for us in graph.groups().values()])
    assert 0.3 < safe < 0.99
    from yoloprune.workflows.info import describe

    assert f"bn pruning safe maximum ratio {safe:.3f}" in describe(model, imgsz=128), "info reports the same limit"
    yp.prune(build("yolov8n.yaml"), ratio=safe - 0.01, method="bn", imgsz=128)
    with pytest.raises(yp.ConfigError, match="safe maximum"):
        yp.prune(model, ratio=min(safe + 0.02, 0.99), method="bn", imgsz=128)


# Every Ultralytics family the README says prunes, at ratio 0.5
README_FAMILIES = ["yolov5nu", "yolov8n", "yolo11n", "yolov3u", "yolov6n", "yolov8n-p2", "yolov8n-p6", "yolov8n-ghost",
                   "yolov9t", "yolov10n", "yolo12n", "yolo26n"]


@pytest.mark.parametrize("name", README_FAMILIES)
def test_every_readme_family_prunes_at_half(name):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(f"{name}.yaml", verbose=False).eval()
    x = torch.rand(1, 3, 128, 128)
    shape = _out(model, x).shape
    before = sum(p.numel() for p in model.parameters())
    yp.prune(model, ratio=0.5, imgsz=128)
    after = sum(p.numel() for p in model.parameters())
    assert after < 0.5 * before
    assert _out(model, x).shape == shape


def test_a_yolo_object_prunes_in_place():
    from ultralytics import YOLO

    yolo = YOLO("yolov8n.yaml")
    before = sum(p.numel() for p in yolo.model.parameters())
    report = yp.prune(yolo, ratio=0.3, imgsz=128)
    assert report.model is yolo.model and sum(p.numel() for p in yolo.model.parameters()) < before
