"""Checkpoints written by each release of the original YOLOv5 repository (v3.1-style to v7.0), made by that
release's own code (``tests/fixtures/yolov5-releases``: how, in its README): they load with the outputs that
release's code computes, prune, and save back under the names they were read by, in the layout they came in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import contract, max_rel_err

import yoloprune as yp
from yoloprune import sources
from yoloprune.sources.yolov5 import checkpoint

RELEASES = Path(__file__).resolve().parents[1] / "fixtures" / "yolov5-releases"
REFERENCES = torch.load(RELEASES / "references.pt", weights_only=True)  # plain tensors: computed by each release
MANIFEST = json.loads((RELEASES / "manifest.json").read_text())
FILES = sorted(REFERENCES)


def _input(name: str) -> torch.Tensor:
    ref = REFERENCES[name]
    torch.manual_seed(ref["input_seed"])
    return torch.rand(1, 3, ref["imgsz"], ref["imgsz"])


def _expected(name: str) -> list[torch.Tensor]:
    out = REFERENCES[name]["output"]
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _original_names(path: Path) -> set[str]:
    return {f"{m}.{n}" for m, n in checkpoint._pickle_globals(path) if checkpoint._is_original_module(m)}


def test_every_release_family_is_covered():
    releases = {name.split("-")[0] for name in FILES}
    assert {"v3.1", "v4.0", "v5.0", "v6.0", "v6.1", "v6.2", "v7.0"} <= releases
    kinds = {name: sources.adapter_for(sources.load_model(RELEASES / name)[0]).task(sources.load_model(
        RELEASES / name)[0]) for name in ("v7.0-yolov5n-seg.pt", "v6.2-yolov5n-cls.pt", "v7.0-yolov5n.pt")}
    assert kinds == {"v7.0-yolov5n-seg.pt": "segment", "v6.2-yolov5n-cls.pt": "classify", "v7.0-yolov5n.pt": "detect"}


@pytest.mark.parametrize("name", FILES)
def test_loads_with_the_outputs_of_its_release_s_own_code(name):
    model, ckpt = sources.load_model(RELEASES / name)
    got = contract(model, _input(name))
    want = _expected(name)
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in want]
    assert max_rel_err(got, want) < 1e-4, name
    assert next(model.parameters()).dtype == torch.float32 and not model.training


@pytest.mark.parametrize("name", FILES)
def test_prunes_and_saves_back_as_its_release_reads_it(name, tmp_path):
    path = RELEASES / name
    x = _input(name)
    report = yp.prune(str(path), ratio=0.3, imgsz=int(REFERENCES[name]["imgsz"]), round_to=1)  # tiny widths
    assert report.after.params < 0.85 * report.before.params
    out = sources.save_checkpoint(report.model, tmp_path / "pruned.pt", report.ckpt)
    # the same class names as the input (Model before v6.2, DetectionModel after; the yolov5 package's prefix)
    assert _original_names(out) <= _original_names(path) | {"models.common.Proto"}, name
    model_class = {n for n in _original_names(path) if n.rsplit(".", 1)[1].endswith("Model")}
    assert model_class <= _original_names(out)
    # the anchor grid as the release keeps it: a buffer before v6.0 (its forward reads it), else a cache
    head = torch.load(out, map_location="cpu", weights_only=False, pickle_module=_Stubs)["model"]["model"][-1]
    was_buffer = MANIFEST[name]["check"]["anchor_grid"] == "buffer"
    assert ("anchor_grid" in head["_buffers"]) == was_buffer, name
    again, _ = sources.load_model(out)
    assert max_rel_err(contract(again, x), contract(report.model.half().float(), x)) < 1e-3


class _Stubs:
    """Unpickles a saved file's classes as plain dicts of their state: reads it without yoloprune's classes."""

    class Unpickler(__import__("pickle").Unpickler):
        def find_class(self, module, name):
            if module.split(".")[0] in ("models", "yolov5"):
                return _StateDict
            return super().find_class(module, name)

    load = __import__("pickle").load


class _StateDict(dict):
    forward = None  # v7.0's Segment keeps ``Detect.forward`` as an attribute
    def __setstate__(self, state):
        self.update(state)

    def __getitem__(self, k):
        return dict.__getitem__(self, k) if k in self else dict.__getitem__(self, "_modules")[k]


def test_package_layout_is_saved_back_in_the_package_layout(tmp_path):
    path = RELEASES / "v7.0-yolov5n-pippkg.pt"
    assert all(n.startswith("yolov5.models.") for n in _original_names(path))
    model, ckpt = sources.load_model(path)
    out = sources.save_checkpoint(model, tmp_path / "o.pt", ckpt)
    assert _original_names(out) and all(n.startswith("yolov5.models.") for n in _original_names(out))
    plain = RELEASES / "v7.0-yolov5n.pt"
    m2, c2 = sources.load_model(plain)
    out2 = sources.save_checkpoint(m2, tmp_path / "o2.pt", c2)
    assert not any(n.startswith("yolov5.") for n in _original_names(out2))


def test_p6_models_prune_at_their_size(tmp_path):
    for name in ("v5.0-yolov5s6.pt", "v6.1-yolov5n6.pt"):
        model, _ = sources.load_model(RELEASES / name)
        head = model.model[-1]
        assert head.nl == 4 and head.stride.tolist() == [8.0, 16.0, 32.0, 64.0]
        report = yp.prune(model, ratio=0.3, imgsz=256, round_to=1)
        assert report.after.gflops < 0.8 * report.before.gflops
        y = contract(report.model, torch.rand(1, 3, 256, 256))[0]
        assert y.shape == (1, 3 * (32 * 32 + 16 * 16 + 8 * 8 + 4 * 4), 8)
