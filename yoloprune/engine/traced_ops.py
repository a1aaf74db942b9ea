"""The ops a channel trace understands: one handler per torch function name, in a registry (``register_op``).

A handler ``(tracer, args, kwargs, out) -> bool`` is called by ``graph._Tracer`` after the op ran; it labels the
outputs' channels from the inputs' (a conv mints fresh labels, ``cat`` concatenates label lists, ``chunk`` slices
and unites its equal pieces) and returns True, or False to let the tracer treat the op as unknown (its channels
frozen). Channel-wise and element-wise ops need no handler: ``graph`` passes or unites their labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_Tracer = Any  # graph._Tracer, which calls the handlers (graph imports this module, not the other way)
Handler = Callable[[_Tracer, tuple, dict, Any], bool]


class _Width(int):
    """A channel count read from a traced tensor's shape. It remembers the labels it counts, so that when the
    number flows into an op (``y.view(B, C, H, W)``) those channels are frozen: after pruning the number would
    change, and the tensor it shapes may not. Arithmetic on it keeps the labels."""

    labels: list[int]

    def __new__(cls, value: int, labels: list[int]):
        obj = int.__new__(cls, value)
        obj.labels = labels
        return obj

    def _keep(self, v):
        return _Width(v, self.labels) if isinstance(v, int) and not isinstance(v, bool) else v

    def __reduce__(self):  # a model that cached a traced shape (Detect.shape) copies and pickles plain ints
        return int, (int(self),)


def _width_op(name: str):
    op = getattr(int, name)
    return lambda self, other: self._keep(op(self, other))


for _op in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__", "__rfloordiv__"):
    setattr(_Width, _op, _width_op(_op))


def _spans_channels(a, out: torch.Tensor) -> bool:
    """Whether ``a``, broadcast against ``out``, varies along out's channel dim (dim 1)."""
    if not isinstance(a, torch.Tensor):
        return False
    idx = a.dim() - (out.dim() - 1)  # a's dim aligned with out's dim 1, broadcasting from the right
    return idx >= 0 and a.shape[idx] != 1


def _has_tensor(out) -> bool:
    if isinstance(out, torch.Tensor):
        return True
    return isinstance(out, (list, tuple)) and any(isinstance(o, torch.Tensor) for o in out)


def _widths(args, kwargs) -> list[_Width]:
    found, stack = [], [*args, *kwargs.values()]
    while stack:
        a = stack.pop()
        if isinstance(a, _Width):
            found.append(a)
        elif isinstance(a, (list, tuple)):  # torch.Size included
            stack.extend(a)
    return found


def _flat_tensors(args, kwargs) -> list[torch.Tensor]:
    flat = []
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            flat.append(a)
        elif isinstance(a, (list, tuple)):
            flat.extend(x for x in a if isinstance(x, torch.Tensor))
    return flat


def _dim_arg(args, kwargs, pos: int, default: int = 0) -> int:
    return kwargs.get("dim", args[pos] if len(args) > pos else default)


def _is_channel_dim(t: torch.Tensor, dim: int) -> bool:
    return t.dim() in (2, 4) and dim % t.dim() == 1


# -- handlers: return False to fall back to the generic rules ---------------------------------------------------
def _h_unknown_layout(tr: _Tracer, owner: str | None, x, w: torch.Tensor) -> bool:
    """A conv or linear layer applied to a tensor outside the traced layouts (a sequence (L, N, C) inside
    attention, say): reached, every channel of it frozen, since nothing says which channels it couples."""
    if owner is None or tr._get(x) is not None or not isinstance(x, torch.Tensor) or x.dim() in (2, 4):
        return False
    tr._freeze_layer(owner, w, f"layer on a {x.dim()}-D tensor ({owner})")
    return False  # the output is labelled as any other op's would be


def _h_conv(tr: _Tracer, args, kwargs, out):
    x, w = args[0], args[1]
    owner = tr.param_owner.get(id(w))
    groups = kwargs.get("groups", args[6] if len(args) > 6 else 1)
    lab = tr._get(x)
    if owner is None or lab is None or x.dim() != 4:
        return _h_unknown_layout(tr, owner, x, w)
    tr.visited.add(owner)
    cout = out.shape[1]
    if groups == 1:
        tr._record(owner, 1, lab)
        new = tr.uf.new(cout)
    elif groups == x.shape[1] == cout:  # depthwise: output channel i is input channel i
        new = lab
        tr._record(owner, 1, lab)
    else:
        why = f"grouped conv {owner} (groups={groups})"
        tr.uf.freeze(lab, why)
        tr.frozen_ops[why] += len(lab)
        new = tr.uf.new(cout, frozen=why)
    tr._record(owner, 0, new)
    tr._set(out, new)
    tr.producer[id(out)] = owner
    return True


def _h_conv_transpose(tr: _Tracer, args, kwargs, out):
    x, w = args[0], args[1]
    owner = tr.param_owner.get(id(w))
    groups = kwargs.get("groups", args[6] if len(args) > 6 else 1)
    lab = tr._get(x)
    if owner is None or lab is None or x.dim() != 4 or groups != 1:
        return False
    tr.visited.add(owner)
    tr._record(owner, 1, lab)  # ConvTranspose2d weight is (in, out, k, k); surgery maps dims to it
    new = tr.uf.new(out.shape[1])
    tr._record(owner, 0, new)
    tr._set(out, new)
    return True


def _h_linear(tr: _Tracer, args, kwargs, out):
    x, w = args[0], args[1]
    owner = tr.param_owner.get(id(w))
    lab = tr._get(x)
    if owner is None or lab is None or x.dim() != 2:
        return _h_unknown_layout(tr, owner, x, w)
    tr.visited.add(owner)
    tr._record(owner, 1, lab)
    new = tr.uf.new(out.shape[1])
    tr._record(owner, 0, new)
    tr._set(out, new)
    return True


def _h_batch_norm(tr: _Tracer, args, kwargs, out):
    x = args[0]
    w = kwargs.get("weight", args[3] if len(args) > 3 else None)
    rm = args[1] if len(args) > 1 else kwargs.get("running_mean")
    owner = tr.param_owner.get(id(w)) if w is not None else None
    lab = tr._get(x)
    if owner is None or lab is None or rm is None:
        return False
    tr.visited.add(owner)
    tr._record(owner, 0, lab)
    if id(x) in tr.producer:
        tr.bn_source[owner] = tr.producer[id(x)]
    tr._set(out, lab)
    return True


def _h_cat(tr: _Tracer, args, kwargs, out):
    tensors = args[0] if args else kwargs["tensors"]
    dim = _dim_arg(args, kwargs, 1)
    if not _is_channel_dim(out, dim):
        return False
    labs = []
    for t in tensors:
        lab = tr._get(t)
        labs.extend(lab if lab is not None else tr.uf.new(t.shape[1], frozen="concatenated constant"))
    tr._set(out, labs)
    return True


def _h_chunk(tr: _Tracer, args, kwargs, out):
    x = args[0]
    dim = _dim_arg(args, kwargs, 2)
    lab = tr._get(x)
    if lab is None or not _is_channel_dim(x, dim):
        return False
    pieces, start = [], 0
    for o in out:
        pieces.append(lab[start:start + o.shape[1]])
        start += o.shape[1]
    if len({len(p) for p in pieces}) != 1:
        return False  # uneven chunks change size under pruning
    for p in pieces[1:]:
        for i, j in zip(pieces[0], p, strict=True):
            tr.uf.union(i, j)
    for o, p in zip(out, pieces, strict=True):
        tr._set(o, p)
    return True


def _h_type_as(tr: _Tracer, args, kwargs, out):
    """``x.type_as(other)`` reads only other's dtype: x's labels pass through, other is untouched."""
    lab = tr._get(args[0])
    if lab is not None and out.shape[1:2] == args[0].shape[1:2]:
        tr._set(out, lab)
    else:
        tr._fresh(out)
    return True


def _h_constant(tr: _Tracer, args, kwargs, out):
    """``x.new_full(...)``, ``zeros_like(x)`` ...: a constant that borrows only shape, dtype or device."""
    tr._fresh(out)
    return True


_HANDLERS: dict[str, Handler] = {
    "conv2d": _h_conv, "conv_transpose2d": _h_conv_transpose, "linear": _h_linear, "batch_norm": _h_batch_norm,
    "cat": _h_cat, "concat": _h_cat, "concatenate": _h_cat, "chunk": _h_chunk, "type_as": _h_type_as,
    **{n: _h_constant for n in ("new_full", "new_zeros", "new_ones", "new_empty", "new_tensor", "zeros_like",
                                "ones_like", "empty_like", "full_like", "rand_like", "randn_like")},
}


def register_op(name: str, handler: Handler) -> None:
    """Trace the torch function ``name`` (``func.__name__``) with ``handler`` from now on."""
    _HANDLERS[name] = handler


def handler_for(name: str) -> Handler | None:
    return _HANDLERS.get(name)
