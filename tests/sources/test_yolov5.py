"""Original YOLOv5 checkpoints (the ultralytics/yolov5 repository): load, prune, compact, save back in their own
format, evaluate, fine-tune and export, without that repository's code."""

from __future__ import annotations

import pickletools
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_masked_equals_removed_equals_compacted, build, head_out, randomize_bn, rel_err

import yoloprune as yp
from yoloprune import api, sources
from yoloprune.errors import CheckpointError
from yoloprune.sources.yolov5 import YOLOv5Adapter
from yoloprune.sources.yolov5.model import YOLOv5Model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REAL = FIXTURES / "yolov5n-original-repo.pt"
YAMLS = FIXTURES / "yolov5"
# (yaml, overrides): the s-sized variants are shrunk to n size so the tests stay fast
VARIANTS = {
    "yolov5n": ("yolov5n.yaml", {}),
    "yolov5n6-p6": ("yolov5n6.yaml", {}),
    "yolov5-ghost": ("yolov5s-ghost.yaml", {"width_multiple": 0.25}),
    "yolov5-leakyrelu": ("yolov5s-LeakyReLU.yaml", {"width_multiple": 0.25}),
    "yolov3-tiny": ("yolov3-tiny.yaml", {"width_multiple": 0.25}),
    "yolov5-transformer": ("yolov5s-transformer.yaml", {"width_multiple": 0.25}),
}


def build_v5(variant: str, nc: int = 2) -> YOLOv5Model:
    name, over = VARIANTS[variant]
    cfg = {**yaml.safe_load((YAMLS / name).read_text()), **over}
    torch.manual_seed(0)
    return randomize_bn(YOLOv5Model(cfg, nc=nc)).eval()


_out = head_out


def _globals(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    return {str(arg) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def test_real_checkpoint_loads_as_the_original_model():
    model, ckpt = sources.load_model(REAL)
    assert isinstance(model, YOLOv5Model) and isinstance(sources.adapter_for(model), YOLOv5Adapter)
    assert {"model", "ema", "epoch", "best_fitness", "updates", "optimizer", "opt", "git", "date"} <= set(ckpt)
    head = model.model[-1]
    assert (head.nc, head.na, head.nl, head.no) == (2, 3, 3, 7)
    assert head.stride.tolist() == [8.0, 16.0, 32.0] and next(model.parameters()).dtype == torch.float32
    y, maps = model(torch.rand(1, 3, 128, 128))
    assert y.shape == (1, 3 * (16 * 16 + 8 * 8 + 4 * 4), 7) and maps[0].shape == (1, 3, 16, 16, 7)
    assert 0 <= float(y[..., 4:].min()) and float(y[..., 4:].max()) <= 1  # sigmoid-decoded scores
    # the builder makes the same model from the original yaml: same weights give the same outputs
    built = YOLOv5Model(YAMLS / "yolov5n.yaml", nc=2).eval()
    assert torch.equal(built.model[-1].anchors, head.anchors)
    built.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 96, 96)
    assert torch.equal(built(x)[0], model(x)[0])


STUB = '''
import sys, types, torch
from torch import nn
for name in ("models", "models.common", "models.yolo"):
    sys.modules[name] = types.ModuleType(name)
for name in ("Conv", "C3", "Bottleneck", "SPPF", "Concat"):
    setattr(sys.modules["models.common"], name, type(name, (nn.Module,), {"__module__": "models.common"}))
for name in ("Detect", "DetectionModel"):
    setattr(sys.modules["models.yolo"], name, type(name, (nn.Module,), {"__module__": "models.yolo"}))
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
assert not any(m.split(".")[0] in ("yoloprune", "ultralytics") for m in sys.modules), "needed yoloprune/ultralytics"
m = ckpt["model"]
print(type(m).__module__, type(m).__name__, sum(p.numel() for p in m.parameters()), next(m.parameters()).dtype,
      ckpt["epoch"], ckpt["ema"] is None, ckpt["optimizer"] is None, type(m.model[-1]).__name__, m.model[-1].na)
'''


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_pruned_real_checkpoint_is_saved_in_the_original_format(tmp_path, ratio):
    report = yp.prune(str(REAL), ratio=ratio, imgsz=128)
    out = sources.save_checkpoint(report.model, tmp_path / "pruned.pt", report.ckpt)
    params = sum(p.numel() for p in report.model.parameters())
    assert params < 0.8 * sum(p.numel() for p in sources.load_model(REAL)[0].parameters())
    pickled = {g.split(" ")[0] for g in _globals(out)}
    assert {"models.common", "models.yolo"} <= pickled
    assert all(m.split(".")[0] in ("torch", "collections", "__builtin__", "pathlib", "models") for m in pickled)
    stub = tmp_path / "stub.py"
    stub.write_text(STUB)
    got = subprocess.run([sys.executable, str(stub), str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == ["models.yolo", "DetectionModel", str(params), "torch.float16", "-1", "True", "True",
                                  "Detect", "3"]
    # and it loads back into yoloprune with the same outputs
    again, ckpt = sources.load_model(out)
    x = torch.rand(1, 3, 128, 128)
    assert rel_err(_out(again, x), _out(report.model.half().float(), x)) < 1e-3
    assert ckpt["opt"]["cfg"] == "models/yolov5n.yaml"  # the input's training options are kept


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_masked_equals_removed_equals_compacted(variant):
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    assert_masked_equals_removed_equals_compacted(lambda: build_v5(variant), 0.4, x)


def test_transformer_variant_prunes_around_its_frozen_attention():
    """C3TR's TransformerBlock works on (L, N, C) sequences and MultiheadAttention: its channels stay, the rest
    of the model prunes (masked equals removed: test_masked_equals_removed_equals_compacted)."""
    model = build_v5("yolov5-transformer")
    block = model.model[8].m
    widths = {n: tuple(p.shape) for n, p in block.named_parameters()}
    report = yp.prune(model, ratio=0.3, imgsz=128)
    assert report.after.params < 0.8 * report.before.params
    assert {n: tuple(p.shape) for n, p in model.model[8].m.named_parameters()} == widths
    assert report.frozen.get("op 'multi_head_attention_forward'", 0) > 0


def test_original_yaml_builds_through_load_model():
    model, ckpt = sources.load_model(YAMLS / "yolov5n.yaml")
    assert isinstance(model, YOLOv5Model) and ckpt == {}
    ultra, _ = sources.load_model("yolov5nu.yaml")  # Ultralytics' own YOLOv5u yaml stays an Ultralytics model
    assert not isinstance(sources.adapter_for(ultra), YOLOv5Adapter)


def test_yolov5_loss_falls_when_training_and_widths_are_kept():
    torch.manual_seed(0)
    model = yp.prune(str(REAL), ratio=0.3, imgsz=128).model
    widths = {k: v.shape for k, v in model.state_dict().items()}
    model.args = {"imgsz": 128}
    for p in model.parameters():
        p.requires_grad_(True)
    batch = {"img": torch.rand(2, 3, 128, 128), "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
             "cls": torch.tensor([[0.0], [1.0], [1.0]]),
             "bboxes": torch.tensor([[0.3, 0.3, 0.2, 0.25], [0.7, 0.6, 0.1, 0.1], [0.5, 0.5, 0.4, 0.3]])}
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss, items = model.loss(batch)
        assert set(items) == {"box_loss", "obj_loss", "cls_loss"} and all(torch.isfinite(v) for v in items.values())
        opt.zero_grad()
        loss.sum().backward()
        assert all(p.grad is not None for p in model.parameters())
        opt.step()
        losses.append(float(loss.sum()))
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses
    assert {k: v.shape for k, v in model.state_dict().items()} == widths


def test_validator_scores_are_objectness_times_class():
    from yoloprune.sources.yolov5.train import YOLOv5Validator

    val = YOLOv5Validator(args={"conf": 0.01, "iou": 0.6, "task": "detect"})
    val.end2end = False  # set from the model by init_metrics
    y = torch.zeros(1, 4, 7)
    y[0, 0] = torch.tensor([50, 50, 20, 20, 0.9, 0.2, 0.8])  # class 1, score 0.72
    y[0, 1] = torch.tensor([51, 50, 20, 20, 0.5, 0.2, 0.8])  # overlaps the first: suppressed
    y[0, 2] = torch.tensor([150, 100, 40, 10, 0.5, 0.6, 0.1])  # class 0, score 0.3
    # multi-label, as the original val.py: every class above conf is a detection (0.9 x 0.2, 0.5 x 0.1 too)
    y[0, 3] = torch.tensor([10, 10, 4, 4, 0.001, 1.0, 1.0])  # below conf
    out = val.postprocess((y, None))[0]
    got = sorted(zip(out["conf"].tolist(), out["cls"].tolist(), out["bboxes"][:, 0].tolist(), strict=True), reverse=True)
    assert [(round(c, 3), int(k), round(x)) for c, k, x in got] == [(0.72, 1, 40), (0.3, 0, 130), (0.18, 0, 40),
                                                                    (0.05, 1, 130)]


def test_head_scores_are_objectness_times_class_per_position():
    """Calibration and recovery weigh positions by the head's score: the product, not the conditional class."""
    from yoloprune.engine.reconstruct import foreground

    model = build_v5("yolov5n")
    hooks = YOLOv5Adapter()
    x = torch.rand(2, 3, 64, 64)
    maps = foreground(model, x, list(hooks.head_outputs(model)), lambda out: hooks.scores(model, out))
    head = model.model[-1]
    y = model(x)[0]  # (N, anchors, 5 + nc), decoded: per level, anchor-major then rows and columns
    conf = (y[..., 4:5] * y[..., 5:]).amax(-1)
    start = 0
    assert len(maps) == head.nl
    for m in maps:
        n, h, w = m.shape
        level = conf[:, start:start + head.na * h * w].reshape(n, head.na, h, w).amax(1)
        assert torch.allclose(m, level, atol=1e-5)
        start += head.na * h * w
    assert start == y.shape[1]


def test_evaluation_of_known_boxes(tmp_path):
    """A model's detections equal to the ground truth score mAP 1; the same boxes shifted by half score 0."""
    from yoloprune.data.coco import coco_map

    gt = {"images": [{"id": 0, "width": 100, "height": 100, "file_name": "a.jpg"}],
          "annotations": [{"id": 1, "image_id": 0, "category_id": 0, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0}], "categories": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]}
    exact = [{"image_id": 0, "category_id": 0, "bbox": [10, 10, 20, 20], "score": 0.9}]
    assert coco_map(gt, exact)[0] == pytest.approx(1.0)
    shifted = [{"image_id": 0, "category_id": 0, "bbox": [20, 20, 20, 20], "score": 0.9}]
    assert coco_map(gt, shifted)[0] == pytest.approx(0.0)


def _write_pickle(path: Path, module: str, name: str) -> Path:
    """A torch checkpoint whose model pickles as ``module.name`` (a class that does not exist here)."""
    cls = type(name, (torch.nn.Module,), {"__module__": module})
    added = [m for m in ("models", module) if m not in sys.modules]
    for m in added:
        sys.modules[m] = type(sys)(m)
    setattr(sys.modules[module], name, cls)
    try:
        torch.save({"model": cls(), "epoch": -1}, path)
    finally:
        delattr(sys.modules[module], name)
        for m in added:
            del sys.modules[m]
    return path


@pytest.mark.parametrize("case", ["truncated", "unknown-class", "segmentation", "classification"])
def test_bad_original_checkpoints_exit_2_with_one_line(tmp_path, case):
    if case == "truncated":
        path = tmp_path / "cut.pt"
        path.write_bytes(REAL.read_bytes()[: 200_000])
        expect = "cut.pt"
    else:
        module, name, expect = {"unknown-class": ("models.common", "FancyBlock", "models.common.FancyBlock"),
                                "segmentation": ("models.yolo", "SegmentationModel", "segmentation"),
                                "classification": ("models.yolo", "ClassificationModel", "classification")}[case]
        path = _write_pickle(tmp_path / f"{case}.pt", module, name)
    with pytest.raises(CheckpointError):
        sources.load_model(path)
    got = subprocess.run([sys.executable, "-m", "yoloprune", "info", "--model", str(path)], capture_output=True,
                         text=True)
    assert got.returncode == 2
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in got.stderr, got.stderr


def test_export_writes_the_original_output_layout(tmp_path):
    pytest.importorskip("onnxruntime")
    report = yp.prune(str(REAL), ratio=0.3, imgsz=128)
    ckpt = sources.save_checkpoint(report.model, tmp_path / "p.pt", report.ckpt)
    res = yp.export(yp.ExportConfig(model=str(ckpt), out=str(tmp_path / "p.onnx"), imgsz=128, images=2,
                                    latency_runs=2))
    from yoloprune.speed.runtimes import ort_session

    sess = ort_session(res.path)
    assert sess.get_outputs()[0].name == "output0"
    y = sess.run(None, {"images": torch.rand(1, 3, 128, 128).numpy()})[0]
    assert y.shape == (1, 1008, 7) and res.max_rel_err < 1e-3


def test_int8_export_of_an_original_checkpoint_keeps_its_detections(tmp_path):
    """``export --int8`` reads the original layout (channels last, score = objectness x class): the tea-bud yolov5n's
    INT8 file keeps the FP32 file's confident detections in place, and its drift is measured on those scores."""
    import numpy as np

    from yoloprune.cli import main
    from yoloprune.data.images import letterboxed_images
    from yoloprune.speed.runtimes import ort_session
    from yoloprune.workflows.quantize import drift

    root = Path(__file__).resolve().parents[2]
    data, fp32 = root / "data" / "teabud.yaml", tmp_path / "m.onnx"
    assert main(["export", "--model", str(root / "weights" / "teabud-yolov5n.pt"), "--out", str(fp32), "--imgsz",
                 "160", "--data", str(data), "--int8", "--calib-images", "24"]) == 0
    int8 = tmp_path / "m.int8.onnx"
    x = letterboxed_images(data, "val", 8, 160)
    d = drift(fp32, int8, x, nc=2, objectness=True)
    assert d.positions > 20 and d.box < 0.002 and d.score < 0.05, d
    assert drift(fp32, fp32, x, nc=2, objectness=True).box == 0
    a, b = ort_session(fp32), ort_session(int8)
    for im in x[:4]:
        ya, yb = (s.run(None, {"images": im[None]})[0][0] for s in (a, b))  # (anchors, 5 + 2)
        k = int((ya[:, 4:5] * ya[:, 5:]).max(1).argmax())
        assert ya[k, 5:].argmax() == yb[k, 5:].argmax() and np.abs(ya[k, :4] - yb[k, :4]).max() < 2.0
    # both files are scored as files (their metadata names the source and its layout): the FP32 file as its
    # checkpoint, the INT8 file within 2 points of it
    from yoloprune.workflows.evaluate import Evaluator

    assert yp.sources.read_exported(int8).source == "original YOLOv5"
    ev = Evaluator(data, "val", imgsz=160)
    ckpt, fp, q = (ev(str(p)).map50_95 for p in (root / "weights" / "teabud-yolov5n.pt", fp32, int8))
    assert ckpt > 0.2 and abs(fp - ckpt) < 1e-3 and abs(q - ckpt) < 0.02, (ckpt, fp, q)


def test_parity_check_catches_a_tampered_export(tmp_path):
    pytest.importorskip("onnxruntime")
    from yoloprune.workflows.export import parity

    model, ckpt = sources.load_model(REAL)
    onnx_path = sources.adapter_for(model).export_onnx(model, ckpt, tmp_path / "m.onnx", 128, False, False)
    x = [torch.rand(1, 3, 128, 128).numpy()]
    assert parity(onnx_path, str(REAL), x) < 1e-3
    with torch.no_grad():
        model.model[-1].m[0].bias[4] += 3.0  # objectness of the first anchor of level P3
    assert parity(onnx_path, model, x) > 1e-2


def test_cli_prune_info_compact_sparsify_on_an_original_checkpoint(tmp_path):
    def run(*args):
        got = subprocess.run([sys.executable, "-m", "yoloprune", *args], capture_output=True, text=True)
        assert got.returncode == 0, got.stderr[-2000:]
        return got.stdout

    run("prune", "--model", str(REAL), "--ratio", "0.4", "--imgsz", "128", "--out", str(tmp_path / "p.pt"))
    assert "models.yolo DetectionModel" in _globals(tmp_path / "p.pt")
    assert "params" in run("info", "--model", str(tmp_path / "p.pt"))
    run("sparsify", "--model", str(REAL), "--amount", "0.5", "--out", str(tmp_path / "s.pt"))
    run("compact", "--model", str(tmp_path / "s.pt"), "--out", str(tmp_path / "c.pt"))
    for name in ("s.pt", "c.pt"):
        assert "models.yolo DetectionModel" in _globals(tmp_path / name)
    sparse = sources.load_model(tmp_path / "s.pt")[0]
    zeros = sum(int((p == 0).sum()) for n, p in sparse.named_parameters() if n.endswith("conv.weight"))
    total = sum(p.numel() for n, p in sparse.named_parameters() if n.endswith("conv.weight"))
    assert zeros / total == pytest.approx(0.5, abs=0.02)


@pytest.mark.slow
def test_finetune_keeps_pruned_widths_and_the_original_format(tmp_path):
    from conftest import tiny_project  # noqa: F401 (same generator the other training tests use)

    from yoloprune.data.teabud import TeaBudConfig, generate

    data = generate(TeaBudConfig(out=tmp_path / "d", n_train=8, n_val=4, n_test=0))
    pruned = sources.save_checkpoint(yp.prune(str(REAL), ratio=0.4, imgsz=64).model, tmp_path / "p.pt",
                                     sources.load_model(REAL)[1])
    out = tmp_path / "ft.pt"
    cmd = [sys.executable, "-m", "yoloprune", "finetune", "--model", str(pruned), "--data", str(data), "--epochs",
           "1", "--imgsz", "64", "--batch", "4", "--workers", "0", "--out", str(out), "--project", str(tmp_path / "r")]
    got = subprocess.run(cmd, capture_output=True, text=True)
    assert got.returncode == 0, got.stderr[-3000:]
    before = {k: v.shape for k, v in sources.load_model(pruned)[0].state_dict().items()}
    after, ckpt = sources.load_model(out)
    assert {k: v.shape for k, v in after.state_dict().items()} == before
    assert "models.yolo DetectionModel" in _globals(out) and ckpt["optimizer"] is None
    assert not any("ultralytics" in g or "yoloprune" in g for g in _globals(out))
    changed = [k for k, v in after.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, sources.load_model(pruned)[0].state_dict()[k])]
    assert changed, "fine-tuning changed no weight"


def test_cli_offers_exactly_the_registered_criteria_with_their_help():
    """The command line lists the criteria registry (engine.criteria, torch-free, so --help imports no torch), one
    list: a criterion registered from Python shows in prune --help with its help line, and runs."""
    from yoloprune.cli import build_parser
    from yoloprune.engine.criteria import CRITERIA, register

    def method_of(parser):
        prune = parser._subparsers._group_actions[0].choices["prune"]
        return prune, next(a for a in prune._actions if a.dest == "method")

    prune, method = method_of(build_parser())
    assert tuple(method.choices) == tuple(CRITERIA) == ("l1", "l2", "bn", "act")
    text = "".join(prune.format_help().split())  # wrapped at any width
    assert all("".join(f"{k}: {e.help}".split()) in text for k, e in CRITERIA.items())
    register("index", help="a test criterion: the unit's id")(lambda unit, ctx: float(unit.id))
    try:
        prune, method = method_of(build_parser())
        assert "index" in method.choices and "index:atestcriterion" in "".join(prune.format_help().split())
        report = yp.prune(build("yolov8n.yaml"), ratio=0.3, method="index", imgsz=64)
        assert report.after.params < 0.9 * report.before.params
    finally:
        CRITERIA.pop("index")


def test_help_does_not_import_torch_or_ultralytics():
    code = ("import sys; from yoloprune.cli import build_parser; build_parser().format_help(); "
            "print([m for m in ('torch', 'ultralytics', 'pandas', 'matplotlib') if m in sys.modules])")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert got.returncode == 0 and got.stdout.strip() == "[]", got.stdout + got.stderr


def test_calibrated_prune_to_a_gflops_target_on_an_original_model():
    model, _ = sources.load_model(REAL)
    gflops0 = api.gflops(model, 128)
    calib = torch.rand(8, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    report = yp.prune(model, config=yp.PruneConfig(imgsz=128, round_to=8), target=yp.Gflops(0.6), calibration=calib)
    assert api.gflops(report.model, 128) <= 0.6 * gflops0
    assert report.refits and not any(name.startswith("model.24.") for name in report.refit_skipped)
    assert report.model(torch.rand(1, 3, 128, 128))[0].shape == (1, 1008, 7)


def test_slimming_removes_dead_bottlenecks_of_an_original_model_exactly():
    model = build_v5("yolov5n")
    with torch.no_grad():  # the branch of the first C3's bottleneck and of one in the backbone's deepest C3 die
        for name in ("model.2.m.0.cv2.bn", "model.6.m.1.cv2.bn"):
            bn = model.get_submodule(name)
            bn.weight.zero_()
            bn.bias.zero_()
    x = torch.rand(1, 3, 128, 128)
    before = _out(model, x)
    report = yp.compact(model)
    assert set(report.removed_blocks) >= {"model.2.m.0", "model.6.m.1"}
    assert rel_err(_out(model, x), before) < 1e-5


def test_sweep_rows_of_an_original_model_keep_its_format_and_training_options(tmp_path):
    from yoloprune.data.teabud import TeaBudConfig, generate
    from yoloprune.workflows.sweep import SweepConfig, sweep

    data = generate(TeaBudConfig(out=tmp_path / "d", n_train=4, n_val=4, n_test=0))
    df = sweep(SweepConfig(model=str(REAL), data=str(data), out=str(tmp_path / "s"), ratios=[0.3], imgsz=64,
                           latency_runs=2, calib_images=4))
    assert list(df["status"]) == ["ok"] and float(df["params_ratio"].iloc[0]) < 0.8
    row = tmp_path / "s" / "models" / "l1-0.3.pt"
    assert "models.yolo DetectionModel" in _globals(row)
    _, ckpt = sources.load_model(row)
    assert ckpt["opt"]["cfg"] == "models/yolov5n.yaml" and sources.train_imgsz(row) == 64


def test_the_layers_the_anchor_head_reads_are_left_alone_unless_asked():
    """The 1x1 output convs of YOLOv5's head read the neck's last convs directly: those keep their width by default
    (ModelHooks.protected), and are pruned with protect=False; Ultralytics' models protect nothing."""
    def width(model, name):
        return model.get_submodule(name).conv.out_channels

    kept = yp.prune(str(REAL), ratio=0.4, imgsz=128).model
    base, _ = yp.load_model(str(REAL))
    for name in ("model.17.cv3", "model.20.cv3", "model.23.cv3"):
        assert width(kept, name) == width(base, name)
    from yoloprune.engine.prune import one_step_gflops

    gflops = sources.adapter_for(base).gflops  # the estimate iterative pruning aims at protects the same layers
    assert one_step_gflops(base, sources.adapter_for(base), yp.PruneConfig(imgsz=128), 0.4) == pytest.approx(
        gflops(kept, 128) / gflops(base, 128))
    cut = yp.prune(str(REAL), ratio=0.4, imgsz=128, protect=False).model
    assert any(width(cut, n) < width(base, n) for n in ("model.17.cv3", "model.20.cv3", "model.23.cv3"))
    v8 = build("yolov8n.yaml")
    assert sources.adapter_for(v8).protected(v8) == ()
