"""Real checkpoints of both sources, broken the ways files break (bytes flipped, truncated, keys removed, a wrong
``model`` type, a tensor of the wrong shape): every command answers in one line on stderr with exit code 2, or, where
the damage leaves a valid model (a flipped weight byte), runs; never a traceback, never a written output."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from yoloprune.cli import main
from yoloprune.sources.safe_pickle import load as safe_load
from yoloprune.sources.yolov5 import checkpoint as v5

ROOT = Path(__file__).resolve().parents[2]
REAL = {"yolov5": ROOT / "tests" / "fixtures" / "yolov5n-original-repo.pt",
        "ultralytics": ROOT / "weights" / "teabud-yolov8n.pt"}


def _read(source: str) -> dict:
    path = REAL[source]
    return v5.read_checkpoint(path) if source == "yolov5" else safe_load(path)


def _write(source: str, ckpt: dict, path: Path) -> Path:
    """Pickled as that source writes its files (the original repository's module names for YOLOv5)."""
    kw = {"pickle_module": v5._pickle_module("")} if source == "yolov5" else {}
    torch.save(ckpt, path, **kw)
    return path


def _flip_pickle_bytes(data: bytes) -> bytes:
    """Flip bytes inside the zip's ``data.pkl`` (the structure; the CRC is fixed up so only the pickle is damaged)."""
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                body = bytearray(body)
                for i in range(len(body) // 3, len(body) // 3 + 64, 7):
                    body[i] ^= 0x5A
                body = bytes(body)
            dst.writestr(info, body)
    return out.getvalue()


def _model(ckpt: dict) -> nn.Module:
    return ckpt.get("ema") or ckpt["model"]


def broken(source: str, tmp: Path) -> dict[str, Path]:
    real = REAL[source].read_bytes()
    files = {}
    files["truncated"] = tmp / "truncated.pt"
    files["truncated"].write_bytes(real[: len(real) * 2 // 3])
    # Bytes flipped inside data.pkl: in the Ultralytics file one lands in a LONG_BINPUT, whose memo index (1.75e9)
    # made the unpickler ask for ~24 GB before safe_pickle.check_structure read the opcodes first
    files["flipped-pickle"] = tmp / "flipped-pickle.pt"
    files["flipped-pickle"].write_bytes(_flip_pickle_bytes(real))
    files["flipped-tail"] = tmp / "flipped-tail.pt"  # the zip directory at the end
    files["flipped-tail"].write_bytes(real[:-40] + bytes(b ^ 0xFF for b in real[-40:]))
    ckpt = _read(source)
    files["no-model-key"] = _write(source, {k: v for k, v in ckpt.items() if k not in ("model", "ema")},
                                   tmp / "no-model-key.pt")
    files["model-is-a-dict"] = _write(source, {**ckpt, "model": _model(ckpt).state_dict(), "ema": None},
                                      tmp / "model-is-a-dict.pt")
    files["model-is-a-linear"] = _write(source, {**ckpt, "model": nn.Linear(3, 3), "ema": None},
                                        tmp / "model-is-a-linear.pt")
    model = _model(ckpt)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 8)
    conv.weight = nn.Parameter(torch.zeros(conv.out_channels, conv.in_channels // 2, *conv.kernel_size,
                                           dtype=conv.weight.dtype))
    files["wrong-shape"] = _write(source, {**ckpt, "model": model, "ema": None}, tmp / "wrong-shape.pt")
    return files


@pytest.mark.parametrize("source", ["yolov5", "ultralytics"])
def test_broken_real_checkpoints_are_one_line_and_exit_2(source, tmp_path, capsys):
    files = broken(source, tmp_path)
    out = tmp_path / "out.pt"
    every = ("truncated", "wrong-shape")  # every command on these; info (the same loading) on all
    for kind, path in files.items():
        cmds = [["info", "--model", str(path)]]
        if kind in every:
            cmds += [["prune", "--model", str(path), "--ratio", "0.2", "--no-calib", "--out", str(out)],
                     ["compact", "--model", str(path), "--out", str(out)],
                     ["sparsify", "--model", str(path), "--amount", "0.3", "--out", str(out)],
                     ["export", "--model", str(path), "--out", str(tmp_path / "out.onnx")]]
        for cmd in cmds:
            code = main(cmd)
            err = capsys.readouterr().err.strip()
            assert code == 2, (source, kind, cmd[0], code, err)
            assert err.count("\n") == 0 and path.name in err and "Traceback" not in err, (source, kind, err)
            assert not out.exists() and not (tmp_path / "out.onnx").exists()


def test_the_unbroken_files_still_run(tmp_path, capsys):
    for source, path in REAL.items():
        assert main(["info", "--model", str(path)]) == 0, source
    capsys.readouterr()


def test_a_damaged_memo_index_is_refused_before_the_unpickler_allocates(tmp_path):
    """A flipped byte in a LONG_BINPUT names a memo slot past 1e9; Python's unpickler would size its memo to it."""
    import resource

    from yoloprune.errors import CheckpointError
    from yoloprune.sources import load_model

    path = tmp_path / "memo.pt"
    path.write_bytes(_flip_pickle_bytes(REAL["ultralytics"].read_bytes()))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, hard))  # the test process fails fast instead of the machine
    try:
        with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint.*UnpicklingError"):
            load_model(path)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
