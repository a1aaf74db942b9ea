"""Tea-bud generator, COCO conversion, pycocotools mAP on known answers, and bad data files."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from yoloprune.coco import read_yolo_labels
from yoloprune.data import load_data
from yoloprune.errors import DataError
from yoloprune.evaluate import coco_map
from yoloprune.teabud import CLASSES, TeaBudConfig, generate, render_image, render_scene


def test_same_seed_same_pixels_and_labels():
    a, boxes_a = render_image(7, "val", 3)
    b, boxes_b = render_image(7, "val", 3)
    c, _ = render_image(8, "val", 3)
    assert a == b and boxes_a == boxes_b
    assert a != c


def test_labels_are_valid_and_match_visible_objects():
    rng = np.random.default_rng(0)
    n_objects = 0
    for _ in range(8):
        img, boxes = render_scene(rng, 320)
        assert img.shape == (320, 320, 3) and img.dtype == np.uint8
        for cls, x1, y1, x2, y2 in boxes:
            assert cls in (0, 1)
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 320
            assert x2 - x1 >= 3 and y2 - y1 >= 3
            # a tender shoot is paler than the dark canopy around it: its box holds such pixels
            value = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[..., 2]
            assert value[int(y1):int(y2), int(x1):int(x2)].max() > 1.3 * np.median(value)
        n_objects += len(boxes)
    assert n_objects >= 20
    sizes = [max(x2 - x1, y2 - y1) for _, x1, y1, x2, y2 in boxes]
    assert min(sizes) < 40


def test_generate_writes_yolo_and_coco_that_round_trip(tmp_path):
    yaml_path = generate(TeaBudConfig(out=tmp_path / "tb", n_train=2, n_val=3, n_test=1))
    assert yaml_path == tmp_path / "tb.yaml"
    spec = load_data(yaml_path, "val")
    assert spec.names == list(CLASSES)
    coco = json.loads((tmp_path / "tb/annotations/instances_val.json").read_text())
    assert len(coco["images"]) == 3
    for im in coco["images"]:
        rows = read_yolo_labels(tmp_path / "tb/labels/val" / f"{im['file_name'][:-4]}.txt")
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        assert len(rows) == len(anns)
        for (c, cx, cy, w, h), a in zip(rows, anns, strict=True):
            x, y, bw, bh = a["bbox"]
            assert a["category_id"] == c
            assert np.allclose([(x + bw / 2) / 320, (y + bh / 2) / 320, bw / 320, bh / 320], [cx, cy, w, h], atol=1e-6)


def _toy_gt() -> dict:
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in range(2)]
    anns = [{"id": 1, "image_id": 0, "category_id": 0, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 40, 30, 10], "area": 300, "iscrowd": 0}]
    return {"images": images, "annotations": anns, "categories": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]}


def test_pycocotools_map_known_answers():
    gt = _toy_gt()
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt["annotations"]]
    m, m50, per = coco_map(gt, perfect)
    assert m == pytest.approx(1.0) and m50 == pytest.approx(1.0) and per == pytest.approx([1.0, 1.0])
    # shift every box by 30% of its width: IoU ~0.54, so it counts at IoU 0.5 only
    shifted = [{**p, "bbox": [p["bbox"][0] + 0.3 * p["bbox"][2], *p["bbox"][1:]]} for p in perfect]
    m, m50, _ = coco_map(gt, shifted)
    assert m50 == pytest.approx(1.0) and 0.05 < m < 0.2
    assert coco_map(gt, [])[0] == 0.0
    wrong_class = [{**p, "category_id": 1 - p["category_id"]} for p in perfect]
    assert coco_map(gt, wrong_class)[0] == 0.0


@pytest.fixture
def tiny_data(tmp_path):
    generate(TeaBudConfig(out=tmp_path / "d", n_train=1, n_val=2, n_test=0))
    return tmp_path / "d.yaml"


def test_bad_data_files_raise_data_error_naming_the_file(tiny_data, tmp_path):
    root = tiny_data.parent / "d"
    label = sorted((root / "labels/val").glob("*.txt"))[0]
    good = label.read_text()
    cases = {
        "class": "7 0.5 0.5 0.1 0.1\n", "coord": "0 1.5 0.5 0.1 0.1\n", "short": "0 0.5 0.5\n", "text": "a b c d e\n",
    }
    for _kind, text in cases.items():
        label.write_text(text)
        with pytest.raises(DataError, match=label.name):
            load_data(tiny_data, "val")
    label.write_text(good)
    img = sorted((root / "images/val").glob("*.jpg"))[0]
    img.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=img.name):
        load_data(tiny_data, "val")
    shutil.rmtree(root / "labels/val")
    with pytest.raises(DataError, match="label folder"):
        load_data(tiny_data, "val")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("names: [a\ntrain: [")
    with pytest.raises(DataError, match="bad.yaml"):
        load_data(bad_yaml, "val")
    with pytest.raises(DataError, match="not found"):
        load_data(tmp_path / "missing.yaml", "val")


def test_val_cli_refuses_model_with_other_class_count(tiny_data, tmp_path, capsys):
    from yoloprune.cli import main
    from yoloprune.sources.ultralytics import DetectionModel, save_checkpoint

    ckpt = tmp_path / "coco80.pt"
    save_checkpoint(DetectionModel("yolov8n.yaml", verbose=False), ckpt)
    assert main(["val", "--model", str(ckpt), "--data", str(tiny_data)]) == 2
    err = capsys.readouterr().err
    assert "80 classes" in err and err.strip().count("\n") == 0
