"""Ultralytics' exporter on a private copy of a checkpoint (ONNX, OpenVINO, ncnn), and the metadata of the files
it writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn
from ultralytics import YOLO

from yoloprune.atomic import atomic_write
from yoloprune.errors import CheckpointError
from yoloprune.sources.ultralytics.model import save_checkpoint


def export_onnx(model: nn.Module, ckpt: dict, out: str | Path, imgsz: int, dynamic: bool, simplify: bool) -> Path:
    """ONNX through Ultralytics' own exporter, run on a private copy of the checkpoint in a temp folder."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="yoloprune-export-") as tmp:
        src = save_checkpoint(model, Path(tmp) / "model.pt", ckpt)
        produced = YOLO(str(src)).export(format="onnx", imgsz=imgsz, dynamic=dynamic, simplify=simplify,
                                         device="cpu", verbose=False)
        fast_dfl(produced)
        return atomic_write(out, lambda t: shutil.copyfile(produced, t))


def fast_dfl(path: str | Path) -> int:
    """Rewrite, in place, each DFL decoding of an exported ONNX file as reductions over its bins: Ultralytics'
    DFL (view, transpose, ``softmax(1)``, a 1x1 conv with weights 0..c1-1) exports a Softmax over a middle axis,
    which onnxruntime runs by transposing; on the tea-bud yolov8n at 320 px it took 1.1 ms of a pruned model's
    8.4 ms INT8 file, the same expectation as max, exp and two sums over the bins takes 0.1 ms. The result
    equals the original within float rounding (``export`` checks every file against PyTorch). Returns how
    many were rewritten."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    prod = {o: n for n in g.node for o in n.output}
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    init = {i.name: i for i in g.initializer}
    drop, count = set(), 0
    for sm in [n for n in g.node if n.op_type == "Softmax"]:
        tr = prod.get(sm.input[0])
        conv = (users.get(sm.output[0]) or [None])[0]
        out = (users.get(conv.output[0]) or [None])[0] if conv is not None else None
        attr = {a.name: helper.get_attribute_value(a) for n in (tr, sm) if n is not None for a in n.attribute}
        if (tr is None or tr.op_type != "Transpose" or list(attr.get("perm", [])) != [0, 2, 1, 3]
                or attr.get("axis") != 1 or conv is None or conv.op_type != "Conv" or len(conv.input) != 2
                or conv.input[1] not in init or out is None or out.op_type != "Reshape"
                or len(users[sm.output[0]]) != 1 or len(users[conv.output[0]]) != 1 or len(users[tr.output[0]]) != 1):
            continue
        w = numpy_helper.to_array(init[conv.input[1]])
        if w.ndim != 4 or w.shape[0] != 1 or w.shape[2:] != (1, 1):
            continue
        pre, x, y = sm.name.rsplit("/", 1)[0] + "/fast", tr.input[0], out.output[0]  # x: (b, 4, c1, a)
        axes = numpy_helper.from_array(np.array([2], np.int64), f"{pre}/axes")
        bins = numpy_helper.from_array(w.reshape(1, 1, -1, 1).astype(np.float32), f"{pre}/bins")
        g.initializer.extend([axes, bins])

        def reduce(op, src, dst, keep, pre=pre, axes=axes):
            if (op == "ReduceSum" and opset >= 13) or opset >= 18:
                return helper.make_node(op, [src, axes.name], [dst], name=f"{pre}/{op}_{dst.rsplit('/', 1)[-1]}",
                                        keepdims=keep)
            return helper.make_node(op, [src], [dst], name=f"{pre}/{op}_{dst.rsplit('/', 1)[-1]}", axes=[2],
                                    keepdims=keep)

        new = [reduce("ReduceMax", x, f"{pre}/max", 1),
               helper.make_node("Sub", [x, f"{pre}/max"], [f"{pre}/shifted"], name=f"{pre}/Sub"),
               helper.make_node("Exp", [f"{pre}/shifted"], [f"{pre}/exp"], name=f"{pre}/Exp"),
               helper.make_node("Mul", [f"{pre}/exp", bins.name], [f"{pre}/weighted"], name=f"{pre}/Mul"),
               reduce("ReduceSum", f"{pre}/weighted", f"{pre}/num", 0),
               reduce("ReduceSum", f"{pre}/exp", f"{pre}/den", 0),
               helper.make_node("Div", [f"{pre}/num", f"{pre}/den"], [y], name=f"{pre}/Div")]
        at = list(g.node).index(out)
        for k, n in enumerate(new):
            g.node.insert(at + 1 + k, n)
        drop |= {id(tr), id(sm), id(conv), id(out)}
        count += 1
    if count:
        keep = [n for n in g.node if id(n) not in drop]
        while True:  # and what only fed them (the shape arithmetic of the dropped Reshape)
            used = {i for n in keep for i in n.input} | {o.name for o in g.output}
            live = [n for n in keep if any(o in used for o in n.output)]
            if len(live) == len(keep):
                break
            keep = live
        del g.node[:]
        g.node.extend(keep)
        live = [i for i in g.initializer if i.name in used]
        del g.initializer[:]
        g.initializer.extend(live)
        onnx.checker.check_model(m)
        onnx.save(m, str(path))
    return count


@dataclass(frozen=True)
class Exported:
    """An ONNX file written by Ultralytics' exporter, as its metadata describes it."""

    path: Path
    task: str
    names: dict
    imgsz: int
    kpt_shape: tuple[int, int] | None = None
    source: str = "Ultralytics"  # the adapter whose model was exported (its ``name``; metadata "source")


def read_exported(path: str | Path) -> Exported:
    """The metadata of an exported ONNX file (one CheckpointError when it is not one Ultralytics wrote)."""
    import ast

    import onnx

    path = Path(path)
    if path.is_dir():  # an OpenVINO or ncnn folder: its metadata.yaml
        return _folder_metadata(path)
    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as e:  # onnx raises DecodeError, ValueError, OSError, ... on a broken file
        raise CheckpointError(f"not a readable ONNX file: {path} ({type(e).__name__})") from None
    try:
        imgsz = ast.literal_eval(meta["imgsz"])
        kpt = ast.literal_eval(meta["kpt_shape"]) if "kpt_shape" in meta else None
        return Exported(path, meta["task"], ast.literal_eval(meta["names"]),
                        max(imgsz) if isinstance(imgsz, (list, tuple)) else int(imgsz),
                        tuple(kpt) if kpt else None, meta.get("source", "Ultralytics"))
    except (KeyError, ValueError, SyntaxError, TypeError):
        raise CheckpointError(f"{path}: no Ultralytics export metadata (task, names, imgsz); yoloprune evaluates "
                              "ONNX files written by its export command or Ultralytics' exporter") from None


def _folder_metadata(path: Path) -> Exported:
    import yaml

    try:
        meta = yaml.safe_load((path / "metadata.yaml").read_text())
        imgsz, kpt = meta["imgsz"], meta.get("kpt_shape")
        return Exported(path, meta["task"], dict(meta["names"]),
                        max(imgsz) if isinstance(imgsz, (list, tuple)) else int(imgsz), tuple(kpt) if kpt else None)
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{path}: no readable metadata.yaml (task, names, imgsz); yoloprune evaluates folders "
                              "written by its export command or Ultralytics' exporter") from None


def export_format(model: nn.Module, ckpt: dict, out: str | Path, imgsz: int, fmt: str,
                  int8_data: str | None = None, fraction: float = 1.0) -> Path:
    """Another runtime's format (``openvino``, ``ncnn``) through Ultralytics' exporter, run on a private copy of
    the checkpoint in a temp folder; the produced folder is copied to ``out`` atomically. ``int8_data``: a data
    yaml whose train split (``fraction`` of it) calibrates Ultralytics' INT8 quantization (OpenVINO: NNCF, the
    head kept in float)."""
    import tempfile

    from ultralytics.cfg import DEFAULT_CFG_DICT

    from yoloprune.atomic import atomic_copy_dir

    quantize = {"quantize": 8} if "quantize" in DEFAULT_CFG_DICT else {"int8": True}  # int8= before 8.4
    int8 = {**quantize, "data": int8_data, "split": "train", "fraction": fraction} if int8_data else {}
    with tempfile.TemporaryDirectory(prefix="yoloprune-export-") as tmp:
        src = save_checkpoint(model, Path(tmp) / "model.pt", ckpt)
        produced = YOLO(str(src)).export(format=fmt, imgsz=imgsz, device="cpu", verbose=False, **int8)
        return atomic_copy_dir(produced, out)
