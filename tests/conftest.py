"""Shared fixtures: tiny detectors built from Ultralytics' own yaml files (no downloads), with realistic BN state."""

from __future__ import annotations

import atexit
import contextlib
import copy
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
# Latency tables of the tests' models stay out of the user's cache, in a folder of this process's own: an xdist
# worker makes its own rather than share the one it inherits from the controller (YOLOPRUNE_TEST_CACHE names the
# folder a conftest made; a YOLOPRUNE_CACHE the user set is kept).
_OWN_CACHE = "YOLOPRUNE_TEST_CACHE"
if os.environ.get("YOLOPRUNE_CACHE", os.environ.get(_OWN_CACHE)) == os.environ.get(_OWN_CACHE):
    os.environ["YOLOPRUNE_CACHE"] = os.environ[_OWN_CACHE] = tempfile.mkdtemp(prefix="yoloprune-test-cache-")
    atexit.register(shutil.rmtree, os.environ[_OWN_CACHE], True)

import pytest  # noqa: E402
import torch  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

from yoloprune.engine.hooks import ModelHooks  # noqa: E402

FAMILIES = ["yolov5nu.yaml", "yolov8n.yaml", "yolo11n.yaml"]
SLOW_TIMEOUT = 900  # seconds: a slow test that runs longer has hung (the fast ones get the ini's 300)


def pytest_collection_modifyitems(items) -> None:
    """Every slow test gets a timeout of its own, unless it names one; and the slow tests run first (in their
    order), so that xdist's workers end on short tests rather than one of them on a long one."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: same order on every worker


def pytest_configure(config) -> None:
    """Under xdist, what the workers would otherwise race to create on a fresh machine is made once, here in the
    controller, before they start: the font link of ``offline_runtime`` (in the user's cache; two workers creating
    it at once leave one of them without the font) and Ultralytics' settings file (made on import, above)."""
    if "PYTEST_XDIST_WORKER" not in os.environ and getattr(config.option, "numprocesses", None):
        from yoloprune.runtime import offline_runtime

        env = dict(os.environ)
        offline_runtime()
        os.environ.clear()  # the workers inherit the controller's environment as the tests found it
        os.environ.update(env)


@contextlib.contextmanager
def _turn(item):
    """A test marked ``timing`` (it asserts on measured speed) runs alone: under xdist, the other workers wait
    between tests until it is done, so that nothing else competes for the cores while it times. The locks are two
    files in the run's base temp folder (the parent of each worker's): every test enters through the gate and holds
    the room shared; a timed test keeps the gate, so no other test starts, and waits to hold the room alone."""
    if "PYTEST_XDIST_WORKER" not in os.environ or not item.config.option.basetemp:
        yield
        return
    import fcntl

    root = Path(item.config.option.basetemp).parent
    alone = item.get_closest_marker("timing") is not None
    with open(root / "timing.gate", "a") as gate, open(root / "timing.room", "a") as room:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(room, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(gate, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Outside pytest-timeout's clock: waiting for a timed test on another worker is not this test's time."""
    with _turn(item):
        yield


_CACHE: dict[tuple[str, int | None], torch.nn.Module] = {}


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial statistics and affine terms, so that every channel matters to the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def build(yaml: str, nc: int | None = None) -> torch.nn.Module:
    """A fresh copy of a randomly initialised (seeded) model of the yaml's task (a detector for ``yolov8n.yaml``, a
    SegmentationModel for ``yolov8n-seg.yaml``, ...); built once per session per yaml and class count."""
    from yoloprune.sources import build_model

    if (yaml, nc) not in _CACHE:
        torch.manual_seed(0)
        _CACHE[(yaml, nc)] = randomize_bn(build_model(yaml, nc=nc)).eval()
    return copy.deepcopy(_CACHE[(yaml, nc)])


class PlainHooks(ModelHooks):
    """The engine's hooks for a plain torch module of no model source: every output is its contract, nothing is
    residual, fixed or cached. The engine needs no more than this interface."""

    def max_stride(self, model):
        return 4

    def gflops(self, model, imgsz):
        return sum(p.numel() for p in model.parameters()) * imgsz * imgsz / 1e9  # a stand-in that falls with width

    def contract_outputs(self, model, out):
        return [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]

    def training_branches(self, model):
        return (), ()

    def residual_blocks(self, model):
        return {}

    def fixed_layers(self, model):
        return set()

    def head_output_convs(self, model):
        return set()

    def head_outputs(self, model):
        return {}

    def fix_widths(self, model):
        pass


PLAIN = PlainHooks()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def head_out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's decoded predictions in eval mode."""
    model.eval()
    with torch.no_grad():
        return model(x)[0]


def contract(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every output that is the model's contract, in eval mode: a detector's predictions, a segmentation model's
    predictions and mask prototypes, a classifier's probabilities and logits."""
    from yoloprune import sources

    model.eval()
    with torch.no_grad():
        return sources.adapter_for(model).contract_outputs(model, model(x))


def max_rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The worst relative error over corresponding outputs (each on its own scale)."""
    assert len(a) == len(b)
    return max(rel_err(u, v) for u, v in zip(a, b, strict=True))


def assert_masked_equals_removed_equals_compacted(make, ratio: float, x: torch.Tensor) -> float:
    """Plan l1 at ``ratio`` on ``make()``: zeroing the planned channels (mask), removing them (apply) and compacting
    the masked model must all give the same outputs (every contract output), the last two with the same parameter
    count. Returns the worst relative error seen."""
    import yoloprune as yp
    from yoloprune.api import apply, trace_model

    model = make()
    full = contract(model, x)
    p = yp.plan(model, trace_model(model), yp.PruneConfig(method="l1"), ratio)
    assert len(p.remove) > 0
    yp.mask(model, p)
    masked = contract(model, x)
    assert max_rel_err(masked, full) > 1e-3, "masking must change the output, or the test proves nothing"

    removed = make()
    yp.mask(removed, p)
    apply(removed, p)
    errs = [max_rel_err(contract(removed, x), masked)]
    assert errs[0] < 1e-5

    params_masked = sum(q.numel() for q in model.parameters())
    report = yp.compact(model)
    assert report.removed_units == len(p.remove)
    errs.append(max_rel_err(contract(model, x), masked))
    assert errs[1] < 1e-5
    assert sum(q.numel() for q in model.parameters()) < params_masked
    assert sum(q.numel() for q in model.parameters()) == sum(q.numel() for q in removed.parameters())
    assert [t.shape for t in contract(model, x)] == [t.shape for t in full]
    return max(errs)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def tiny_project(root, n_train: int, n_val: int, ratio: float = 0.0):
    """A tiny tea-bud dataset under ``root`` and a seeded two-class yolov8n (pruned by ``ratio``) saved as
    ``root/model.pt``. Returns (data yaml, checkpoint)."""
    import yoloprune as yp
    from yoloprune.api import save_checkpoint
    from yoloprune.data.teabud import TeaBudConfig, generate

    data = generate(TeaBudConfig(out=root / "d", n_train=n_train, n_val=n_val, n_test=0))
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    if ratio:
        yp.prune(model, ratio=ratio, imgsz=128)
    return data, save_checkpoint(model, root / "model.pt")


_COLOURS = [(40, 40, 220), (40, 200, 40), (220, 60, 40)]  # BGR per class


def tiny_task_data(root, task: str, n_train: int = 4, n_val: int = 4, size: int = 64, nc: int = 3):
    """A tiny seeded Ultralytics-format dataset for ``task`` under ``root``: one or two filled shapes per image on
    a noisy background, labelled as polygons (segment), four-corner oriented boxes (obb), boxes with 4 corner
    keypoints (pose, kpt_shape [4, 3]), or class folders (classify). Returns the data yaml (classify: the folder)."""
    import cv2
    import numpy as np
    import yaml

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            img = rng.integers(90, 140, (size, size, 3), dtype=np.uint8)
            lines, first = [], None
            for k in range(int(rng.integers(1, 3))):
                c = i % nc if task == "classify" and k == 0 else int(rng.integers(nc))
                first = c if first is None else first
                w, h = rng.uniform(0.25, 0.5, 2) * size * (2 if task == "classify" and k == 0 else 1)
                cx, cy = rng.uniform(0.3, 0.7, 2) * size
                angle = float(rng.uniform(0, 90)) if task == "obb" else 0.0
                corners = cv2.boxPoints(((cx, cy), (w, h), angle))
                cv2.fillPoly(img, [corners.astype(np.int32)], _COLOURS[c])
                pts = np.clip(corners / size, 0, 1)
                x0, y0, x1, y1 = pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()
                if task == "pose":
                    kpts = " ".join(f"{x:.5f} {y:.5f} 2" for x, y in pts)
                    lines.append(f"{c} {(x0 + x1) / 2:.5f} {(y0 + y1) / 2:.5f} {x1 - x0:.5f} {y1 - y0:.5f} {kpts}")
                else:
                    lines.append(f"{c} " + " ".join(f"{v:.5f}" for v in pts.flatten()))
            if task == "classify":
                d = root / split / f"c{first}"
                d.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(d / f"{split}{i}.png"), img)
                continue
            for kind in ("images", "labels"):
                (root / kind / split).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), img)
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    if task == "classify":
        for split in ("train", "val"):
            for c in range(nc):
                (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)  # every class folder exists
        return root
    spec = {"path": str(root), "train": "images/train", "val": "images/val", "names": {c: f"c{c}" for c in range(nc)}}
    if task == "pose":
        spec |= {"kpt_shape": [4, 3], "flip_idx": [1, 0, 3, 2]}
    path = root.parent / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
