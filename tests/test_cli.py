"""CLI: bad input is one line on stderr and exit 2; outputs load with plain Ultralytics in a fresh process."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from yoloprune.api import save_checkpoint
from yoloprune.cli import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "v8n.pt"
    save_checkpoint(DetectionModel("yolov8n.yaml", verbose=False), path)
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yoloprune", *args], capture_output=True, text=True, timeout=300)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bad_files(tmp_path, ckpt):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    plain = tmp_path / "tensor.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    from ultralytics.nn.tasks import DepthModel

    depth = tmp_path / "depth.pt"  # a task yoloprune does not prune (classifiers, since issue 14, it does)
    torch.save({"model": DepthModel("yolo26n-depth.yaml", verbose=False)}, depth)
    return {"missing": tmp_path / "nope.pt", "empty": empty, "text": text, "truncated": trunc,
            "no-model": plain, "depth": depth}


def test_bad_checkpoints_exit_2_with_one_line(tmp_path, ckpt, capsys):
    for kind, path in _bad_files(tmp_path, ckpt).items():
        for cmd in (["prune", "--model", str(path), "--ratio", "0.2", "--out", str(tmp_path / "o.pt")],
                    ["compact", "--model", str(path), "--out", str(tmp_path / "o.pt")],
                    ["info", "--model", str(path)]):
            assert main(cmd) == 2, (kind, cmd[0])
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and str(path.name) in err, (kind, err)
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("args", [
    ["--ratio", "1.0"], ["--ratio", "-0.2"], ["--ratio", "abc"], ["--ratio", "nan"], ["--method", "l7"],
])
def test_bad_values_exit_2_in_a_subprocess(ckpt, tmp_path, args):
    r = _run("prune", "--model", str(ckpt), "--out", str(tmp_path / "o.pt"), *args)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert not (tmp_path / "o.pt").exists()


def test_out_equal_to_input_is_refused_and_input_untouched(ckpt, capsys):
    before = _digest(ckpt)
    assert main(["prune", "--model", str(ckpt), "--ratio", "0.3", "--out", str(ckpt)]) == 2
    assert "input" in capsys.readouterr().err
    assert _digest(ckpt) == before


def test_pruned_checkpoint_predicts_and_exports_without_yoloprune(ckpt, tmp_path):
    before = _digest(ckpt)
    out = tmp_path / "pruned.pt"
    r = _run("prune", "--model", str(ckpt), "--ratio", "0.4", "--imgsz", "320", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "params" in r.stdout and out.exists()
    assert _digest(ckpt) == before, "the input checkpoint must never be modified"
    assert not list(tmp_path.glob(".*.tmp")), "no temp files left behind"
    probe = textwrap.dedent(f"""
        import os, sys
        os.environ["YOLO_OFFLINE"] = "1"
        import numpy as np
        from ultralytics import YOLO
        m = YOLO({str(out)!r})
        n = sum(p.numel() for p in m.model.parameters())
        res = m.predict(np.zeros((320, 320, 3), np.uint8), imgsz=320, verbose=False)
        assert res[0].boxes is not None
        onnx_path = m.export(format="onnx", imgsz=320, simplify=False)
        import onnxruntime as ort, torch
        x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
        y_ort = ort.InferenceSession(onnx_path).run(None, {{"images": x}})[0]
        y_pt = m.model.float().eval()(torch.from_numpy(x))[0].detach().numpy()
        assert y_ort.shape == y_pt.shape and np.abs(y_ort - y_pt).max() < 1e-3 * np.abs(y_pt).max()
        assert "yoloprune" not in sys.modules, "the checkpoint pulled yoloprune in"
        print(n)
    """)
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    full = sum(q.numel() for q in DetectionModel("yolov8n.yaml", verbose=False).parameters())
    assert int(p.stdout.strip().splitlines()[-1]) < 0.7 * full


def test_compact_cli_writes_smaller_checkpoint(ckpt, tmp_path):
    model = torch.load(ckpt, weights_only=False)["model"].float()
    with torch.no_grad():
        model.model[0].bn.weight[:4] = 0
        model.model[0].bn.bias[:4] = 0
    zeroed = tmp_path / "zeroed.pt"
    save_checkpoint(model, zeroed)
    out = tmp_path / "compact.pt"
    assert main(["compact", "--model", str(zeroed), "--out", str(out)]) == 0
    slim = torch.load(out, weights_only=False)["model"]
    assert slim.model[0].conv.out_channels == 12 and slim.model[1].conv.in_channels == 12


def test_info_reports_frozen_head(ckpt, capsys):
    assert main(["info", "--model", str(ckpt), "--imgsz", "320"]) == 0
    out = capsys.readouterr().out
    assert "params: 3,157,200" in out and "model.22.cv3.0.2" in out and "frozen" in out


def test_sparsify_cli_reports_and_refuses_bad_amount(ckpt, tmp_path, capsys):
    out = tmp_path / "sparse.pt"
    assert main(["sparsify", "--model", str(ckpt), "--amount", "0.4", "--imgsz", "64", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "zero weights: 0.0% -> 40.0%" in text and "latency" in text
    model = torch.load(out, weights_only=False)["model"]
    assert model.model[0].conv.weight.shape == (16, 3, 3, 3)
    with pytest.raises(SystemExit) as e:
        main(["sparsify", "--model", str(ckpt), "--amount", "1.5", "--out", str(tmp_path / "x.pt")])
    assert e.value.code == 2 and "amount" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os

    from yoloprune.atomic import atomic_write_text

    mask = os.umask(0o022)
    try:
        out = atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o644


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    import signal
    import time

    from yoloprune.data.teabud import TeaBudConfig, generate

    data = generate(TeaBudConfig(out=tmp_path / "d", n_train=4, n_val=4, n_test=0))
    model = Path(__file__).parent / "fixtures" / "yolov5n-original-repo.pt"
    proc = subprocess.Popen([sys.executable, "-m", "yoloprune", "sweep", "--model", str(model), "--data", str(data),
                             "--ratios", "0,0.1,0.2,0.3,0.4,0.5", "--imgsz", "64", "--out", str(tmp_path / "s")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background job's
    deadline = time.time() + 120  # shell ignores SIGINT for its children; the user's terminal does not  # interrupt once the sweep has started (a loaded machine imports slowly)
    while not (tmp_path / "s" / "sweep.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [x for x in err.strip().splitlines() if x.startswith("yoloprune")]
    assert "Traceback" not in err and lines[-1].startswith("yoloprune: interrupted (sweep)"), err[-2000:]


def test_every_option_has_help_showing_its_default():
    import argparse

    from yoloprune.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        text = p.format_help()
        for a in p._actions:
            if not a.option_strings or a.dest == "help":
                continue
            assert a.help and a.help.split("(default: ")[0].strip(), f"{name} {a.option_strings[-1]} has no help"
            if a.default not in (None, False) and not a.required:
                assert "(default: " in a.help, f"{name} {a.option_strings[-1]} does not show its default"
        assert "%(default)" not in text


_NO_NETWORK = """
import socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("network use in an offline test")
socket.create_connection = refuse
socket.getaddrinfo = refuse
socket.socket.connect = lambda self, *a: refuse(*a)
from yoloprune.cli import main
try:
    code = main(sys.argv[1:])
finally:
    print("NETWORK ATTEMPTS:", attempts, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("command", ["val", pytest.param("finetune", marks=pytest.mark.slow)])
def test_commands_never_touch_the_network(tmp_path, command):
    import os

    from yoloprune.data.teabud import TeaBudConfig, generate

    data = generate(TeaBudConfig(out=tmp_path / "d", n_train=4, n_val=4, n_test=0))
    model = Path(__file__).parent / "fixtures" / "yolov5n-original-repo.pt"
    args = {"val": ["val", "--model", str(model), "--data", str(data), "--imgsz", "64"],
            "finetune": ["finetune", "--model", str(model), "--data", str(data), "--imgsz", "64", "--epochs", "1",
                         "--batch", "4", "--workers", "0", "--project", str(tmp_path / "runs"),
                         "--out", str(tmp_path / "ft.pt")]}[command]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "YOLO_CONFIG_DIR": str(tmp_path / "cfg")}
    env.pop("YOLO_OFFLINE", None)  # the command line must set it itself
    got = subprocess.run([sys.executable, "-c", _NO_NETWORK, *args], capture_output=True, text=True, env=env,
                         timeout=600)
    assert got.returncode == 0, got.stderr[-3000:]
    assert "NETWORK ATTEMPTS: []" in got.stderr, got.stderr[-3000:]


def test_prune_without_calib_data_uses_the_recorded_training_images_or_says_what_it_costs(tmp_path, capsys):
    import torch
    from conftest import tiny_project

    import yoloprune as yp

    data, ckpt = tiny_project(tmp_path, n_train=4, n_val=2)
    model, _ = yp.load_model(ckpt)
    model.args = {"data": str(data), "imgsz": 64}
    recorded = yp.save_checkpoint(model, tmp_path / "recorded.pt")
    model.args = {"data": "D:\\\\elsewhere\\\\data.yaml", "imgsz": 64}  # trained on another machine
    foreign = yp.save_checkpoint(model, tmp_path / "foreign.pt")
    runs = {}
    for name, src, extra in (("recorded", recorded, []), ("foreign", foreign, []), ("off", recorded, ["--no-calib"])):
        out = tmp_path / f"{name}-out.pt"
        assert main(["prune", "--model", str(src), "--ratio", "0.3", "--out", str(out), *extra]) == 0
        runs[name] = (capsys.readouterr().out, yp.load_model(out)[0].state_dict())
    assert f"calibrating on 64 train images of {data}" in runs["recorded"][0]
    assert "reconstructed" in runs["recorded"][0]
    for name in ("foreign", "off"):
        assert "calibrating" not in runs[name][0] and "reconstructed" not in runs[name][0]
    assert "no calibration images" in runs["foreign"][0] and "--calib-data" in runs["foreign"][0]
    assert "no calibration images" not in runs["off"][0]
    same = [torch.equal(a, b) for a, b in zip(runs["foreign"][1].values(), runs["off"][1].values(), strict=True)]
    assert all(same)  # both uncalibrated: the same model
    assert not all(torch.equal(a, b) for a, b in zip(runs["recorded"][1].values(), runs["off"][1].values(),
                                                      strict=True))
