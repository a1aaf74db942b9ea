"""Sweeps write consistent tables and plots, resume without duplicating rows, merge shards; export is checked."""

from __future__ import annotations

from pathlib import Path

import onnx
import pandas as pd
import pytest
import torch
from conftest import tiny_project
from onnx import numpy_helper

import yoloprune as yp
from yoloprune.api import save_checkpoint
from yoloprune.cli import main
from yoloprune.workflows.export import ExportConfig, ParityError, export, export_onnx, parity
from yoloprune.workflows.sweep import SweepConfig, read_results, sweep


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    data, _ = tiny_project(root, n_train=2, n_val=3)
    return root, data


def _cfg(setup, out, ratios, methods=("l1",)):
    root, data = setup
    return SweepConfig(model=str(root / "model.pt"), data=str(data), out=str(out), ratios=list(ratios),
                       methods=list(methods), imgsz=64, batch=4, workers=0, latency_runs=3)


def test_sweep_writes_consistent_csv_markdown_and_plots(setup, tmp_path):
    df = sweep(_cfg(setup, tmp_path, [0.0, 0.5], ["l1", "unstructured"]))
    assert len(df) == 4 and set(df["status"]) == {"ok"}
    disk = read_results(tmp_path)
    assert disk[["method", "ratio"]].values.tolist() == df[["method", "ratio"]].values.tolist()
    l1 = disk[disk["method"] == "l1"].set_index("ratio")
    assert l1.loc[0.0, "params_ratio"] == 1.0 and l1.loc[0.5, "params_ratio"] < 0.5
    assert l1.loc[0.5, "gflops"] < l1.loc[0.0, "gflops"] and l1.loc[0.5, "onnx_mb"] < l1.loc[0.0, "onnx_mb"]
    un = disk[disk["method"] == "unstructured"].set_index("ratio")
    assert un.loc[0.5, "params_ratio"] == 1.0, "unstructured sparsity keeps every tensor"
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0].startswith("| method | ratio") and len(md) == 2 + 4
    for png in ("map_vs_ratio.png", "map_vs_latency.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratio_zero_reproduces_the_unpruned_map(setup, tmp_path):
    root, data = setup
    df = sweep(_cfg(setup, tmp_path, [0.0]))
    direct = yp.evaluate(str(root / "model.pt"), str(data), imgsz=64, batch=4)
    assert df.loc[0, "map50_95"] == direct.map50_95 and df.loc[0, "map50"] == direct.map50


def test_resumed_sweep_adds_only_missing_rows_and_merge_joins_shards(setup, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    sweep(_cfg(setup, a, [0.0]))
    first = read_results(a)
    df = sweep(_cfg(setup, a, [0.0, 0.3]))
    assert len(df) == 2 and df["ratio"].tolist() == [0.0, 0.3]
    kept = df[df["ratio"] == 0.0].iloc[0]
    assert kept["seconds"] == first.iloc[0]["seconds"], "the finished row was not recomputed"
    sweep(_cfg(setup, b, [0.3, 0.6]))
    out = tmp_path / "merged"
    assert main(["sweep", "--merge", str(a), str(b), "--out", str(out)]) == 0
    merged = pd.read_csv(out / "results.csv")
    assert merged["ratio"].tolist() == [0.0, 0.3, 0.6], "rows never duplicate"
    assert (out / "map_vs_ratio.png").exists()
    other = _cfg(setup, a, [0.0, 0.3])
    other.round_to = 16
    with pytest.raises(yp.ConfigError, match="round_to 8 .now 16."):
        sweep(other)
    assert read_results(a)["seconds"].tolist() == df["seconds"].tolist(), "the folder was left as it was"


def test_export_parity_passes_and_fails_loudly_on_a_tampered_graph(setup, tmp_path):
    root, data = setup
    pruned = tmp_path / "pruned.pt"
    model, _ = yp.load_model(str(root / "model.pt"))
    yp.prune(model, ratio=0.4, imgsz=64)
    save_checkpoint(model, pruned)
    res = export(ExportConfig(model=str(pruned), out=str(tmp_path / "m.onnx"), imgsz=64, data=str(data),
                              images=2, latency_runs=3))
    assert res.max_rel_err < 1e-4 and res.path.exists()
    g = onnx.load(str(res.path))
    init = next(t for t in g.graph.initializer if t.name.endswith("cv3.0.2.bias"))  # class logits, stride 8
    w = numpy_helper.to_array(init).copy()
    w[0] += 5.0  # class 0 at the first anchors: a probability near 1e-4 becomes ~1e-2
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    bad = tmp_path / "tampered.onnx"
    onnx.save(g, str(bad))
    assert parity(bad, str(pruned), [torch.rand(1, 3, 64, 64).numpy()]) > 1e-3
    with pytest.raises(ParityError):
        export(ExportConfig(model=str(pruned), out=str(tmp_path / "m2.onnx"), imgsz=64, images=1,
                            tolerance=-1.0))


def test_export_of_a_model_with_tiny_class_scores_passes(setup, tmp_path):
    """Scores near 5e-5 (a weak pruned model) differ by ~1e-7 between runtimes: a pass, not a relative failure."""
    root, data = setup
    model, _ = yp.load_model(str(root / "model.pt"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".cv3." in name and name.endswith("2.bias"):
                p.fill_(-10.0)
    save_checkpoint(model, tmp_path / "weak.pt")
    res = export(ExportConfig(model=str(tmp_path / "weak.pt"), out=str(tmp_path / "w.onnx"), imgsz=64, data=str(data),
                              images=2, latency_runs=2))
    assert res.max_rel_err < 1e-3


def test_export_writes_nothing_beside_the_input(setup, tmp_path):
    root, _ = setup
    before = set(root.iterdir())
    export_onnx(str(root / "model.pt"), tmp_path / "x.onnx", imgsz=64)
    assert set(root.iterdir()) == before and (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("args", [["--ratios", "0,1.2"], ["--ratios", "a,b"], ["--method", "l1,l9"],
                                  ["--model", "missing.pt"], ["--slimmed", "missing.pt"]])
def test_demo_arguments_validate(args, tmp_path, capsys):
    try:
        code = main(["demo", "--out", str(tmp_path / "d"), *args])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err, err
    assert not (tmp_path / "d").exists()


def test_prune_cli_calib_data_folds_means_and_reconstructs(setup, tmp_path):
    root, data = setup
    plain, comp, recon = tmp_path / "plain.pt", tmp_path / "comp.pt", tmp_path / "recon.pt"
    base = ["prune", "--model", str(root / "model.pt"), "--ratio", "0.3", "--imgsz", "64"]
    calib = ["--calib-data", str(data), "--calib-imgsz", "64", "--selection", "score"]  # the same channels as plain
    assert main([*base, "--out", str(plain)]) == 0
    assert main([*base, *calib, "--no-reconstruct", "--out", str(comp)]) == 0
    assert main([*base, *calib, "--out", str(recon)]) == 0
    a, b, c = (yp.load_model(p)[0].state_dict() for p in (plain, comp, recon))
    assert a.keys() == b.keys() == c.keys() and all(a[k].shape == b[k].shape == c[k].shape for k in a), \
        "same architecture every way"
    changed = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert changed and all(k.endswith(("running_mean", "bias")) for k in changed), "mean compensation: " + str(changed)
    refit = [k for k in a if k.endswith("conv.weight") and not torch.equal(a[k], c[k])]
    assert refit, "reconstruction refits conv weights"


def test_demo_sweeps_baseline_and_slimmed_model_into_one_table(setup, tmp_path):
    from yoloprune.workflows.demo import DemoConfig, run_demo

    root, data = setup
    model, _ = yp.load_model(root / "model.pt")
    torch.manual_seed(1)
    for m in model.modules():  # a "sparsity-trained" model: spread gammas, one residual branch driven to zero
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
    model.model[2].m[0].cv2.bn.weight.data.zero_()
    slimmed = save_checkpoint(model, root / "slimmed.pt")
    out = tmp_path / "demo"
    run_demo(DemoConfig(out=str(out), ratios=[0.0, 0.3], methods=["l1"], model=str(root / "model.pt"),
                        data=str(data), slimmed=str(slimmed)))
    df = pd.read_csv(out / "results.csv")
    assert df[["model", "method", "ratio"]].values.tolist() == [["baseline", "l1", 0.0], ["baseline", "l1", 0.3],
                                                                 ["slimmed", "bn", 0.0], ["slimmed", "bn", 0.3]]
    assert df["blocks_removed"].tolist() == [0, 0, 0, 1], "bn on the slimmed model removes the dead block"
    assert (out / "results.md").read_text().startswith("| model | method | ratio")
    assert (out / "best.onnx").exists() and (out / "slimmed" / "results.csv").exists()


def test_sweep_recovers_pruned_points_without_labels_and_resumes_older_folders(setup, tmp_path):
    import dataclasses
    import json

    cfg = dataclasses.replace(_cfg(setup, tmp_path, [0.0, 0.4]), recover_epochs=1)
    df = sweep(cfg)
    assert set(df["status"]) == {"ok"} and len(df) == 2
    _, ckpt = yp.load_model(tmp_path / "models" / "l1-0.4.pt")
    assert ckpt["yoloprune"]["recovered"]["epochs"] == 1
    assert (tmp_path / "runs" / "l1-0.4-recover" / "results.csv").exists()
    assert not (tmp_path / "runs" / "l1-0-recover").exists()  # the unpruned point is its own teacher
    assert json.loads((tmp_path / "sweep.json").read_text())["recover_epochs"] == 1
    with pytest.raises(yp.ConfigError, match="recover_epochs"):  # other settings are not mixed in one table
        sweep(_cfg(setup, tmp_path, [0.0, 0.4]))
    old = tmp_path / "old"
    sweep(_cfg(setup, old, [0.0]))
    recipe = json.loads((old / "sweep.json").read_text())
    del recipe["recover_epochs"]  # as a sweep folder from before the setting existed
    (old / "sweep.json").write_text(json.dumps(recipe))
    assert len(sweep(_cfg(setup, old, [0.0, 0.4]))) == 2


@pytest.mark.timing
def test_sweep_at_target_speedups_with_int8_columns(tmp_path):
    """Points at measured speed-ups (1 = the unpruned model), each also quantized to INT8 and scored and timed."""
    data, _ = tiny_project(tmp_path / "p", n_train=6, n_val=3)
    weights = Path(__file__).resolve().parents[2] / "weights" / "teabud-yolov8n.pt"
    cfg = SweepConfig(model=str(weights), data=str(data), out=str(tmp_path / "s"), speedups=[1.0, 1.3], imgsz=160,
                      batch=4, workers=0, latency_runs=15, calib_images=8, int8=True)
    df = sweep(cfg).set_index("ratio")
    assert set(df["status"]) == {"ok"} and list(df.index) == [1.0, 1.3]
    assert df.loc[1.0, "gflops_ratio"] == 1.0 and df.loc[1.3, "gflops_ratio"] < 0.9
    assert 1.1 < df.loc[1.3, "speedup"] < 1.6, df["speedup"]  # remeasured in the sweep, beside the unpruned file
    for r in (1.0, 1.3):
        assert 0 <= df.loc[r, "int8_map50_95"] <= 1 and df.loc[r, "int8_ms"] > 0
        assert df.loc[r, "int8_speedup"] > df.loc[r, "speedup"], "INT8 runs faster than the same point's FP32"
    md = (tmp_path / "s" / "results.md").read_text().splitlines()
    assert md[0].startswith("| method | target_speedup") and "int8_map50_95" in md[0]
    with pytest.raises(yp.ConfigError, match="speed-ups"):
        sweep(SweepConfig(model=str(weights), data=str(data), out=str(tmp_path / "x"), speedups=[0.5]))


def test_the_unpruned_point_is_one_rule_on_either_axis():
    """Ratio 0, or speed-up 1 on the speed-up axis, without fine-tuning, is the unpruned model (the Ray runner
    holds back its duplicates by the same rule)."""
    from yoloprune.defaults import UNSTRUCTURED
    from yoloprune.workflows.sweep import SweepConfig, is_unpruned

    ratio_axis, speed_axis = SweepConfig("m", "d", "o"), SweepConfig("m", "d", "o", speedups=[1.0, 1.3])
    assert (ratio_axis.unpruned, speed_axis.unpruned) == (0.0, 1.0)
    assert is_unpruned(("l1", 0.0, 0), ratio_axis.unpruned) and not is_unpruned(("l1", 0.0, 0), speed_axis.unpruned)
    assert is_unpruned(("l1", 1.0, 0), speed_axis.unpruned) and not is_unpruned(("l1", 1.0, 3), speed_axis.unpruned)
    assert not is_unpruned((UNSTRUCTURED, 0.0, 0), ratio_axis.unpruned)
