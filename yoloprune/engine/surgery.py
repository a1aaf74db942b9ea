"""Surgery: physically keep a subset of one layer's channels (width), and remove dead residual blocks (depth).

Width: one handler per module type, in one table. A handler takes ``(module, dim, keep)``: ``dim`` 0 means output
channels (or BN features), 1 means input channels, and ``keep`` is a sorted LongTensor of the indices to keep.
Handlers rebuild parameters and buffers in place and update the module's size attributes, so the module stays an
instance of its own standard class. Each entry also names the weight axis that holds the output channels (1 for a
transposed conv), which every other part of the engine reads through ``filter_of`` and ``out_channels``. Register
handlers for other layer types with ``register``.

Depth: a residual block whose branch is dead is an identity and is removed whole. A branch is dead when every output
channel of its last conv is exactly zero: BN gamma and beta zero, or a zero filter whose BN adds no shift, followed
by an activation with act(0) == 0. Then ``x + branch(x) == x`` exactly. A removed block is dropped from an
``nn.Sequential`` (C3, C3k) or replaced by ``nn.Identity`` in an ``nn.ModuleList`` (C2f, C3k2, whose forward
concatenates every block's output, so the slot must stay). The model's hooks say which blocks are residual.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from yoloprune.engine.hooks import ModelHooks, ResidualBranch

Handler = Callable[[nn.Module, int, torch.Tensor], None]


def _set_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


def _is_depthwise(m: nn.Conv2d) -> bool:
    """Each output channel reads its own input channel. This includes a depthwise conv already cut to one channel
    (groups = in = out = 1): the same coupled unit, whose input side must not be cut again. For a genuine 1-in
    1-out conv the only possible keep is that channel, so treating it alike changes nothing."""
    return m.groups == m.in_channels == m.out_channels


def _conv(m: nn.Conv2d, dim: int, keep: torch.Tensor) -> None:
    if _is_depthwise(m):
        if dim == 1:
            return  # a depthwise conv's inputs are its outputs: handled on dim 0
        m.in_channels = m.groups = len(keep)
    elif m.groups != 1:
        raise ValueError(f"grouped conv (groups={m.groups}) cannot be pruned channel-wise")
    if dim == 0:
        _set_param(m, "weight", m.weight.data[keep])
        if m.bias is not None:
            _set_param(m, "bias", m.bias.data[keep])
        m.out_channels = len(keep)
    else:
        _set_param(m, "weight", m.weight.data[:, keep])
        m.in_channels = len(keep)


def _conv_transpose(m: nn.ConvTranspose2d, dim: int, keep: torch.Tensor) -> None:
    if m.groups != 1:
        raise ValueError(f"grouped transposed conv (groups={m.groups}) cannot be pruned channel-wise")
    if dim == 0:  # weight is (in, out, kh, kw)
        _set_param(m, "weight", m.weight.data[:, keep])
        if m.bias is not None:
            _set_param(m, "bias", m.bias.data[keep])
        m.out_channels = len(keep)
    else:
        _set_param(m, "weight", m.weight.data[keep])
        m.in_channels = len(keep)


def _linear(m: nn.Linear, dim: int, keep: torch.Tensor) -> None:
    if dim == 0:
        _set_param(m, "weight", m.weight.data[keep])
        if m.bias is not None:
            _set_param(m, "bias", m.bias.data[keep])
        m.out_features = len(keep)
    else:
        _set_param(m, "weight", m.weight.data[:, keep])
        m.in_features = len(keep)


def _batch_norm(m: nn.BatchNorm2d, dim: int, keep: torch.Tensor) -> None:
    if m.affine:
        _set_param(m, "weight", m.weight.data[keep])
        _set_param(m, "bias", m.bias.data[keep])
    if m.track_running_stats:
        m.running_mean = m.running_mean[keep].clone()
        m.running_var = m.running_var[keep].clone()
    m.num_features = len(keep)


@dataclass(frozen=True)
class Surgery:
    """How to cut one layer type: its handler, and the weight axis that holds its output channels."""

    handler: Handler
    out_axis: int = 0


SURGERY: dict[type, Surgery] = {
    nn.Conv2d: Surgery(_conv),
    nn.ConvTranspose2d: Surgery(_conv_transpose, out_axis=1),  # weight is (in, out, kh, kw)
    nn.Linear: Surgery(_linear),
    nn.BatchNorm2d: Surgery(_batch_norm),
}


def register(module_type: type, handler: Handler, out_axis: int = 0) -> None:
    """Teach surgery a new layer type (``out_axis``: the weight axis of its output channels)."""
    SURGERY[module_type] = Surgery(handler, out_axis)


def surgery_for(module: nn.Module) -> Surgery:
    for cls in type(module).__mro__:
        if cls in SURGERY:
            return SURGERY[cls]
    raise TypeError(f"no surgery handler for {type(module).__name__}")


def filter_of(module: nn.Module, i: int) -> torch.Tensor:
    """The weights that produce output channel ``i`` of a conv/linear layer (a view: zeroing it zeroes them)."""
    return module.weight.select(surgery_for(module).out_axis, i)


def inputs_of(module: nn.Module, c: int) -> torch.Tensor:
    """The weights with which a conv/linear layer reads its input channel ``c``, output channels first (a view)."""
    return module.weight.select(1 - surgery_for(module).out_axis, c)


def out_channels(module: nn.Module) -> int:
    """The number of output channels of a conv/linear layer, read from its weight."""
    return module.weight.shape[surgery_for(module).out_axis]


def channels(module: nn.Module, dim: int) -> int:
    """Current number of channels of ``module`` along ``dim`` (0: outputs, 1: inputs)."""
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.out_features if dim == 0 else module.in_features
    return module.out_channels if dim == 0 else module.in_channels


def keep_channels(module: nn.Module, dim: int, keep: list[int]) -> None:
    """Keep only channels ``keep`` of ``module`` along ``dim``."""
    idx = torch.as_tensor(sorted(keep), dtype=torch.long, device=next(module.parameters(), torch.empty(0)).device)
    surgery_for(module).handler(module, dim, idx)


def layer_channel_zero(mod: nn.Module, i: int) -> bool:
    """Output channel ``i`` of a conv/linear is exactly zero: zero filter (row) and zero (or no) bias."""
    row = filter_of(mod, i).detach()
    bias_zero = mod.bias is None or mod.bias.detach()[i].item() == 0
    return bias_zero and not bool(row.any())


def bn_channel_zero(bn: nn.BatchNorm2d, i: int, source: nn.Module | None = None) -> bool:
    """BN channel ``i`` outputs exactly zero: gamma = beta = 0, or it adds no shift to a ``source`` layer's
    channel that is itself exactly zero."""
    if bn.weight is not None and bn.weight[i].item() == 0 and bn.bias[i].item() == 0:
        return True
    if source is None or bn.weight is None:
        return False
    shift = bn.bias[i] - bn.running_mean[i] * bn.weight[i] / torch.sqrt(bn.running_var[i] + bn.eps)
    return shift.item() == 0 and layer_channel_zero(source, i)


@torch.no_grad()
def branch_is_dead(model: nn.Module, branch: ResidualBranch) -> bool:
    """Every output channel of the branch's last conv -> bn -> act is exactly zero."""
    conv, bn = model.get_submodule(branch.conv), model.get_submodule(branch.bn)
    act = model.get_submodule(branch.act) if branch.act else nn.Identity()
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or bn.weight is None:
        return False
    if act(torch.zeros(1, dtype=bn.weight.dtype)).item() != 0:
        return False
    return all(bn_channel_zero(bn, i, conv) for i in range(bn.num_features))


def dead_blocks(model: nn.Module, hooks: ModelHooks) -> list[str]:
    """Names of residual blocks whose branch outputs exactly zero."""
    return [name for name, branch in hooks.residual_blocks(model).items() if branch_is_dead(model, branch)]


def remove_blocks(model: nn.Module, names: list[str]) -> None:
    """Remove the named residual blocks (each must be an exact identity) from their containers."""
    by_parent: dict[str, set[str]] = defaultdict(set)
    for name in names:
        parent, _, key = name.rpartition(".")
        by_parent[parent].add(key)
    for parent_name, keys in by_parent.items():
        parent = model.get_submodule(parent_name)
        if isinstance(parent, nn.Sequential):
            kept = [m for k, m in parent.named_children() if k not in keys]
            owner_name, _, attr = parent_name.rpartition(".")
            setattr(model.get_submodule(owner_name) if owner_name else model, attr, nn.Sequential(*kept))
        elif isinstance(parent, nn.ModuleList):
            for k in keys:
                parent[int(k)] = nn.Identity()
        else:
            for k in keys:
                setattr(parent, k, nn.Identity())
