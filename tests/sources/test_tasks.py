"""Every Ultralytics task prunes: segment, pose, obb and classify models of every family Ultralytics ships a yaml
for (detection is covered in test_prune.py). The task's contract outputs (boxes, scores, mask coefficients and
prototypes, keypoints, angles, class logits) keep their shapes, and masked == removed == compacted."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_masked_equals_removed_equals_compacted, build, contract

import yoloprune as yp
from yoloprune import api, sources
from yoloprune.errors import CheckpointError

NC = 3  # few classes keep the heads small
# (yaml, task); the largest (yolov9e-seg, 60M params; the ResNet-101 classifier, 45M) are marked slow.
# yolo11-cls-resnet18.yaml is not here: building it downloads torchvision's ImageNet weights.
_FAST = [
    ("yolov8n-seg.yaml", "segment"), ("yolov8n-seg-p6.yaml", "segment"), ("yolo11n-seg.yaml", "segment"),
    ("yolo12n-seg.yaml", "segment"), ("yolo26n-seg.yaml", "segment"),
    ("yolov8n-pose.yaml", "pose"), ("yolov8n-pose-p6.yaml", "pose"), ("yolo11n-pose.yaml", "pose"),
    ("yolo12n-pose.yaml", "pose"), ("yolo26n-pose.yaml", "pose"),
    ("yolov8n-obb.yaml", "obb"), ("yolo11n-obb.yaml", "obb"), ("yolo12n-obb.yaml", "obb"), ("yolo26n-obb.yaml", "obb"),
    ("yolov8n-cls.yaml", "classify"), ("yolo11n-cls.yaml", "classify"), ("yolo12n-cls.yaml", "classify"),
    ("yolo26n-cls.yaml", "classify"), ("yolov9c-seg.yaml", "segment"), ("yolov8-cls-resnet50.yaml", "classify"),
]
_SLOW = [("yolov9e-seg.yaml", "segment"), ("yolov8-cls-resnet101.yaml", "classify")]
FAMILIES = [pytest.param(y, t, id=y.removesuffix(".yaml")) for y, t in _FAST] + [
    pytest.param(y, t, id=y.removesuffix(".yaml"), marks=pytest.mark.slow) for y, t in _SLOW]


def _image(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    size = 2 * sources.adapter_for(model).max_stride(model)
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _contract_widths(model: torch.nn.Module) -> dict[str, int]:
    """Output width of every layer that writes the task's contract (head output convs, Proto output, Linear)."""
    mods = dict(model.named_modules())
    return {n: (mods[n].out_features if isinstance(mods[n], torch.nn.Linear) else mods[n].out_channels)
            for n in sources.adapter_for(model).head_output_convs(model)}


def _train_outputs(model: torch.nn.Module, x: torch.Tensor) -> list[tuple]:
    """Shapes of what the training forward returns (the loss's inputs), without the head's input feature maps."""
    def flat(o):
        if isinstance(o, torch.Tensor):
            return [tuple(o.shape)]
        if isinstance(o, dict):
            return [s for k, v in o.items() if k != "feats" for s in flat(v)]
        return [s for v in o for s in flat(v)] if isinstance(o, (list, tuple)) else []
    model.train()
    try:
        with torch.no_grad():
            return flat(model(x))
    finally:
        model.eval()


@pytest.mark.parametrize(("yaml", "task"), FAMILIES)
def test_masked_equals_removed_equals_compacted(yaml, task):
    model = build(yaml, NC)
    assert sources.adapter_for(model).task(model) == task
    err = assert_masked_equals_removed_equals_compacted(lambda: build(yaml, NC), 0.3, _image(model))
    assert err < 1e-5


@pytest.mark.parametrize(("yaml", "task"), FAMILIES)
def test_prune_keeps_the_task_contract(yaml, task):
    model = build(yaml, NC)
    x = _image(model)
    before, widths = contract(model, x), _contract_widths(model)
    train_before = _train_outputs(model, x)
    report = yp.prune(model, ratio=0.5, imgsz=x.shape[-1])
    assert report.after.params < 0.75 * report.before.params
    assert report.after.gflops < report.before.gflops
    assert [t.shape for t in contract(model, x)] == [t.shape for t in before]
    assert _contract_widths(model) == widths  # mask coefficients, prototypes, keypoints, angles, logits: all kept
    assert _train_outputs(model, x) == train_before  # the loss still gets what it reads (YOLO26's training heads too)
    assert all(torch.isfinite(t).all() for t in contract(model, x))


def test_contract_outputs_name_each_task_head():
    seg = build("yolov8n-seg.yaml", NC)
    head = seg.model[-1]
    names = sources.adapter_for(seg).head_output_convs(seg)
    assert {f"model.22.cv4.{i}.2" for i in range(3)} <= names and "model.22.proto.cv3.conv" in names
    out = contract(seg, _image(seg))
    assert [tuple(t.shape[:2]) for t in out] == [(1, 4 + NC + head.nm), (1, head.nm)]  # predictions, prototypes
    cls = build("yolov8n-cls.yaml", NC)
    assert "model.9.linear" in sources.adapter_for(cls).head_output_convs(cls)
    probs, logits = contract(cls, _image(cls))
    assert probs.shape == logits.shape == (1, NC) and torch.allclose(probs, logits.softmax(1))


@pytest.mark.parametrize(("yaml", "branch", "reads"), [
    ("yolo26n-pose.yaml", "model.23.cv4_sigma.0", "model.23.cv4_kpts.0"),
    ("yolo26n-seg.yaml", "model.23.proto.semseg.0.conv", "model.23.proto.feat_fuse.conv"),
], ids=["pose26-sigma", "proto26-semseg"])
def test_yolo26_training_heads_are_coupled_not_left_behind(yaml, branch, reads):
    """Pose26's keypoint-sigma convs and Proto26's semantic head run only in training: the trace runs them beside
    the pass, so that their input channels prune together with what they read (here: with the inference layer that
    reads the same tensor), and freezes their outputs."""
    graph = api.trace_model(build(yaml, NC))
    unit = next(u for u in graph.units if any((m.module, m.dim, m.index) == (branch, 1, 0) for m in u.members))
    assert not unit.frozen and any((m.module, m.dim, m.index) == (reads, 1, 0) for m in unit.members)
    last = {"pose": "model.23.cv4_sigma.0", "seg": "model.23.proto.semseg.2"}[yaml.split("-")[1].split(".")[0]]
    out = next(u for u in graph.units if any((m.module, m.dim) == (last, 0) for m in u.members))
    assert "training-only output" in out.frozen


@pytest.mark.parametrize("yaml", ["yolo26-depth.yaml", "yolo26-sem.yaml", "yoloe-11-seg.yaml", "yolov8-worldv2.yaml",
                                  "rtdetr-l.yaml"])
def test_other_tasks_and_open_vocabulary_models_are_refused(yaml):
    with pytest.raises(CheckpointError, match="detect, segment, pose, obb and classify") as e:
        sources.load_model(yaml)
    assert "\n" not in str(e.value)


_EXPORTED = [("yolov8n-seg.yaml", 2), ("yolo26n-seg.yaml", 2), ("yolo11n-pose.yaml", 1), ("yolo26n-pose.yaml", 1),
             ("yolo11n-obb.yaml", 1), ("yolo11n-cls.yaml", 1)]


@pytest.mark.parametrize(("yaml", "outputs"), _EXPORTED, ids=[y.removesuffix(".yaml") for y, _ in _EXPORTED])
def test_pruned_model_exports_to_onnx_matching_pytorch(yaml, outputs, tmp_path):
    """Every exported output (a segmentation model's prototypes too) is compared, channels on their own scale."""
    pytest.importorskip("onnxruntime")
    from yoloprune.workflows.export import ExportConfig, export, parity

    model = build(yaml, NC)
    yp.prune(model, ratio=0.4, imgsz=64)
    ckpt = sources.save_checkpoint(model, tmp_path / "p.pt")
    res = export(ExportConfig(model=str(ckpt), out=str(tmp_path / "m.onnx"), imgsz=64, images=2, latency_runs=2))
    assert res.max_rel_err < 1e-4
    assert len(sources.adapter_for(model).output_layout(model)) == outputs
    assert parity(res.path, str(ckpt), [torch.rand(1, 3, 64, 64).numpy()]) < 1e-4


def test_export_parity_catches_a_tampered_prototype(tmp_path):
    """The mask prototypes are an output of their own: a change there alone fails the check."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from yoloprune.workflows.export import export_onnx, parity

    model = build("yolov8n-seg.yaml", NC)
    yp.prune(model, ratio=0.4, imgsz=64)
    ckpt = sources.save_checkpoint(model, tmp_path / "p.pt")
    path = export_onnx(str(ckpt), tmp_path / "m.onnx", imgsz=64)
    x = [torch.rand(1, 3, 64, 64).numpy()]
    assert parity(path, str(ckpt), x) < 1e-4
    g = onnx.load(str(path))
    init = next(t for t in g.graph.initializer if "proto.cv3" in t.name and t.name.endswith("bias"))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.5, init.name))
    onnx.save(g, str(tmp_path / "bad.onnx"))
    assert parity(tmp_path / "bad.onnx", str(ckpt), x) > 1e-2


@pytest.mark.parametrize("yaml", ["yolo11n-seg.yaml", "yolov8n-pose.yaml", "yolov8n-obb.yaml", "yolov8n-cls.yaml"])
def test_cli_prunes_compacts_sparsifies_and_describes_each_task(yaml, tmp_path, capsys):
    """The commands take any task's checkpoint and write a checkpoint of the same class and task."""
    from yoloprune.cli import main

    src = sources.save_checkpoint(build(yaml, NC), tmp_path / "m.pt")
    full, _ = sources.load_model(src)
    params = sum(q.numel() for q in full.parameters())
    pruned, compacted, sparse = tmp_path / "p.pt", tmp_path / "c.pt", tmp_path / "s.pt"
    assert main(["prune", "--model", str(src), "--ratio", "0.4", "--imgsz", "64", "--out", str(pruned)]) == 0
    assert main(["compact", "--model", str(pruned), "--out", str(compacted)]) == 0
    assert main(["sparsify", "--model", str(pruned), "--amount", "0.3", "--imgsz", "64", "--out", str(sparse)]) == 0
    assert main(["info", "--model", str(pruned), "--imgsz", "64"]) == 0
    frozen = capsys.readouterr().out.split("layers with frozen output channels:")[-1]
    assert all(f"  {name} (" in frozen for name in sources.adapter_for(full).head_output_convs(full))  # info lists the contract layers
    for path in (pruned, compacted, sparse):
        model, _ = sources.load_model(path)
        assert type(model) is type(full) and sources.adapter_for(model).task(model) == sources.adapter_for(full).task(full)
        assert [t.shape for t in contract(model, _image(model))] == [t.shape for t in contract(full, _image(full))]
    p_params = sum(q.numel() for q in sources.load_model(pruned)[0].parameters())
    assert p_params < 0.8 * params
    assert sum(q.numel() for q in sources.load_model(compacted)[0].parameters()) == p_params  # nothing more was zero


# -- evaluation per task, on tiny generated data ----------------------------------------------------------------
_VAL = {"segment": "yolov8n-seg.yaml", "pose": "yolo11n-pose.yaml", "obb": "yolo11n-obb.yaml",
        "classify": "yolo11n-cls.yaml"}


def _task_model(yaml: str) -> torch.nn.Module:
    """A seeded model of the yaml's task for the tiny data: 3 classes, pose with 4 keypoints of 3 values."""
    from ultralytics.nn.tasks import yaml_model_load

    from yoloprune.sources import build_model

    cfg = yaml_model_load(yaml)
    if "-pose" in yaml:
        cfg["kpt_shape"] = [4, 3]
    torch.manual_seed(0)
    return build_model(cfg, nc=NC).eval()


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    from conftest import tiny_task_data

    root = tmp_path_factory.mktemp("tasks")
    return {task: tiny_task_data(root / task, task) for task in _VAL}


@pytest.fixture(scope="module")
def pruned_ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("pruned")
    out = {}
    for task, yaml in _VAL.items():
        model = _task_model(yaml)
        yp.prune(model, ratio=0.3, imgsz=64)
        out[task] = sources.save_checkpoint(model, root / f"{task}.pt")
    return out


@pytest.mark.parametrize("task", list(_VAL))
def test_val_reports_the_tasks_own_metric_as_its_validator_does(task, task_data, pruned_ckpts):
    """The Evaluator runs the task's Ultralytics validator and reports its metric; the numbers are those of a plain
    ``YOLO(path).val`` run on the same data (pycocotools, for masks, is checked against exact ground truth below)."""
    from ultralytics import YOLO

    res = yp.evaluate(str(pruned_ckpts[task]), str(task_data[task]), imgsz=64, batch=4)
    names = {"segment": ("mask mAP50-95", "mask mAP50"), "pose": ("pose mAP50-95", "pose mAP50"),
             "obb": ("OBB mAP50-95", "OBB mAP50"), "classify": ("top-1 accuracy", "top-5 accuracy")}[task]
    assert (res.metric, res.metric50) == names and res.coco == (task in ("segment", "pose")) and res.images == 4
    direct = YOLO(str(pruned_ckpts[task])).val(data=str(task_data[task]), imgsz=64, batch=4, device="cpu", plots=False,
                                               workers=0, verbose=False, project=str(pruned_ckpts[task].parent),
                                               conf=0.001, iou=0.7)
    key = {"segment": "metrics/mAP50-95(M)", "pose": "metrics/mAP50-95(P)", "obb": "metrics/mAP50-95(B)",
           "classify": "metrics/accuracy_top1"}[task]
    assert res.ultralytics_map50_95 == pytest.approx(direct.results_dict[key], abs=1e-5)
    if task == "classify":
        assert res.map50 == 1.0 and 0 <= res.map50_95 <= 1  # 3 classes: the true one is always in the top 5
    assert names[0] in res.table()


def test_mask_map_of_the_ground_truth_itself_is_one(task_data):
    """pycocotools' mask mAP over the COCO ground truth made from polygon labels: the labels as predictions score
    1, a shifted copy less."""
    from pycocotools import mask as mask_utils

    from yoloprune.data.coco import coco_map, yolo_split_to_coco

    root = task_data["segment"].parent / "segment"
    gt = yolo_split_to_coco(root / "images/val", root / "labels/val", [f"c{c}" for c in range(NC)])
    assert all(len(a["segmentation"][0]) >= 8 for a in gt["annotations"])

    def predictions(shift: float) -> list[dict]:
        out = []
        for a in gt["annotations"]:
            im = gt["images"][a["image_id"]]
            poly = [[v + shift for v in a["segmentation"][0]]]
            rle = mask_utils.merge(mask_utils.frPyObjects(poly, im["height"], im["width"]))
            rle["counts"] = rle["counts"].decode()
            out.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9,
                        "segmentation": rle})
        return out

    assert coco_map(gt, predictions(0), "segm")[:2] == (1.0, 1.0)
    assert coco_map(gt, predictions(4), "segm")[0] < 0.8


def test_keypoint_map_is_oks_with_the_given_sigmas(task_data):
    """pycocotools' keypoint mAP over the COCO ground truth made from pose labels: the labels as predictions score 1,
    a copy with every point 2 px off scores less, and less still with a tighter sigma; a hidden (v=0) point is read
    as unlabelled. The object area is Ultralytics' (0.53 of the box)."""
    from yoloprune.data.coco import POSE_AREA, coco_keypoints, coco_map, yolo_split_to_coco

    root = task_data["pose"].parent / "pose"
    gt = yolo_split_to_coco(root / "images/val", root / "labels/val", [f"c{c}" for c in range(NC)], (4, 3))
    a = gt["annotations"][0]
    assert len(a["keypoints"]) == 12 and a["num_keypoints"] == 4
    assert a["area"] == pytest.approx(POSE_AREA * a["bbox"][2] * a["bbox"][3])
    xs, ys = a["keypoints"][0::3], a["keypoints"][1::3]  # the corners span the box
    assert (min(xs), min(ys)) == pytest.approx((a["bbox"][0], a["bbox"][1]), abs=1e-3)

    def predictions(shift: float) -> list[dict]:
        return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9,
                 "keypoints": [v + shift if i % 3 < 2 else v for i, v in enumerate(a["keypoints"])]}
                for a in gt["annotations"]]

    assert coco_map(gt, predictions(0), "keypoints", sigmas=[0.1] * 4)[:2] == (1.0, 1.0)
    loose = coco_map(gt, predictions(2), "keypoints", sigmas=[0.2] * 4)[0]
    tight = coco_map(gt, predictions(2), "keypoints", sigmas=[0.05] * 4)[0]
    assert tight < loose < 1.0 and tight < 0.5

    row = [0.5, 0.5, 0.2, 0.2, 0.1, 0.2, 1, 0.3, 0.4, 0]  # a box, a point under a leaf (v=1), an unlabelled one
    assert coco_keypoints(row, (2, 3), 100, 50) == {"keypoints": [10.0, 10.0, 1, 0.0, 0.0, 0], "num_keypoints": 1}


@pytest.mark.parametrize("task", ["segment", "pose"])
def test_pruned_checkpoint_predicts_and_validates_in_a_fresh_process_without_yoloprune(task, task_data, pruned_ckpts):
    import subprocess
    import sys
    import textwrap

    ckpt, data = pruned_ckpts[task], task_data[task]
    probe = textwrap.dedent(f"""
        import os, sys
        os.environ["YOLO_OFFLINE"] = "1"
        import numpy as np
        from ultralytics import YOLO
        m = YOLO({str(ckpt)!r})
        assert m.task == {task!r}, m.task
        res = m.predict(np.full((64, 64, 3), 120, np.uint8), imgsz=64, conf=0.0, verbose=False)[0]
        extra = res.masks if {task!r} == "segment" else res.keypoints
        assert extra is not None and len(extra) == len(res.boxes) > 0
        shape = tuple(extra.data.shape[1:])
        metrics = m.val(data={str(data)!r}, imgsz=64, batch=4, device="cpu", plots=False, workers=0, verbose=False,
                        project={str(ckpt.parent / "fresh")!r})
        assert "yoloprune" not in sys.modules, "the checkpoint pulled yoloprune in"
        key = "metrics/mAP50-95(M)" if {task!r} == "segment" else "metrics/mAP50-95(P)"
        print(shape, metrics.results_dict[key], sum(p.numel() for p in m.model.parameters()))
    """)
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                       cwd=str(ckpt.parent))
    assert p.returncode == 0, p.stderr[-2000:]
    shape, value, params = p.stdout.strip().splitlines()[-1].rsplit(" ", 2)
    assert 0 <= float(value) <= 1
    assert int(params) < 0.8 * sum(q.numel() for q in _task_model(_VAL[task]).parameters())
    if task == "pose":
        assert shape == "(4, 3)"  # 4 keypoints of (x, y, visibility)
    else:
        assert shape == "(64, 64)"  # a mask per detection, at the image size


def test_val_cli_prints_and_writes_the_tasks_metric(task_data, pruned_ckpts, tmp_path, capsys):
    import json

    from yoloprune.cli import main

    out = tmp_path / "val.json"
    assert main(["val", "--model", str(pruned_ckpts["classify"]), "--data", str(task_data["classify"]),
                 "--imgsz", "64", "--json", str(out)]) == 0
    assert "top-1 accuracy" in capsys.readouterr().out
    got = json.loads(out.read_text())
    assert got["metric"] == "top-1 accuracy" and got["map50"] == 1.0
    assert main(["val", "--model", str(pruned_ckpts["segment"]), "--data", str(task_data["classify"]),
                 "--imgsz", "64"]) == 2  # a classification folder for a segmentation model: one line, exit 2
    assert "segment model" in capsys.readouterr().err


def test_sweep_of_a_segmentation_model_names_its_metric(task_data, pruned_ckpts, tmp_path):
    from yoloprune.workflows.sweep import SweepConfig, read_results, sweep

    model = sources.save_checkpoint(_task_model(_VAL["segment"]), tmp_path / "seg.pt")
    df = sweep(SweepConfig(model=str(model), data=str(task_data["segment"]), out=str(tmp_path / "s"),
                           ratios=[0.0, 0.4], imgsz=64, batch=4, workers=0, latency_runs=2, calib_images=4))
    assert set(df["status"]) == {"ok"} and set(df["metric"]) == {"mask mAP50-95"}
    assert df.set_index("ratio").loc[0.4, "params_ratio"] < 0.7
    assert read_results(tmp_path / "s")["metric"].tolist() == ["mask mAP50-95"] * 2
    md = (tmp_path / "s" / "results.md").read_text().splitlines()
    assert "| metric | map50_95 |" in md[0] and "mask mAP50-95" in md[2]


@pytest.mark.parametrize("task", list(_VAL))
def test_finetune_keeps_the_pruned_architecture_in_the_tasks_trainer(task, task_data, pruned_ckpts, tmp_path):
    from yoloprune.workflows.train import TrainConfig, train

    before, _ = sources.load_model(pruned_ckpts[task])
    out = train(TrainConfig(model=str(pruned_ckpts[task]), data=str(task_data[task]), out=str(tmp_path / "ft.pt"),
                            epochs=1, imgsz=64, batch=4, workers=0, finetune=True, project=str(tmp_path), name="ft",
                            sr=1e-3 if task == "segment" else 0.0))  # seg: sparsity training, on its own trainer
    after, ckpt = sources.load_model(out)
    assert type(after) is type(before) and ckpt["train_args"]["task"] == task
    shapes = {k: v.shape for k, v in before.state_dict().items()}
    assert {k: v.shape for k, v in after.state_dict().items()} == shapes  # every pruned width kept
    changed = [k for k, v in after.state_dict().items() if v.is_floating_point() and k.endswith(".weight")
               and not torch.allclose(v.float(), before.state_dict()[k].float())]
    assert changed, "one epoch of training changed no weight"


def test_sparsity_training_of_a_classifier_is_refused_in_one_line(task_data, pruned_ckpts, tmp_path):
    from yoloprune.workflows.train import TrainConfig, train

    with pytest.raises(yp.ConfigError, match="classify"):
        train(TrainConfig(model=str(pruned_ckpts["classify"]), data=str(task_data["classify"]), out=str(tmp_path / "x"),
                          epochs=1, imgsz=64, batch=4, workers=0, sr=1e-3, project=str(tmp_path)))


@pytest.fixture(scope="module")
def pruned_from_source(tmp_path_factory):
    """Unpruned seg and pose models and copies pruned from them whose metadata records them as the source."""
    from yoloprune.sources import source_meta

    root = tmp_path_factory.mktemp("from-source")
    out = {}
    for task in ("segment", "pose"):
        base = sources.save_checkpoint(_task_model(_VAL[task]), root / f"{task}-base.pt")
        report = yp.prune(str(base), ratio=0.3, imgsz=64)
        out[task] = base, sources.save_checkpoint(report.model, root / f"{task}.pt", report.ckpt, source_meta(str(base)))
    return out


@pytest.mark.parametrize("task", ["segment", "pose"])
def test_distilled_finetune_of_a_task_model_keeps_widths_and_drops_the_teacher(task, task_data, pruned_from_source,
                                                                               tmp_path):
    """Distillation from the recorded source through the task's own trainer: the distillation loss is trained and
    the output is the plain task model at its pruned widths, without teacher or projectors."""
    from yoloprune.workflows.train import TrainConfig, default_teacher, train

    base, pruned = pruned_from_source[task]
    assert default_teacher(str(pruned)) == str(base.resolve())
    before, _ = sources.load_model(pruned)
    out = train(TrainConfig(model=str(pruned), data=str(task_data[task]), out=str(tmp_path / "kd.pt"), epochs=1,
                            imgsz=64, batch=4, workers=0, finetune=True, teacher=str(base), project=str(tmp_path),
                            name="kd"))
    assert "train/dis_loss" in (tmp_path / "kd" / "results.csv").read_text().splitlines()[0]
    after, ckpt = sources.load_model(out)
    assert type(after) is type(before) and ckpt["train_args"]["task"] == task
    assert not any("teacher" in n or "projector" in n for n in after.state_dict())
    assert {k: v.shape for k, v in after.state_dict().items()} == {k: v.shape for k, v in before.state_dict().items()}
    assert ckpt["yoloprune"]["distilled_from"] == str(base.resolve())


def test_iterative_pruning_of_a_pose_model_reaches_its_target_and_reports_pose_map(task_data, pruned_from_source,
                                                                                  tmp_path):
    from yoloprune.api import gflops
    from yoloprune.workflows.iterative import IterativeConfig, iterative_prune

    base, _ = pruned_from_source["pose"]
    out = tmp_path / "it.pt"
    df = iterative_prune(IterativeConfig(model=str(base), data=str(task_data["pose"]), out=str(out),
                                         target=yp.Gflops(0.6), steps=2, epochs=1, imgsz=64, batch=4, workers=0,
                                         calib_images=4))
    assert list(df["step"]) == [0, 1, 2] and set(df["metric"]) == {"pose mAP50-95"}
    model, _ = sources.load_model(out)
    assert sources.adapter_for(model).task(model) == "pose" and tuple(model.model[-1].kpt_shape) == (4, 3)
    got = gflops(model, 64) / gflops(sources.load_model(base)[0], 64)
    assert 0.5 < got <= 0.6 + 1e-6, got
