"""prune --target-speedup: a latency table of the model's convs on the runtime, cut to a predicted latency, checked
by trial prunes timed in alternation with the unpruned model; and the table's cache."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import build

import yoloprune as yp
from yoloprune.cli import main
from yoloprune.engine.costs import CostTable, LayerCost, layer_widths
from yoloprune.speed import runtimes as rts
from yoloprune.speed import table as lt
from yoloprune.speed.search import search_speedup, speedup_of

IMGSZ = 224


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class Counting(rts.Runtime):
    """A fake runtime: a conv's time is its multiply-adds with widths padded to blocks of 16 (as an AVX-512
    onnxruntime has it), and every block timed is counted."""

    name = "counting"

    def __init__(self, block: int = 16) -> None:
        self.calls = 0
        self.block = block

    def key(self):  # as a real runtime's, with a version of its own
        return {"runtime": self.name, "version": "1.0", "block": self.block}

    def block_ms(self, spec, runs):
        self.calls += 1
        pad = lambda c: -(-c // self.block) * self.block  # noqa: E731
        cin = spec.cin if spec.depthwise else pad(spec.cin)
        return 1e-6 * cin * pad(spec.cout) * spec.kernel[0] * spec.kernel[1] * spec.height * spec.width / spec.groups


def _table(model, imgsz, rt, round_to=8):
    graph = yp.trace_model(model)
    return lt.latency_table(model, imgsz, set(graph.bn_after), rt, round_to)


def test_latency_table_is_reused_from_its_cache_and_rebuilt_when_the_model_or_size_changes(cache, monkeypatch):
    rt = Counting()
    model = build("yolov8n.yaml", nc=2)
    first = _table(model, 64, rt)
    n = rt.calls
    assert not first.cached and n > 50 and first.path.parent == cache / "latency"
    again = _table(build("yolov8n.yaml", nc=2), 64, rt)  # the same architecture, other weights
    assert again.cached and rt.calls == n and again.path == first.path
    assert again.table.layers.keys() == first.table.layers.keys()
    assert all(again.table.layers[k].values == first.table.layers[k].values for k in first.table.layers)
    other_size = _table(model, 96, rt)
    assert not other_size.cached and rt.calls > n and other_size.path != first.path
    n = rt.calls
    other_model = _table(build("yolov8n.yaml", nc=5), 64, rt)  # the head's class convs are wider
    assert not other_model.cached and rt.calls > n
    n = rt.calls
    version = lt.VERSION
    monkeypatch.setattr(lt, "VERSION", version + 1)  # a new way of measuring: old tables are stale
    assert not _table(model, 64, rt).cached and rt.calls > n
    monkeypatch.setattr(lt, "VERSION", version)
    n = rt.calls
    first.path.write_text("{not json")  # a damaged cache file is measured again, not trusted
    assert not _table(model, 64, rt).cached and rt.calls > n
    json.loads(first.path.read_text())


def test_latency_table_predicts_the_cost_at_the_grid_and_between(cache):
    rt = Counting(block=1)  # no blocking: cost exactly bilinear in the widths
    model = build("yolov8n.yaml", nc=2)
    table = _table(model, 64, rt).table
    assert table.total(model) == pytest.approx(sum(rt.block_ms(s, 1) for s in lt.conv_specs(
        model, 64, set(yp.trace_model(model).bn_after)).values()), rel=1e-9)
    cost = next(c for c in table.layers.values() if not c.depthwise and len(c.cin) > 2 and len(c.cout) > 2)
    ci, co = (cost.cin[-1] + cost.cin[-2]) // 2, (cost.cout[-1] + cost.cout[-2]) // 2
    full = cost.values[-1][-1]
    assert cost.at(ci, co) == pytest.approx(full * ci * co / (cost.cin[-1] * cost.cout[-1]), rel=1e-6)
    assert cost.slope(0) == pytest.approx(full / cost.cout[-1], rel=1e-6)


def test_runtimes_named_by_the_command_line_are_the_registry():
    from yoloprune.defaults import SPEED_RUNTIMES

    assert SPEED_RUNTIMES == tuple(rts.RUNTIMES)


def test_channel_block_is_found_by_measurement_and_cached(cache):
    assert Counting(block=16).channel_block(8) == 16
    assert Counting(block=1).channel_block(8) == 8
    rt = Counting(block=32)
    assert rt.channel_block(8) == 32
    calls = rt.calls
    assert rt.channel_block(8) == 32 and rt.calls == calls


def test_a_cost_target_is_met_by_the_tables_prediction_and_weighing_moves_channels_to_the_costly_layers():
    model = build("yolov8n.yaml", nc=2)
    # a made-up table: every conv costs its widths' product, the first conv 1000 times as much
    table = CostTable({n: LayerCost([ci], [co], [[float(ci * co) * (1000 if n == "model.0.conv" else 1)]])
                       for n, (ci, co) in layer_widths(model).items()})
    base = table.total(model)
    plain = yp.prune(build("yolov8n.yaml", nc=2), config=yp.PruneConfig(imgsz=64), target=yp.Cost(0.7), costs=table)
    assert table.total(plain.model) <= 0.7 * base and table.total(plain.model) > 0.55 * base
    weighed = yp.prune(build("yolov8n.yaml", nc=2), config=yp.PruneConfig(imgsz=64, cost_power=1), target=yp.Cost(0.7),
                       costs=table)
    w0 = lambda m: dict(m.named_modules())["model.0.conv"].out_channels  # noqa: E731
    assert w0(weighed.model) < w0(plain.model)
    x = torch.rand(1, 3, 64, 64)
    weighed.model.eval()(x)  # still a working model
    with pytest.raises(yp.ConfigError, match="cost table"):
        yp.prune(build("yolov8n.yaml", nc=2), config=yp.PruneConfig(imgsz=64), target=yp.Cost(0.7))


@pytest.mark.timing
def test_target_speedup_lands_near_the_asked_ratio_measured_again():
    model = build("yolov8n.yaml", nc=2)
    cfg = yp.PruneConfig(imgsz=IMGSZ)
    search = search_speedup(model, yp.Speedup(1.3), cfg, runs=15)
    assert search.budget == "latency" and search.round_to % 8 == 0 and 0.2 < search.fraction < 1
    assert abs(search.measured / 1.3 - 1) < 0.15 and search.predicted_ms > 0
    assert "predicted" in search.line() and "measured" in search.line()
    pruned = yp.prune(copy.deepcopy(model), config=search.config(cfg), target=search.amount, costs=search.costs).model
    again = speedup_of(pruned, model, IMGSZ, runs=25)  # measured afresh, in alternation with the unpruned model
    assert abs(again / 1.3 - 1) < 0.2, (search, again)
    assert abs(search.gflops_ratio - yp.gflops(pruned, IMGSZ) / yp.gflops(model, IMGSZ)) < 1e-9
    gf = search_speedup(model, yp.Speedup(1.3, budget="gflops"), cfg, runs=15)  # the GFLOPs search lands too
    assert gf.budget == "gflops" and abs(gf.measured / 1.3 - 1) < 0.15 and gf.costs is None


@pytest.mark.timing
@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA a small model's eager time is launch-bound")
def test_torch_runtime_times_the_model_itself(cache):
    model = build("yolov8n.yaml", nc=2)
    rt = rts.runtime("torch")
    assert rt.key()["device"] in ("cpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    small = yp.prune(build("yolov8n.yaml", nc=2), ratio=0.6, imgsz=128).model
    assert speedup_of(small, model, 128, "torch", runs=10) > 1.1


@pytest.mark.timing
def test_target_speedup_on_the_command_line_prints_prediction_and_measurement(tmp_path, capsys):
    ckpt = yp.save_checkpoint(build("yolov8n.yaml", nc=2), tmp_path / "m.pt")
    out = tmp_path / "o.pt"
    assert main(["prune", "--model", str(ckpt), "--no-calib", "--imgsz", str(IMGSZ), "--target-speedup", "1.25",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "target speed-up 1.25x on onnxruntime" in text and "predicted" in text and "latency table" in text
    assert "timed again beside the unpruned one" in text and out.is_file()


def test_target_speedup_refuses_what_it_cannot_mean(tmp_path, capsys):
    ckpt = yp.save_checkpoint(build("yolov8n.yaml", nc=2), tmp_path / "m.pt")
    for extra, says in ((["--target-speedup", "0.8"], "speed-up must be above 1"),
                        (["--target-speedup", "1.5", "--target-gflops", "0.5"], "--target-speedup"),
                        (["--target-latency", "-3"], "target latency"),
                        (["--target-speedup", "1.5", "--ratio", "0.3"], "give one target"),
                        (["--ratio", "0.3", "--runtime", "torch"], "--runtime and --threads"),
                        (["--ratio", "0.3", "--no-reconstruct"], "act on calibration images"),
                        (["--ratio", "0.3", "--steps", "2"], "act on calibration images"),
                        (["--ratio", "0.3", "--calib-views"], "act on calibration images"),
                        (["--target-latency", "100000"], "already runs in"),
                        (["--target-speedup", "1.5", "--method", "act"], "data-aware"),
                        (["--target-speedup", "1.5", "--scope", "damage"], "global or uniform")):
        assert main(["prune", "--model", str(ckpt), "--no-calib", "--imgsz", "64", "--out", str(tmp_path / "o.pt"),
                     *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "o.pt").exists()


def test_targets_validate_themselves():
    assert (yp.Ratio(0.3).tag, yp.Gflops(0.5).tag, yp.Speedup(1.3).tag, yp.Latency(12).tag) == \
        ("0.3", "g0.5", "s1.3x", "12ms")
    for make, says in ((lambda: yp.Ratio(1.0), "ratio"), (lambda: yp.Gflops(1.5), "fraction"),
                       (lambda: yp.Speedup(1.0), "above 1"), (lambda: yp.Latency(0), "positive"),
                       (lambda: yp.Speedup(2, runtime="tvm"), "unknown runtime"),
                       (lambda: yp.Speedup(2, threads=0), "threads"), (lambda: yp.Latency(5, budget="x"), "budget")):
        with pytest.raises(yp.ConfigError, match=says):
            make()


@pytest.mark.timing
def test_a_speed_target_is_one_call_searched_pruned_and_timed_again():
    model = build("yolov8n.yaml", nc=2)
    report = yp.prune(copy.deepcopy(model), config=yp.PruneConfig(imgsz=IMGSZ), target=yp.Speedup(1.3))
    assert report.speed is not None and abs(report.speed.search.measured / 1.3 - 1) < 0.15
    assert abs(report.speed.timed_again / 1.3 - 1) < 0.2
    assert report.after.gflops < report.before.gflops
    gf = yp.prune(copy.deepcopy(model), target=yp.Gflops(0.6), imgsz=IMGSZ)
    assert gf.after.gflops <= 0.6 * gf.before.gflops + 1e-9 and gf.speed is None
    with pytest.raises(yp.ConfigError, match="give the target once"):
        yp.prune(copy.deepcopy(model), ratio=0.2, target=yp.Gflops(0.6))


def test_the_default_output_name_states_the_target(tmp_path, capsys):
    ckpt = yp.save_checkpoint(build("yolov8n.yaml", nc=2), tmp_path / "m.pt")
    assert main(["prune", "--model", str(ckpt), "--no-calib", "--imgsz", "64", "--target-gflops", "0.7"]) == 0
    assert (tmp_path / "m-l1-g0.7.pt").is_file()
    assert main(["prune", "--model", str(ckpt), "--no-calib", "--imgsz", "64", "--ratio", "0.2"]) == 0
    assert (tmp_path / "m-l1-0.2.pt").is_file()
    capsys.readouterr()
