"""export --int8: a static INT8 ONNX copy that keeps the FP32 model's detections, with the head's float part chosen
by measured drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import build

import yoloprune as yp
from yoloprune.cli import main
from yoloprune.data.images import letterboxed_images
from yoloprune.sources.ultralytics.export import fast_dfl
from yoloprune.speed.runtimes import ort_session
from yoloprune.workflows.quantize import SCORE_TOLERANCE, float_candidates

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "teabud.yaml"
IMGSZ = 160


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8")
    out = tmp / "m.onnx"
    assert main(["export", "--model", str(ROOT / "weights" / "teabud-yolov8n.pt"), "--out", str(out), "--imgsz",
                 str(IMGSZ), "--data", str(DATA), "--int8", "--calib-images", "24"]) == 0
    return out, tmp / "m.int8.onnx"


@pytest.mark.xdist_group("int8-export")  # with the other user of the module fixture: exported once
def test_int8_export_keeps_the_fp32_models_detections(exported, capsys):
    fp32, int8 = exported
    assert int8.is_file() and int8.stat().st_size < 0.5 * fp32.stat().st_size
    graph = onnx.load(str(int8)).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 20
    a, b = ort_session(fp32), ort_session(int8)
    name = a.get_inputs()[0].name
    hits, box_err, score_err = 0, [], []
    for x in letterboxed_images(DATA, "val", 16, IMGSZ):
        ya, yb = (s.run(None, {name: x[None]})[0][0] for s in (a, b))  # (4 + 2 classes, anchors)
        hit = ya[4:].max(0) > 0.25
        hits += int(hit.sum())
        box_err.append(np.abs(ya[:4, hit] - yb[:4, hit]).max(0) / IMGSZ)
        score_err.append(np.abs(ya[4:, hit] - yb[4:, hit]).max(0))
    box_err, score_err = np.concatenate(box_err), np.concatenate(score_err)
    assert hits > 20
    assert box_err.mean() * IMGSZ < 0.5 and np.median(box_err) * IMGSZ < 0.3  # worst side, in pixels
    assert score_err.mean() < 2 * SCORE_TOLERANCE and score_err.max() < 0.3
    # the most confident detection of each image keeps its class and stays in place
    tops = [(s.run(None, {name: x[None]})[0][0]) for s in (a, b) for x in letterboxed_images(DATA, "val", 4, IMGSZ)]
    for ya, yb in zip(tops[:4], tops[4:], strict=True):
        k = int(ya[4:].max(0).argmax())
        assert ya[4:, k].argmax() == yb[4:, k].argmax() and np.abs(ya[:4, k] - yb[:4, k]).max() < 2.0


@pytest.mark.xdist_group("int8-export")
def test_the_dfl_is_exported_without_a_middle_axis_softmax_and_only_decoding_stays_float(exported, tmp_path):
    """The DFL's softmax over its bins is rewritten as reductions (same boxes); of the head, the decoding and the
    six 1x1 output convs are what may stay in float, never the 3x3 feature convs."""
    fp32, _ = exported
    graph = onnx.load(str(fp32)).graph
    assert not [n for n in graph.node if n.op_type == "Softmax"]
    assert sum(n.op_type == "ReduceSum" for n in graph.node) == 2
    candidates = dict(float_candidates(fp32))
    learned = [n for n in candidates["head"] if n.endswith("Conv")]
    assert len(learned) == 18 and not [n for n in candidates["decoding"] if n.endswith("Conv")]
    outputs = [n for n in candidates["decoding + output convs"] if n.endswith("Conv")]
    assert sorted(outputs) == sorted(f"/model.22/{b}.{i}/{b}.{i}.2/Conv" for b in ("cv2", "cv3") for i in range(3))
    # the same file as Ultralytics writes it: the rewrite changes no output, and there the DFL conv is decoding
    from ultralytics import YOLO

    copy = tmp_path / "plain.pt"
    copy.write_bytes((ROOT / "weights" / "teabud-yolov8n.pt").read_bytes())
    orig = Path(YOLO(str(copy)).export(format="onnx", imgsz=IMGSZ, device="cpu"))
    assert [n for n in onnx.load(str(orig)).graph.node if n.op_type == "Softmax"]
    assert "/model.22/dfl/conv/Conv" in dict(float_candidates(orig))["decoding"]
    x = letterboxed_images(DATA, "val", 1, IMGSZ)
    a, b = ort_session(orig), ort_session(fp32)
    ya, yb = (s.run(None, {s.get_inputs()[0].name: x})[0] for s in (a, b))
    assert ya.shape == yb.shape and np.abs(ya - yb).max() < 1e-3 * IMGSZ
    rewritten = tmp_path / "again.onnx"
    rewritten.write_bytes(orig.read_bytes())
    assert fast_dfl(rewritten) == 1 and fast_dfl(rewritten) == 0  # a file already rewritten is left as it is
    # a dynamic export (batch and size from Shape ops): the same outputs for a batch of two at another size
    dyn = Path(YOLO(str(copy)).export(format="onnx", imgsz=IMGSZ, dynamic=True, device="cpu"))
    fast = tmp_path / "dyn.onnx"
    fast.write_bytes(dyn.read_bytes())
    assert fast_dfl(fast) == 1
    x2 = letterboxed_images(DATA, "val", 2, 2 * IMGSZ)
    ya, yb = (s.run(None, {s.get_inputs()[0].name: x2})[0] for s in (ort_session(dyn), ort_session(fast)))
    assert ya.shape == yb.shape and ya.shape[:2] == (2, 6) and np.abs(ya - yb).max() < 2e-3 * IMGSZ


def test_int8_refuses_what_it_cannot_quantize_in_one_line(tmp_path, capsys):
    cls = yp.save_checkpoint(build("yolov8n-cls.yaml", nc=2), tmp_path / "cls.pt")
    assert main(["export", "--model", str(cls), "--out", str(tmp_path / "c.onnx"), "--imgsz", "64", "--int8",
                 "--calib-data", str(DATA)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--int8" in err[0]
    det = yp.save_checkpoint(build("yolov8n.yaml", nc=2), tmp_path / "det.pt")  # records no training data
    assert main(["export", "--model", str(det), "--out", str(tmp_path / "d.onnx"), "--imgsz", "64", "--int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--calib-data" in err[0]
    assert not (tmp_path / "c.int8.onnx").exists() and not (tmp_path / "d.int8.onnx").exists()


@pytest.mark.xdist_group("int8-export")
def test_val_of_an_exported_file_matches_its_checkpoint(exported, capsys):
    fp32, int8 = exported
    evaluator = yp.Evaluator(str(DATA), "val", imgsz=IMGSZ)
    ckpt = evaluator(str(ROOT / "weights" / "teabud-yolov8n.pt")).map50_95
    onnx_map = evaluator(str(fp32)).map50_95
    int8_map = evaluator(str(int8)).map50_95
    assert abs(onnx_map - ckpt) < 0.005 and ckpt > 0.2
    assert abs(int8_map - onnx_map) < 0.03, (ckpt, onnx_map, int8_map)
    assert main(["val", "--model", str(fp32), "--data", str(DATA), "--imgsz", "320"]) == 2  # exported at 160
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--imgsz 160" in err[0]


def test_another_runtimes_export_is_checked_against_pytorch_and_loads_in_ultralytics(tmp_path, capsys):
    pytest.importorskip("openvino")  # a dev dependency: CI has it
    out = tmp_path / "m_openvino_model"
    assert main(["export", "--model", str(ROOT / "weights" / "teabud-yolov8n.pt"), "--out", str(out), "--imgsz",
                 str(IMGSZ), "--format", "openvino", "--data", str(DATA)]) == 0
    printed = capsys.readouterr().out
    assert "openvino vs PyTorch on 8 letterboxed val images" in printed and (out / "model.xml").is_file()
    assert main(["export", "--model", str(ROOT / "weights" / "teabud-yolov8n.pt"), "--out", str(tmp_path / "x"),
                 "--format", "openvino"]) == 2  # Ultralytics finds the format by the folder's name
    assert "_openvino_model" in capsys.readouterr().err
    evaluator = yp.Evaluator(str(DATA), "val", imgsz=IMGSZ)  # val reads the folder as it reads an ONNX file
    ckpt = evaluator(str(ROOT / "weights" / "teabud-yolov8n.pt")).map50_95
    assert abs(evaluator(str(out)).map50_95 - ckpt) < 0.01, "OpenVINO (bf16 where the CPU has it) keeps the mAP"


def test_openvino_int8_is_calibrated_on_train_images_and_keeps_the_map(tmp_path, capsys):
    pytest.importorskip("nncf")  # with openvino, a dev dependency: CI has it
    out = tmp_path / "m_openvino_model"
    assert main(["export", "--model", str(ROOT / "weights" / "teabud-yolov8n.pt"), "--out", str(out), "--imgsz",
                 str(IMGSZ), "--format", "openvino", "--int8", "--data", str(DATA), "--calib-images", "32"]) == 0
    xml = (out / "model.xml").read_text()
    assert xml.count('type="FakeQuantize"') > 30 and xml.count('element_type="i8"') > 30, "INT8 weights and inputs"
    evaluator = yp.Evaluator(str(DATA), "val", imgsz=IMGSZ)
    ckpt = evaluator(str(ROOT / "weights" / "teabud-yolov8n.pt")).map50_95
    assert abs(evaluator(str(out)).map50_95 - ckpt) < 0.03
    assert main(["export", "--model", str(ROOT / "weights" / "teabud-yolov8n.pt"), "--out",
                 str(tmp_path / "n_ncnn_model"), "--format", "ncnn", "--int8", "--data", str(DATA)]) == 2
    assert "--int8" in capsys.readouterr().err


def test_a_runtime_that_is_not_installed_is_one_line_and_exit_2(tmp_path, capsys):
    import importlib.util

    if all(importlib.util.find_spec(m) for m in ("ncnn", "pnnx")):
        pytest.skip("ncnn and pnnx are installed here")
    assert main(["export", "--model", str(ROOT / "weights" / "teabud-yolov8n.pt"), "--out",
                 str(tmp_path / "m_ncnn_model"), "--format", "ncnn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install" in err[0] and not (tmp_path / "m_ncnn_model").exists()
