"""Physically keep a subset of one layer's channels. One handler per module type, in one table.

A handler takes ``(module, dim, keep)``: ``dim`` 0 means output channels (or BN features), 1 means input channels,
and ``keep`` is a sorted LongTensor of the indices to keep. Handlers rebuild parameters and buffers in place and
update the module's size attributes, so the module stays an instance of its own standard class.
Register handlers for other layer types with ``register``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

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


SURGERY: dict[type, Handler] = {
    nn.Conv2d: _conv,
    nn.ConvTranspose2d: _conv_transpose,
    nn.Linear: _linear,
    nn.BatchNorm2d: _batch_norm,
}


def register(module_type: type, handler: Handler) -> None:
    """Teach surgery a new layer type."""
    SURGERY[module_type] = handler


def handler_for(module: nn.Module) -> Handler:
    for cls in type(module).__mro__:
        if cls in SURGERY:
            return SURGERY[cls]
    raise TypeError(f"no surgery handler for {type(module).__name__}")


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
    handler_for(module)(module, dim, idx)


def layer_channel_zero(mod: nn.Module, i: int) -> bool:
    """Output channel ``i`` of a conv/linear is exactly zero: zero filter (row) and zero (or no) bias."""
    row = mod.weight.detach()[:, i] if isinstance(mod, nn.ConvTranspose2d) else mod.weight.detach()[i]
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
