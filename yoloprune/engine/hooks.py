"""What the engine needs from a model, passed in by the caller: ``ModelHooks``.

The engine imports torch only. What it must know about a model's source (its FLOPs counter, which outputs are its
contract, which blocks are residual, which layers are constants of the architecture, which attributes cache widths)
comes through this interface, which each model source's adapter implements (``yoloprune.sources.base.Adapter``).
Every hook takes the model, since surgery changes it between calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from yoloprune.engine.graph import Branch, Graph, trace


@dataclass(frozen=True)
class ResidualBranch:
    """A block that computes ``x + branch(x)``, its branch ending in ``conv -> bn -> act`` (module names; ``act``
    None for no activation). When that ending outputs exactly zero, the block is an identity and can be removed."""

    conv: str
    bn: str
    act: str | None = None


class ModelHooks(ABC):
    """The engine's view of a model source. Stateless: each hook reads the model it is given."""

    @abstractmethod
    def max_stride(self, model: nn.Module) -> int:
        """The largest stride of the model's head: traces and trial runs use inputs of twice this size."""

    @abstractmethod
    def gflops(self, model: nn.Module, imgsz: int) -> float:
        """GFLOPs of one forward pass at ``imgsz`` (the budget of GFLOPs-targeted pruning)."""

    @abstractmethod
    def contract_outputs(self, model: nn.Module, out: Any) -> list[torch.Tensor]:
        """The tensors of an eval-mode output that are the model's contract (their channels are never pruned)."""

    @abstractmethod
    def training_branches(self, model: nn.Module) -> tuple[tuple[Branch, ...], tuple[str, ...]]:
        """Training-only modules that the inference pass skips, run beside the trace so they stay coupled, and the
        names of modules that read no traced channel at all (both may be empty)."""

    @abstractmethod
    def residual_blocks(self, model: nn.Module) -> dict[str, ResidualBranch]:
        """Residual blocks by name, each with the end of its branch (depth pruning removes dead ones)."""

    @abstractmethod
    def fixed_layers(self, model: nn.Module) -> set[str]:
        """Layers whose weights are constants of the architecture, never refit by reconstruction."""

    @abstractmethod
    def head_output_convs(self, model: nn.Module) -> set[str]:
        """The layers that write the head's outputs (unstructured sparsity leaves them alone unless asked)."""

    @abstractmethod
    def head_outputs(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The layers whose raw outputs are the model's predictions before decoding (recovery matches them to a
        teacher's), each with a bool mask over its output channels: True where a channel is the logit of a
        sigmoid score (class, objectness), False where it is a value (box distribution, keypoint, angle, mask
        coefficient, prototype, classifier logit)."""

    def scores(self, model: nn.Module, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The head's detection score at each position, (N, H, W), of the raw head outputs given (layer -> (N, C,
        H, W)), for the layers that score: by default the highest sigmoid over the layer's logit channels
        (``head_outputs``). A source whose score is a product (YOLOv5's objectness times class) overrides it."""
        return highest_sigmoid(outputs, self.head_outputs(model))

    def protected(self, model: nn.Module) -> tuple[str, ...]:
        """Module names (or prefixes) whose channels a prune leaves alone unless told otherwise
        (``PruneConfig.protect``), as ``PruneConfig.ignore`` does: layers whose loss costs far more accuracy than
        their GFLOPs are worth. None by default."""
        return ()

    @abstractmethod
    def fix_widths(self, model: nn.Module) -> None:
        """Refresh attributes that cache a width, after surgery changed the layers."""


def highest_sigmoid(outputs: dict[str, torch.Tensor], logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per output layer (N, C, H, W) with logit channels (``logits``: layer -> bool mask over its channels): the
    highest sigmoid over those channels at each position, (N, H, W)."""
    return {n: torch.sigmoid(t[:, logits[n].to(t.device)].float()).amax(1) for n, t in outputs.items()
            if t.dim() == 4 and n in logits and logits[n].any()}


def example_input(model: nn.Module, hooks: ModelHooks) -> torch.Tensor:
    """A blank batch-1 image at twice the model's largest stride, in its dtype and on its device."""
    p = next(model.parameters())
    size = 2 * hooks.max_stride(model)
    return torch.zeros(1, 3, size, size, dtype=p.dtype, device=p.device)


def trace_model(model: nn.Module, hooks: ModelHooks) -> Graph:
    """The coupling graph of ``model``: traced on ``example_input``, its contract outputs and training-only
    branches frozen."""
    branches, unused = hooks.training_branches(model)
    return trace(model, example_input(model, hooks), outputs=lambda out: hooks.contract_outputs(model, out),
                 branches=branches, unused=unused)


__all__ = ["ModelHooks", "ResidualBranch", "example_input", "highest_sigmoid", "trace_model"]
