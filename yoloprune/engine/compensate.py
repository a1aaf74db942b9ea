"""Mean compensation: fold each removed channel's average contribution into the layers that consumed it.

Removing channel c from a conv's input drops ``W[:, c] * x_c`` from its output. Under BatchNorm, a channel's
magnitude is set by gamma and beta rather than by its filter norm, so even low-scoring channels carry a sizeable
constant part ``E[x_c]``; dropping it shifts every downstream activation. Adding ``sum_k W[o, c, k] * E[x_c]`` to
the consumer's bias (or subtracting it from the running mean of the BatchNorm right after it) keeps the output
right on average: exact for a channel that is constant, and a first-order fix otherwise. ``E[x_c]`` is measured
at each consumer's input on calibration images, so it holds through adds, concats, pools and upsampling alike.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

_CONSUMERS = (nn.Conv2d, nn.Linear)


@torch.no_grad()
def input_means(model: nn.Module, images: torch.Tensor, names: set[str], batch: int = 8) -> dict[str, torch.Tensor]:
    """Per-channel mean of the input of each named conv/linear layer over ``images`` (N, 3, H, W)."""
    sums: dict[str, torch.Tensor] = {}
    count = defaultdict(int)
    hooks = []

    def hook(name):
        def record(_mod, args):
            x = args[0].detach().float()
            dims = [d for d in range(x.dim()) if d != 1] if x.dim() > 2 else [0]
            s = x.sum(dim=dims)
            sums[name] = sums[name] + s if name in sums else s
            count[name] += x.numel() // x.shape[1]
        return record

    for name, mod in model.named_modules():
        if name in names and isinstance(mod, _CONSUMERS):
            hooks.append(mod.register_forward_pre_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        for i in range(0, len(images), batch):
            model(images[i:i + batch].to(p.device, p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {n: s / count[n] for n, s in sums.items()}


@torch.no_grad()
def fold(model: nn.Module, removed_inputs: dict[str, set[int]], means: dict[str, torch.Tensor],
         bn_after: dict[str, str]) -> int:
    """Fold the mean contribution of removed input channels into each consumer. Returns layers adjusted.

    ``removed_inputs``: consumer name -> input channel indices being removed; ``bn_after``: conv -> the BatchNorm
    that directly follows it. A consumer with neither bias nor such a BatchNorm (or a grouped conv) is left as is.
    """
    done = 0
    for name, idx in removed_inputs.items():
        mod = model.get_submodule(name)
        if name not in means or not idx or (isinstance(mod, nn.Conv2d) and mod.groups != 1):
            continue
        cols = torch.tensor(sorted(idx))
        w = mod.weight.detach().float()[:, cols]
        w = w.flatten(2).sum(2) if w.dim() > 2 else w
        delta = w @ means[name][cols].to(w.device)
        if mod.bias is not None:
            mod.bias.add_(delta.to(mod.bias.dtype))
        elif name in bn_after:
            bn = model.get_submodule(bn_after[name])
            bn.running_mean.sub_(delta.to(bn.running_mean.dtype))
        else:
            continue
        done += 1
    return done
