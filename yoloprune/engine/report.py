"""What a pruning step did: params and GFLOPs before/after, per-layer widths, frozen channels and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from yoloprune.engine.graph import Graph
from yoloprune.engine.hooks import ModelHooks
from yoloprune.engine.surgery import out_channels

_WIDTH_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@dataclass
class Snapshot:
    params: int
    gflops: float
    widths: dict[str, int]  # layer name -> output channels
    zeros: int  # exactly-zero weights in conv/linear layers
    weights: int


def snapshot(model: nn.Module, hooks: ModelHooks, imgsz: int) -> Snapshot:
    layers = {n: m for n, m in model.named_modules() if isinstance(m, _WIDTH_LAYERS)}
    widths = {n: out_channels(m) for n, m in layers.items()}
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    weights = sum(m.weight.numel() for m in layers.values())
    return Snapshot(sum(p.numel() for p in model.parameters()), hooks.gflops(model, imgsz), widths, zeros, weights)


@dataclass
class Report:
    """Before/after figures of one action. ``model`` is the (modified in place) model."""

    action: str
    before: Snapshot
    after: Snapshot
    removed_units: int
    prunable_units: int
    frozen: dict[str, int] = field(default_factory=dict)  # reason -> channels frozen for it
    imgsz: int = 640
    removed_blocks: list[str] = field(default_factory=list)  # residual blocks removed whole (depth pruning)
    model: nn.Module | None = field(default=None, repr=False)
    ckpt: dict = field(default_factory=dict, repr=False)  # the checkpoint the model came from (yoloprune.api)
    refits: dict[str, tuple[float, float]] = field(default_factory=dict)  # layer -> output error before/after refit
    refit_skipped: dict[str, str] = field(default_factory=dict)  # layer -> why reconstruction left it alone
    speed: Any = field(default=None, repr=False)  # a speed target's search and re-timing (yoloprune.api.Timed)

    @classmethod
    def build(cls, model: nn.Module, hooks: ModelHooks, before: Snapshot, graph: Graph, removed: int, imgsz: int,
              action: str, removed_blocks: list[str] | None = None, refits: dict | None = None) -> Report:
        """The report of ``model`` after ``action``; ``refits``: layer -> the reconstruction's Refit of it."""
        frozen = Counter()
        for u in graph.frozen_units():
            for reason in u.frozen:
                frozen[reason] += 1
        prunable = sum(1 for u in graph.units if not u.frozen)
        refits = refits or {}
        return cls(action, before, snapshot(model, hooks, imgsz), removed, prunable, dict(frozen), imgsz,
                   list(removed_blocks or []), model,
                   refits={n: (j.before, j.after) for n, j in refits.items() if not j.skipped},
                   refit_skipped={n: j.skipped for n, j in refits.items() if j.skipped})

    def changed_layers(self) -> list[tuple[str, int, int]]:
        return [(n, w, self.after.widths.get(n, 0)) for n, w in self.before.widths.items()
                if self.after.widths.get(n) != w]

    def summary(self) -> dict:
        b, a = self.before, self.after
        return {"action": self.action, "params_before": b.params, "params_after": a.params,
                "gflops_before": round(b.gflops, 4), "gflops_after": round(a.gflops, 4), "imgsz": self.imgsz,
                "removed_units": self.removed_units, "prunable_units": self.prunable_units,
                "removed_blocks": self.removed_blocks, "refit_layers": len(self.refits)}

    def table(self, max_rows: int = 60) -> str:
        b, a = self.before, self.after
        lines = [
            f"{self.action}: removed {self.removed_units} of {self.prunable_units} prunable channel units",
            f"{'':24}{'before':>14}{'after':>14}{'ratio':>9}",
            f"{'params':24}{b.params:>14,}{a.params:>14,}{a.params / max(b.params, 1):>9.3f}",
            f"{'GFLOPs @' + str(self.imgsz):24}{b.gflops:>14.3f}{a.gflops:>14.3f}{a.gflops / max(b.gflops, 1e-12):>9.3f}",
        ]
        if self.removed_blocks:
            lines.append(f"removed {len(self.removed_blocks)} residual block(s) whose branch was zero: "
                         + ", ".join(self.removed_blocks))
        if self.refits:
            before = sorted(b for b, _ in self.refits.values())
            after = sorted(a for _, a in self.refits.values())
            mid = len(before) // 2
            lines.append(f"reconstructed {len(self.refits)} layers whose inputs changed: median relative output error "
                         f"{before[mid]:.3f} -> {after[mid]:.3f} on the calibration images")
        if self.refit_skipped:
            reasons = Counter(self.refit_skipped.values())
            lines.append("not refit (mean compensation only): " + ", ".join(f"{n} {r}" for r, n in reasons.items()))
        lines += ["", f"{'layer':40}{'width before':>14}{'after':>8}"]
        changed = self.changed_layers()
        lines += [f"{n:40}{w0:>14}{w1:>8}" for n, w0, w1 in changed[:max_rows]]
        if len(changed) > max_rows:
            lines.append(f"... and {len(changed) - max_rows} more layers changed")
        if not changed:
            lines.append("(no layer changed)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
