"""Label-free recovery: train a pruned model to reproduce its unpruned teacher on unlabeled images.

Only the head's raw outputs are matched, the layers that the model's hooks name (``ModelHooks.head_outputs``): the
box distributions, keypoints, mask coefficients, prototypes, angles and classifier logits as values, by a mean
squared error normalised by each channel's spread in the teacher (so every output weighs alike), and class (and
objectness) logits by binary cross-entropy against the teacher's probabilities. A value's error at a position is
weighed by the teacher's score there, and every level's weighted sum is divided by the mean level's weight sum, not
its own: a level where the teacher sees nothing adds next to nothing (divided by its own sum, its errors, which
decide no detection, weighed as much as the levels holding the objects). Their widths are the model's
contract, so pruning never changed them and student and teacher compare channel by channel. No label is read.

The student trains with its BatchNorm statistics frozen (eval mode; the few hundred images a user has would make
poor batch statistics) and Adam (a short warm-up, then a cosine over the run's epochs or minutes); every parameter
but the architecture's constants (the hooks' ``fixed_layers``, e.g. the DFL's integral) is trained, and no width
changes. A reconstructed model starts close to its teacher, where Adam's first steps (each parameter moved by about
the learning rate, whatever its gradient) can undo in one epoch what reconstruction fitted. So the rate is not
trusted: a short probe first tries the highest rate and lower ones for a few steps each on a copy and keeps the
highest that leaves the held-back distance within ``backoff`` of its start (Adam's first steps raise it a little
before training lowers it; a rate that undoes the reconstruction raises it several times over); and an epoch that
ends with the distance more than ``backoff`` above the best so far sends the student back to the best weights with
the rate halved. Each epoch ends with the distance to the teacher on held-back images, without augmentation; the
best epoch's weights are the result, and the result says why training stopped.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from yoloprune.defaults import RECOVER_BATCH, RECOVER_LR, RECOVER_MINUTES
from yoloprune.engine.hooks import ModelHooks, highest_sigmoid
from yoloprune.errors import ConfigError


@dataclass(frozen=True)
class RecoverConfig:
    """How long and how to train. ``epochs`` or ``minutes`` bounds the run (both: whichever ends first)."""

    epochs: int | None = None
    minutes: float | None = RECOVER_MINUTES
    lr: float = RECOVER_LR  # Adam: the highest rate tried (the probe may choose a lower one)
    probe: bool = True  # try lr, lr/3, lr/10, lr/30 for a few steps each first; train at the highest kept (backoff)
    # the rise of the held-back distance taken as noise: an epoch ending more than this share above the best goes
    # back to the best at half the rate, and a probed rate is kept if its steps end below the start times (1 + it).
    # 0.02 refused rates on noise (ir-yolo-tracker 0.7x: 1e-5, agreement 0.719; 0.826 at 0.25, 1e-4)
    backoff: float = 0.25
    batch: int = RECOVER_BATCH
    hold_out: float = 0.1  # fraction of the images held back for the distance (at least 1, at most 64)
    flip: bool = True  # random horizontal flips
    scale: float = 0.0  # random zoom in [1 - scale, 1 + scale] about the centre (0: off; 0.25 drifted at 0.7x)
    warmup: float = 0.03  # the learning rate rises linearly over this share of the run, then falls as a cosine
    foreground: bool = True  # weigh box/keypoint errors by the teacher's score at each position
    seed: int = 0

    def validate(self) -> None:
        if self.epochs is None and self.minutes is None:
            raise ConfigError("give a number of epochs or minutes for recovery")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise ConfigError(f"minutes must be > 0, got {self.minutes}")
        if not (self.lr > 0 and self.batch >= 1 and 0 < self.hold_out < 1 and 0 <= self.scale < 1
                and 0 <= self.warmup < 1 and self.backoff >= 0):
            raise ConfigError("lr must be > 0, batch >= 1, hold_out and warmup in (0, 1), scale in [0, 1) and "
                              "backoff >= 0")

    def lr_at(self, progress: float, lr: float | None = None) -> float:
        """The learning rate at ``progress`` (0 to 1) through the run, peaking at ``lr`` (else ``self.lr``):
        linear warm-up, then a cosine to zero."""
        lr = self.lr if lr is None else lr
        if progress < self.warmup:
            return lr * (progress + 1e-3) / self.warmup
        return lr * 0.5 * (1 + math.cos(math.pi * min((progress - self.warmup) / (1 - self.warmup), 1.0)))


@dataclass
class EpochRow:
    epoch: int
    train_loss: float
    distance: float  # the loss on the held-back images
    seconds: float


@dataclass
class RecoverResult:
    """The run: the distance before training, one row per epoch, and the best epoch (whose weights the model
    now holds)."""

    distance_before: float
    rows: list[EpochRow] = field(default_factory=list)
    best_epoch: int = 0
    lr: float | None = None  # the peak rate trained at (the probe's choice)
    probe: list[tuple[float, float]] = field(default_factory=list)  # (rate, held-back distance after its steps)
    backoffs: int = 0  # epochs that ended above the best and were undone, the rate halved each time
    stopped: str = ""  # why training ended
    # no probed rate kept the held-back distance within ``backoff`` of its start: training ran at the lowest, where
    # it may gain little (the real OBB model on 24 tiles: agreement unchanged)
    probe_failed: bool = False

    @property
    def distance(self) -> float:
        return min([self.distance_before, *(r.distance for r in self.rows)])


class _Capture:
    """Forward hooks that keep the raw outputs of the named layers, in the order they run."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [model.get_submodule(n).register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str):
        def hook(_m, _a, out):
            self.out[name] = out
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _spread(out: torch.Tensor) -> torch.Tensor:
    """Per output channel: the standard deviation over every other axis."""
    dims = [d for d in range(out.dim()) if d != 1]
    return out.float().std(dim=dims, correction=0).clamp_min(1e-3)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.movedim(1, -1).reshape(-1, t.shape[1]).float()


class HeadLoss:
    """The distance between a student's and a teacher's head outputs (see the module's docstring). With
    ``foreground``, a value's error at a position is weighed by the teacher's highest score there (over the logit
    outputs of the same spatial size): boxes and keypoints where the teacher sees nothing decide no detection."""

    def __init__(self, logits: dict[str, torch.Tensor], spread: dict[str, torch.Tensor],
                 foreground: bool = True, scores: Callable[[dict], dict] | None = None) -> None:
        """``scores``: raw head outputs -> the score at each position (``ModelHooks.scores``); by default the
        highest sigmoid over the logit channels."""
        self.logits, self.spread, self.foreground = logits, spread, foreground
        self.scores = scores or (lambda out: highest_sigmoid(out, logits))

    def _weights(self, teacher: dict[str, torch.Tensor]) -> dict[tuple, torch.Tensor]:
        """Per spatial shape (N, H, W): the teacher's highest score at each position, flattened."""
        best: dict[tuple, torch.Tensor] = {}
        for p in self.scores(teacher).values():
            key = tuple(p.shape)
            best[key] = torch.maximum(best[key], p) if key in best else p
        return {k: v.reshape(-1) for k, v in best.items()}

    def __call__(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
        terms = []
        weights = self._weights(teacher) if self.foreground else {}
        # every level's value terms are divided by the mean level's weight sum, not their own: a level where the
        # teacher sees nothing then weighs next to nothing instead of as much as the levels holding the objects
        norm = (sum(w.sum() for w in weights.values()) / len(weights)).clamp_min(1e-6) if weights else None
        for name, t in teacher.items():
            w = weights.get((t.shape[0], *t.shape[2:])) if t.dim() == 4 else None
            s, t = _channels_last(student[name]), _channels_last(t)
            mask = self.logits[name].to(s.device)
            if (~mask).any():
                scale = self.spread[name].to(s.device)[~mask]
                err = ((s[:, ~mask] - t[:, ~mask]) / scale).pow(2).mean(1)
                terms.append(err.mean() if w is None else (err * w).sum() / norm)
            if mask.any():
                terms.append(F.binary_cross_entropy_with_logits(s[:, mask], torch.sigmoid(t[:, mask]))
                             - F.binary_cross_entropy_with_logits(t[:, mask], torch.sigmoid(t[:, mask])))
        return torch.stack(terms).mean()


def augment(x: torch.Tensor, cfg: RecoverConfig, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and zoom about the centre (the image size is kept), per batch."""
    if cfg.flip and torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(-1)
    if cfg.scale:
        z = 1 + (torch.rand(1, generator=gen).item() * 2 - 1) * cfg.scale
        grid = F.affine_grid(torch.tensor([[[1 / z, 0, 0], [0, 1 / z, 0]]], dtype=x.dtype).expand(len(x), 2, 3),
                             list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = x + (1 - F.grid_sample(torch.ones_like(x[:, :1]), grid, align_corners=False)) * (114 / 255)  # pad grey
    return x


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def _outputs(model: nn.Module, cap: _Capture, x: torch.Tensor) -> dict[str, torch.Tensor]:
    cap.out = {}
    model(x)
    return dict(cap.out)


def check_heads(student: nn.Module, teacher: nn.Module, hooks: ModelHooks, probe: torch.Tensor) -> list[str]:
    """The head outputs both models produce with the same shape; refuses a teacher whose head differs."""
    names = list(hooks.head_outputs(student))
    if set(names) != set(hooks.head_outputs(teacher)):
        raise ConfigError("the teacher's head is not the student's (other output layers): give the model it was "
                          "pruned from")
    caps = [_Capture(m, names) for m in (student, teacher)]
    try:
        with torch.no_grad():
            s, t = (_outputs(m, c, probe) for m, c in zip((student, teacher), caps, strict=True))
    finally:
        for c in caps:
            c.close()
    ran = [n for n in names if n in s]
    bad = [n for n in ran if n not in t or s[n].shape != t[n].shape]
    if bad or not ran:
        raise ConfigError(f"the teacher's head is not the student's ({bad[0] if bad else 'no head output'} differs:"
                          " other classes or outputs); give the model it was pruned from")
    return ran


@torch.no_grad()
def _distance(student, teacher, caps, loss: HeadLoss, images: torch.Tensor, batch: int) -> float:
    total, n = 0.0, 0
    for i in range(0, len(images), batch):
        x = _as_float(images[i:i + batch])
        total += float(loss(_outputs(student, caps[0], x), _outputs(teacher, caps[1], x))) * len(x)
        n += len(x)
    return total / max(n, 1)


def recover(student: nn.Module, teacher: nn.Module, hooks: ModelHooks, images: torch.Tensor, cfg: RecoverConfig,
            on_epoch: Callable[[RecoverResult], None] | None = None) -> RecoverResult:
    """Train ``student`` in place towards ``teacher`` on ``images`` ((N, 3, H, W), uint8 or [0, 1] floats).
    The student ends with its best epoch's weights; widths and module classes are unchanged. ``on_epoch`` is
    called with the result so far after every epoch."""
    cfg.validate()
    if len(images) < 2:
        raise ConfigError(f"recovery needs at least 2 images, got {len(images)}")
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(images), generator=gen)
    n_held = min(64, max(1, round(cfg.hold_out * len(images))))
    held, train = images[order[:n_held]], images[order[n_held:]]
    student.eval()
    teacher.eval()
    names = check_heads(student, teacher, hooks, _as_float(held[:1]))
    caps = [_Capture(student, names), _Capture(teacher, names)]
    modes = [p.requires_grad for p in student.parameters()]
    try:
        with torch.no_grad():
            ref = _outputs(teacher, caps[1], _as_float(images[order[:16]]))  # each output's spread
        loss = HeadLoss({n: hooks.head_outputs(student)[n] for n in names}, {n: _spread(t) for n, t in ref.items()},
                        cfg.foreground, lambda out: hooks.scores(teacher, out))
        result = RecoverResult(_distance(student, teacher, caps, loss, held, cfg.batch))
        fixed = {f"{n}." for n in hooks.fixed_layers(student)}
        params = [p for n, p in student.named_parameters() if not any(n.startswith(f) for f in fixed)]
        _train(student, params, teacher, caps, loss, train, held, cfg, gen, result, on_epoch)
    finally:
        for c in caps:
            c.close()
        for p, m in zip(student.parameters(), modes, strict=True):
            p.requires_grad_(m)
    return result


def _steps(student, teacher, caps, loss: HeadLoss, opt, train: torch.Tensor, cfg: RecoverConfig,
           gen: torch.Generator, rate: Callable[[], float], n: int | None = None,
           stop: Callable[[], bool] = lambda: False) -> float:
    """One pass over ``train`` in a random order (or its first ``n`` batches) at ``rate()`` per step; returns the
    mean loss."""
    perm, seen, total = torch.randperm(len(train), generator=gen), 0, 0.0
    for k, i in enumerate(range(0, len(train), cfg.batch)):
        if (n is not None and k >= n) or stop():
            break
        for group in opt.param_groups:
            group["lr"] = rate()
        x = augment(_as_float(train[perm[i:i + cfg.batch]]), cfg, gen)
        with torch.no_grad():
            target = _outputs(teacher, caps[1], x)
        value = loss(_outputs(student, caps[0], x), target)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        total, seen = total + float(value.detach()) * len(x), seen + len(x)
    return total / max(seen, 1)


PROBE_RATES = (1.0, 1 / 3, 1 / 10, 1 / 30)  # of cfg.lr, tried highest first
PROBE_STEPS = 8


def _probe(student, params, teacher, caps, loss: HeadLoss, train, held, cfg: RecoverConfig, gen,
           result: RecoverResult) -> float:
    """The highest of ``PROBE_RATES`` whose ``PROBE_STEPS`` steps (from the student as it is, on a fresh Adam)
    leave the held-back distance below its start times (1 + ``cfg.backoff``); the lowest when none does. The
    student is left as it was."""
    start = copy.deepcopy(student.state_dict())
    chosen = None
    for share in PROBE_RATES:
        lr = cfg.lr * share
        opt = torch.optim.Adam(params, lr=lr)
        _steps(student, teacher, caps, loss, opt, train, cfg, gen, lambda lr=lr: lr, PROBE_STEPS)
        d = _distance(student, teacher, caps, loss, held, cfg.batch)
        result.probe.append((lr, d))
        student.load_state_dict(start)
        if d < result.distance_before * (1 + cfg.backoff):
            chosen = lr
            break
    result.probe_failed = chosen is None
    return chosen if chosen is not None else cfg.lr * PROBE_RATES[-1]


def _train(student, params: list[nn.Parameter], teacher, caps, loss: HeadLoss, train: torch.Tensor,
           held: torch.Tensor, cfg: RecoverConfig, gen: torch.Generator, result: RecoverResult, on_epoch) -> None:
    """Epochs until ``cfg.epochs`` or ``cfg.minutes`` run out, training ``params`` (every parameter but the
    architecture's constants) at the probed rate, backing off where an epoch ends above the best; keeps the best
    epoch's weights in ``student``."""
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    t0, epoch = time.perf_counter(), 0
    deadline = t0 + cfg.minutes * 60 if cfg.minutes else math.inf
    peak = _probe(student, params, teacher, caps, loss, train, held, cfg, gen, result) if cfg.probe else cfg.lr
    result.lr = peak
    opt = torch.optim.Adam(params, lr=peak)
    best, best_state = result.distance_before, copy.deepcopy(student.state_dict())
    steps = cfg.epochs * math.ceil(len(train) / cfg.batch) if cfg.epochs else None
    done, scale = 0, 1.0

    def progress() -> float:  # the share of the run behind us: by steps, or by time when the time ends first
        by_time = (time.perf_counter() - t0) / (cfg.minutes * 60) if cfg.minutes else 0.0
        return max(done / steps if steps else 0.0, by_time)

    def rate() -> float:
        nonlocal done
        done += 1
        return scale * cfg.lr_at(progress(), peak)

    result.stopped = f"{cfg.epochs} epochs done" if cfg.epochs else f"{cfg.minutes:g} minutes used"
    while (cfg.epochs is None or epoch < cfg.epochs) and time.perf_counter() < deadline:
        epoch += 1
        train_loss = _steps(student, teacher, caps, loss, opt, train, cfg, gen, rate,
                               stop=lambda: time.perf_counter() >= deadline)
        row = EpochRow(epoch, train_loss, _distance(student, teacher, caps, loss, held, cfg.batch),
                       time.perf_counter() - t0)
        result.rows.append(row)
        if row.distance < best:
            best, best_state, result.best_epoch = row.distance, copy.deepcopy(student.state_dict()), epoch
        elif row.distance > best * (1 + cfg.backoff):  # drifting away: back to the best, at half the rate
            student.load_state_dict(best_state)
            opt = torch.optim.Adam(params, lr=peak)
            scale, result.backoffs = scale / 2, result.backoffs + 1
            if scale < 1 / 16:
                result.stopped = (f"the held-back distance rose after {result.backoffs} back-offs (rate down to "
                                  f"{scale * peak:.2g})")
        if on_epoch is not None:
            on_epoch(result)
        if scale < 1 / 16:
            break
    student.load_state_dict(best_state)


__all__ = ["EpochRow", "HeadLoss", "RecoverConfig", "RecoverResult", "augment", "check_heads", "recover"]
