"""Layer (depth) pruning: residual blocks whose branch is dead are identities, and are removed whole.

A branch is dead when every output channel of its last Conv is exactly zero: BN gamma and beta zero, or a zero
filter whose BN adds no shift, followed by an activation with act(0) == 0. Then ``x + branch(x) == x`` exactly.
A removed block is dropped from an ``nn.Sequential`` (C3, C3k) or replaced by ``nn.Identity`` in an
``nn.ModuleList`` (C2f, C3k2, whose forward concatenates every block's output, so the slot must stay).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from yoloprune import sources
from yoloprune.surgery import bn_channel_zero


@torch.no_grad()
def branch_is_dead(block: nn.Module) -> bool:
    last = block.cv2
    conv, bn, act = getattr(last, "conv", None), getattr(last, "bn", None), getattr(last, "act", nn.Identity())
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or bn.weight is None:
        return False
    if act(torch.zeros(1, dtype=bn.weight.dtype)).item() != 0:
        return False
    return all(bn_channel_zero(bn, i, conv) for i in range(bn.num_features))


def dead_blocks(model: nn.Module) -> list[str]:
    """Names of residual blocks whose branch outputs exactly zero."""
    return [name for name, block in sources.residual_blocks(model).items() if branch_is_dead(block)]


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
