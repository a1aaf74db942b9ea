"""The steps of ``optimize``: baseline, prune, recover, export and verify, each returning its record."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from yoloprune import sources
from yoloprune.atomic import atomic_write, atomic_write_text
from yoloprune.data.images import calibration_images, image_folder, is_image_folder, letterboxed_files
from yoloprune.data.spec import load_data
from yoloprune.errors import ConfigError, DataError
from yoloprune.log import say
from yoloprune.speed.runtimes import paired_onnx_latency
from yoloprune.targets import Speedup
from yoloprune.workflows.optimize.config import AGREEMENT_CONF, MIN_INT8_GAIN, SHORTFALL, OptimizeConfig, _Run

if TYPE_CHECKING:
    from yoloprune.workflows.quantize import Int8Result


def _write_tensor(images: torch.Tensor, folder: Path) -> list[Path]:
    import cv2

    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"images as a tensor must be (N, 3, H, W), got {tuple(images.shape)}")
    x = images.detach().cpu()
    x = (x if x.dtype == torch.uint8 else x.float().clamp(0, 1).mul(255).round().to(torch.uint8)).numpy()
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(x):
        cv2.imwrite(str(folder / f"{i:05d}.png"), np.ascontiguousarray(im.transpose(1, 2, 0)[..., ::-1]))
    return [folder / f"{i:05d}.png" for i in range(len(x))]


def _place(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        dst = folder / f"{i:05d}{f.suffix.lower()}"
        if not dst.exists():
            try:
                os.link(f, dst)
            except OSError:
                shutil.copy2(f, dst)


def split_images(cfg: OptimizeConfig, work: Path) -> tuple[Path, Path, int, int]:
    """The images in two folders: calibration and recovery (``work/calib``), and held back for verification
    (``work/verify/images/val``), evenly spread over the sorted list. Returns the folders and their counts."""
    if isinstance(cfg.images, torch.Tensor):
        files = _write_tensor(cfg.images, work / "images")
    else:
        files = image_folder(cfg.images, sys.maxsize) if is_image_folder(cfg.images) else \
            load_data(cfg.images, "train").files("train")
    hold = max(2, round(cfg.hold_out * len(files)))
    if len(files) - hold < 2:
        raise DataError(f"{cfg.images if not isinstance(cfg.images, torch.Tensor) else 'the images'}: "
                        f"{len(files)} images; optimize needs at least 4 ({hold} held back for verification)")
    held = set(np.linspace(0, len(files) - 1, hold + 2)[1:-1].round().astype(int).tolist())
    calib, verify = work / "calib", work / "verify" / "images" / "val"
    _place([f for i, f in enumerate(files) if i not in held], calib)
    _place([f for i, f in enumerate(files) if i in held], verify)
    return calib, verify, len(files) - len(held), len(held)


def _baseline(run: _Run) -> dict:
    from yoloprune.workflows.export import check_int8_head, export_onnx

    cfg = run.cfg
    calib, verify, n_calib, n_held = split_images(cfg, run.work)
    fp32 = export_onnx(cfg.model, run.work / "base.onnx", cfg.imgsz)
    files, why, int8 = ["work/base.onnx", "work/calib", "work/verify/images/val"], "", None
    if not cfg.int8:
        why = "--no-int8"
    else:
        net, _ = sources.load_model(cfg.model)
        try:
            check_int8_head(net)
            int8 = _quantize(fp32, run.work / "base.int8.onnx", calib, cfg, net).path
            files.append("work/base.int8.onnx")
        except ConfigError as e:
            why = f"INT8 not possible: {e}"
    times = paired_onnx_latency([fp32] + ([int8] if int8 else []), cfg.imgsz, cfg.runs, cfg.threads)
    gain = times[0] / times[1] if int8 else None
    ship_int8 = gain is not None and gain >= MIN_INT8_GAIN
    if gain is not None:
        why = (f"INT8 runs {gain:.2f}x the FP32 file's speed here" +
               ("" if ship_int8 else f", under the {MIN_INT8_GAIN:.2f}x it must gain to ship: FP32 ships"))
    target = cfg.target_speedup or times[0] * 1e3 / cfg.target_latency
    line = (f"{n_calib} calibration images, {n_held} held back; unpruned FP32 {times[0] * 1e3:.2f} ms; {why}; "
            f"target {target:.2f}x")
    return {"line": line, "files": files, "base_ms": times[0] * 1e3, "int8_ms": times[1] * 1e3 if int8 else None,
            "int8_gain": gain, "int8": ship_int8, "int8_why": why, "target": target, "calib_images": n_calib,
            "held_back": n_held}


def _quantize(fp32: Path, out: Path, calib: Path, cfg: OptimizeConfig, net,
              kept_float: str | None = None) -> Int8Result:
    from yoloprune.workflows.quantize import quantize_int8

    images = calibration_images(calib, cfg.imgsz, cfg.calib_images).numpy().astype(np.float32)
    adapter = sources.adapter_for(net)
    return quantize_int8(fp32, out, images, nc=adapter.num_classes(net), objectness=adapter.objectness(net),
                         kept_float=kept_float)


def _prune(run: _Run, base: dict) -> dict:
    from yoloprune.api import prune, save_checkpoint
    from yoloprune.engine.plan import PruneConfig

    cfg = run.cfg
    gain = base["int8_gain"] if base["int8"] else 1.0
    needed = base["target"] / gain
    out = run.work / "pruned.pt"
    if needed <= 1 + SHORTFALL:
        net, ckpt = sources.load_model(cfg.model)
        save_checkpoint(net, out, ckpt, sources.source_meta(cfg.model))
        why = f"INT8 alone ({gain:.2f}x)" if base["int8"] else "the unpruned model"
        return {"line": f"{why} meets the {base['target']:.2f}x target: nothing pruned",
                "files": ["work/pruned.pt"], "pruned": False, "needed": needed}
    calib = calibration_images(run.work / "calib", cfg.imgsz, cfg.calib_images)
    report, shipped, tries = None, None, []
    for _ in range(1 + CORRECTIONS):
        try:
            report = prune(cfg.model, config=PruneConfig(imgsz=cfg.imgsz), calibration=calib,
                           target=Speedup(needed, cfg.runtime, cfg.threads))
        except ConfigError as e:
            raise type(e)(f"{e} (pruning must give {needed:.2f}x for the {base['target']:.2f}x target"
                          + (f" with INT8's {gain:.2f}x" if base["int8"] else "") + ")") from None
        save_checkpoint(report.model, out, report.ckpt, {"pruned": report.summary(),
                                                         **sources.source_meta(cfg.model)})
        if not base["int8"]:
            break
        shipped, kept = _shipped_speedup(run, out)  # INT8 gains less on a narrower model: measured, not assumed
        tries.append((needed, shipped, kept))
        if shipped >= base["target"] * (1 - SHORTFALL / 2):
            break
        needed *= base["target"] / shipped
    line = f"{report.speed.search.line()}; timed again {report.speed.timed_again:.2f}x"
    if tries:
        line += "; as INT8: " + ", ".join(f"pruned for {n:.2f}x -> {x:.2f}x" for n, x, _ in tries)
    return {"line": line, "files": ["work/pruned.pt"], "pruned": True, "needed": needed,
            "gflops": [report.before.gflops, report.after.gflops], "timed_again": report.speed.timed_again,
            "int8_tries": tries}


CORRECTIONS = 2  # re-prunes when the pruned model's INT8 file falls short of the target


def _shipped_speedup(run: _Run, pruned: Path) -> tuple[float, str]:
    """The speed-up of the file that would ship for the pruned model (uncalibrated by recovery: the widths are what
    is timed): its INT8 file, or its FP32 file where INT8 does not gain ``MIN_INT8_GAIN`` on it (as ``_export``
    decides), timed beside the unpruned FP32 file in alternation; and what its INT8 file keeps in float (the
    export keeps the same, so that the file that ships runs as timed here)."""
    from yoloprune.workflows.export import export_onnx

    cfg = run.cfg
    fp32 = export_onnx(pruned, run.work / "trial.onnx", cfg.imgsz)
    net, _ = sources.load_model(pruned)
    int8 = _quantize(fp32, run.work / "trial.int8.onnx", run.work / "calib", cfg, net)
    base, plain, quantized = paired_onnx_latency([run.work / "base.onnx", fp32, int8.path], cfg.imgsz, cfg.runs,
                                                 cfg.threads)
    return base / (quantized if plain / quantized >= MIN_INT8_GAIN else plain), int8.kept_float


def _recover(run: _Run, pruned: dict) -> dict:
    from yoloprune.engine.recover import RecoverConfig
    from yoloprune.workflows.recover import RecoverRun, recover_model

    cfg, out = run.cfg, run.file("model.pt")
    if not pruned["pruned"]:
        shutil.copy2(run.work / "pruned.pt", out)
        return {"line": "nothing pruned, nothing to recover", "files": ["model.pt"]}
    _, result = recover_model(RecoverRun(model=str(run.work / "pruned.pt"), images=str(run.work / "calib"),
                                         out=str(out), teacher=cfg.model, imgsz=cfg.imgsz, project=str(run.work),
                                         name="recover", training=RecoverConfig(minutes=cfg.minutes)))
    return {"line": f"held-back distance to the unpruned model {result.distance_before:.4f} -> {result.distance:.4f} "
                    f"in {len(result.rows)} epoch(s)", "files": ["model.pt"],
            "distance": [result.distance_before, result.distance]}


def _export(run: _Run, base: dict, pruned: dict) -> dict:
    from yoloprune.workflows.export import ParityError, export_onnx, parity

    cfg, ckpt = run.cfg, run.file("model.pt")
    fp32 = export_onnx(ckpt, (run.work if base["int8"] else run.out) / "model.onnx", cfg.imgsz)
    inputs = [x[None] for x in letterboxed_files(image_folder(run.work / "verify" / "images" / "val", 8), cfg.imgsz)]
    err = parity(fp32, ckpt, inputs)
    if not err <= 1e-3:
        raise ParityError(f"{fp32}: onnxruntime differs from PyTorch by {err:.2e}, above 1e-3")
    shipped, why = fp32, base["int8_why"]
    if base["int8"]:
        net, _ = sources.load_model(ckpt)
        tries = pruned.get("int8_tries") or []
        kept = tries[-1][2] if tries and len(tries[-1]) > 2 else None  # the float part the prune was timed with
        q = _quantize(fp32, run.work / "model.int8.onnx", run.work / "calib", cfg, net, kept)
        int8 = q.path
        plain, quantized = paired_onnx_latency([fp32, int8], cfg.imgsz, cfg.runs, cfg.threads)
        gain = plain / quantized
        if gain >= MIN_INT8_GAIN:
            shipped = run.file("model.int8.onnx")
            why = (f"{base['int8_why']}; {gain:.2f}x on the pruned model; keeps {q.kept_float} in float, drift: boxes "
                   f"{q.drift.box:.5f} of the image, scores {q.drift.score:.4f}")
            atomic_write(shipped, lambda t: shutil.copyfile(int8, t))
        else:  # a narrow model's INT8 file can gain nothing: its FP32 file ships, as fast and exact
            why = (f"{base['int8_why']}, but only {gain:.2f}x on the pruned model, under the {MIN_INT8_GAIN:.2f}x it "
                   "must gain to ship: FP32 ships")
            shipped = atomic_write(run.file("model.onnx"), lambda t, src=fp32: shutil.copyfile(src, t))
            fp32 = shipped
    rel = [str(p.relative_to(run.out)) for p in dict.fromkeys([fp32, shipped])]
    return {"line": f"{shipped.name} ({shipped.stat().st_size / 1e6:.2f} MB; FP32 parity {err:.1e})",
            "files": rel, "fp32": rel[0], "shipped": rel[-1], "int8": shipped.name.endswith(".int8.onnx"),
            "int8_why": why}


def _verify(run: _Run, base: dict, exported: dict) -> dict:
    cfg = run.cfg
    fp32, shipped = run.file(exported["fp32"]), run.file(exported["shipped"])
    timed = [run.work / "base.onnx", fp32] + ([shipped] if shipped != fp32 else [])
    times = paired_onnx_latency(timed, cfg.imgsz, cfg.runs, cfg.threads)
    speed = {"fp32": times[0] / times[1], "shipped": times[0] / times[-1]}
    models = {"unpruned": cfg.model, "pruned": str(run.work / "pruned.pt"), "recovered": str(run.file("model.pt")),
              "exported": str(shipped)}
    speeds = {"unpruned": 1.0, "pruned": speed["fp32"], "recovered": speed["fp32"], "exported": speed["shipped"]}
    agree_data, boxes = agreement_data(cfg.model, run.work / "verify", cfg.imgsz)
    scores = {"agreement": _scores(agree_data, cfg.imgsz, models) if boxes else dict.fromkeys(models)}
    if cfg.data:
        scores["map50_95"] = _scores(cfg.data, cfg.imgsz, models)
    rows = [{"model": k, "file": str(Path(p).resolve().relative_to(run.out.resolve()))
             if Path(p).resolve().is_relative_to(run.out.resolve()) else p, "speedup": speeds[k],
             **{m: s[k] for m, s in scores.items()}} for k, p in models.items()]
    met = speed["shipped"] >= base["target"] * (1 - SHORTFALL)
    agreement = scores["agreement"]["exported"]
    line = (f"{shipped.name}: {speed['shipped']:.2f}x the unpruned FP32 file ({times[-1] * 1e3:.2f} ms), agreement "
            + (f"{agreement:.4f}" if agreement is not None else f"n/a ({_no_agreement(cfg.model)})")
            + (f", mAP50-95 {scores['map50_95']['exported']:.4f}" if cfg.data else ""))
    if not met:
        say(f"yoloprune: {shipped.name} runs {speed['shipped']:.2f}x, more than {SHORTFALL:.0%} below the "
            f"{base['target']:.2f}x target", err=True)
    return {"line": line, "files": exported["files"], "rows": rows, "speedup": speed["shipped"], "met": met,
            "shipped_ms": times[-1] * 1e3, "base_ms": times[0] * 1e3, "boxes": boxes}


def _no_agreement(model: str) -> str:
    net, _ = sources.load_model(model)
    task = sources.adapter_for(net).task(net)
    if task != "detect":
        return f"agreement is scored for detection models; this is a {task} model: give --data with labels"
    return f"the unpruned model detects nothing at conf {AGREEMENT_CONF} on the held-back images"


def _scores(data, imgsz: int, models: dict[str, str]) -> dict[str, float]:
    from yoloprune.workflows.evaluate import Evaluator

    ev = Evaluator(data, "val", imgsz=imgsz)
    return {k: ev(p).map50_95 for k, p in models.items()}


def agreement_data(model: str, folder: Path, imgsz: int) -> tuple[Path, int]:
    """``folder/agreement.yaml``: the images in ``folder/images/val`` labelled with ``model``'s own detections at
    conf ``AGREEMENT_CONF`` (as ``benchmarks/real_models.py`` scores agreement). Returns it and the number of boxes
    (0: nothing to agree on, or not a detector)."""
    import cv2
    import yaml

    from yoloprune.sources import ValSettings

    net, _ = sources.load_model(model)
    adapter = sources.adapter_for(net)
    names = getattr(net, "names", None) or list(range(adapter.num_classes(net)))
    names = {int(k): str(v) for k, v in (names.items() if isinstance(names, dict) else enumerate(names))}
    images, labels = folder / "images" / "val", folder / "labels" / "val"
    labels.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in images.iterdir() if not p.name.startswith("."))
    for f in files:
        (labels / f"{f.stem}.txt").write_text("")
    data = folder / "agreement.yaml"
    atomic_write_text(data, yaml.safe_dump({"path": str(folder.resolve()), "train": "images/val",
                                            "val": "images/val", "names": names}))
    if adapter.task(net) != "detect":
        return data, 0
    with tempfile.TemporaryDirectory(prefix="yoloprune-agree-") as tmp:
        settings = ValSettings(str(data.resolve()), "val", imgsz, 1, AGREEMENT_CONF, None, True, tmp)
        preds = adapter.validator(net, settings)(net).predictions
    boxes = 0
    for f in files:
        h, w = cv2.imread(str(f)).shape[:2]
        mine = [p for p in preds if p["image"] == f.stem]
        (labels / f"{f.stem}.txt").write_text("".join(
            f"{p['category_id']} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}\n"
            for p in mine for x, y, bw, bh in [p["bbox"]]))
        boxes += len(mine)
    for cache in folder.rglob("*.cache"):  # labelled now: Ultralytics' label cache of the empty files is stale
        cache.unlink()
    return data, boxes
