"""Sweeps on Ray: a local instance gives the local sweep's rows; a killed driver resumes with only the missing
points; without the extra, one line and exit 2."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from yoloprune.workflows.sweep import SweepConfig, read_results, sweep

WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "teabud-yolov8n.pt"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The shipped tea-bud yolov8n and a few freshly generated tea-bud images (its mAP is far from 0 on them)."""
    from yoloprune.data.teabud import TeaBudConfig, generate

    root = tmp_path_factory.mktemp("cluster")
    data = generate(TeaBudConfig(out=root / "d", n_train=2, n_val=3, n_test=0, seed=7))
    shutil.copyfile(WEIGHTS, root / "model.pt")
    return root, data


def _cfg(project, out, ratios) -> SweepConfig:
    root, data = project
    return SweepConfig(model=str(root / "model.pt"), data=str(data), out=str(out), ratios=ratios, imgsz=160,
                       batch=4, workers=0, latency_runs=3, calib_images=2)


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one worker starts the Ray instances of this run, one at a time
def test_local_ray_instance_gives_the_local_sweeps_rows(project, tmp_path):
    pytest.importorskip("ray")
    from yoloprune.workflows.cluster import RayConfig, ray_sweep

    local = sweep(_cfg(project, tmp_path / "local", [0.0, 0.4]))
    remote = ray_sweep(_cfg(project, tmp_path / "ray", [0.0, 0.4]), RayConfig(local_cpus=2))
    assert list(remote["status"]) == ["ok", "ok"] and list(remote["ratio"]) == [0.0, 0.4]
    for col in ("map50_95", "map50", "ultralytics_map50_95", "params", "gflops", "params_ratio", "blocks_removed"):
        assert list(remote[col]) == list(local[col]), col
    assert remote["map50_95"].iloc[0] > 0.1 and remote["params"].iloc[1] < 0.7 * remote["params"].iloc[0]
    assert (remote["latency_ms"] > 0).all() and (remote["speedup"] > 0).all()
    assert (remote["host"] == socket.gethostname()).all() and remote["cpu"].str.len().gt(0).all()
    assert read_results(tmp_path / "ray").equals(remote)  # written as it came
    assert (tmp_path / "ray" / "map_vs_ratio.png").stat().st_size > 1000
    pruned = torch.load(tmp_path / "ray" / "models" / "l1-0.4.pt", weights_only=False)["model"]  # brought back
    assert sum(p.numel() for p in pruned.parameters()) == remote["params"].iloc[1]


def test_unreachable_cluster_is_one_line_and_exit_2(project, tmp_path):
    pytest.importorskip("ray")
    root, data = project
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "yoloprune", "sweep", "--model", str(root / "model.pt"), "--data",
                        str(data), "--out", str(tmp_path / "o"), "--ratios", "0.3", "--imgsz", "64",
                        "--calib-images", "1", "--ray", f"127.0.0.1:{port}"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith(f"yoloprune: error: cannot join the Ray cluster at 127.0.0.1:{port}")
    assert r.stderr.count("\n") == 1, r.stderr


def _ray(*args, env):
    cli = Path(sys.executable).with_name("ray")
    return subprocess.run([str(cli), *args], env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_killed_driver_resumes_with_only_the_missing_points(project, tmp_path):
    """A running one-CPU cluster (``ray start``) takes the points one at a time; the driver is killed once the
    first row is written; the rerun joins the same cluster and submits only the two missing points."""
    pytest.importorskip("ray")
    root, data = project
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    short = tempfile.mkdtemp(prefix="yp-")  # Ray's unix sockets live under TMPDIR: pytest's paths are too long
    env = {**os.environ, "TMPDIR": short, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    started = _ray("start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", env=env)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "yoloprune", "sweep", "--model", str(root / "model.pt"), "--data", str(data),
           "--out", str(out), "--ratios", "0,0.3,0.5", "--imgsz", "160", "--batch", "4", "--workers", "0",
           "--calib-images", "2", "--ray", f"127.0.0.1:{port}"]
    try:
        driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and len(read_results(out)) < 1 and driver.poll() is None:
            time.sleep(0.5)
        assert driver.poll() is None, driver.stderr.read()[-2000:]
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        first = read_results(out)
        assert len(first) == 1
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        counts = [line.split("] ")[1].split()[0] for line in r.stderr.splitlines() if line.startswith("[")]
        assert counts == ["1/2", "2/2"], r.stderr  # two points submitted, not three
        done = read_results(out)
        assert sorted(done["ratio"]) == [0.0, 0.3, 0.5] and (done["status"] == "ok").all()
        kept = done[done["ratio"] == first["ratio"].iloc[0]]
        pd.testing.assert_series_equal(kept["seconds"].reset_index(drop=True), first["seconds"])  # not rerun
    finally:
        _ray("stop", "--force", env=env)
        shutil.rmtree(short, ignore_errors=True)


def test_ray_flag_without_the_extra_is_one_line_and_exit_2(tmp_path):
    probe = ("import sys; sys.modules['ray'] = None; from yoloprune.cli import main; "
             f"sys.exit(main(['sweep', '--model', 'm.pt', '--data', 'd.yaml', '--out', {str(tmp_path)!r}, '--ray']))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert 'pip install "yoloprune[ray]"' in r.stderr and "Traceback" not in r.stderr
