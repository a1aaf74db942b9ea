"""Training Ultralytics models with their own trainer, the model's (pruned) architecture kept.

Ultralytics' trainer rebuilds its model from the yaml and copies over only shape-matching weights, which would
undo pruning. ``PrunedDetectionTrainer`` instead hands the trainer the pruned model from the checkpoint file
itself. For multi-GPU runs, Ultralytics' DDP launcher pickles the trainer's class, arguments, model and callbacks
(cloudpickle) and each worker rebuilds the trainer from them: the pruned module itself travels, settings that are
not Ultralytics arguments (the slimming penalty, the projectors' images) travel as attributes of the class
(``configured``), and callbacks are added once. ``SparseDetectionTrainer`` adds the slimming penalty between
gradient clipping and the optimizer step, through a step pre-hook on the trainer's own optimizer (a torch API);
nothing in Ultralytics is patched or copied. The original-YOLOv5 adapter trains on these classes too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from ultralytics.models.yolo.classify import ClassificationTrainer
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.torch_utils import unwrap_model

from yoloprune.atomic import atomic_write
from yoloprune.defaults import TASK_METRICS
from yoloprune.engine import slimming
from yoloprune.engine.hooks import trace_model
from yoloprune.engine.reconstruct import fit_linear
from yoloprune.errors import ConfigError
from yoloprune.log import say
from yoloprune.sources.base import Adapter, TrainJob
from yoloprune.sources.ultralytics.model import VAL_KEYS, YOLO, as_dict, load_model, save_checkpoint, trainer_base


class CheckpointModel:
    """Trainer mixin: the model is the checkpoint's own (pruned) module, every parameter trainable, not one rebuilt
    from its yaml (a yaml still builds a fresh model). ``hooks``: the adapter of the model's source."""

    hooks: Adapter | None = None

    @classmethod
    def configured(cls, **settings) -> type:
        """A subclass that carries ``settings`` as class attributes. Ultralytics' DDP workers rebuild the trainer
        from its pickled class and its Ultralytics arguments only, so a setting held anywhere else would fall back
        to the default."""
        return type(cls.__name__, (cls,), {**settings, "__module__": cls.__module__})

    def get_model(self, cfg=None, weights=None, verbose=True):
        if Path(str(self.args.model)).suffix in (".yaml", ".yml"):
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        model, _ = load_model(self.args.model)
        for p in model.parameters():
            p.requires_grad_(True)
        return model


class PrunedDetectionTrainer(CheckpointModel, DetectionTrainer):
    """DetectionTrainer whose model is the checkpoint's own (pruned) module, not one rebuilt from its yaml.
    With a teacher (Ultralytics' ``distill_model``), the distillation projectors are fitted on
    ``projector_images`` before the first step."""

    projector_images: torch.Tensor | None = None

    def __init__(self, cfg=None, overrides=None, _callbacks=None):
        kwargs = {"cfg": cfg} if cfg is not None else {}
        super().__init__(overrides=overrides, _callbacks=_callbacks, **kwargs)
        self.add_callback_once("on_pretrain_routine_end", PrunedDetectionTrainer._start_projectors)

    def add_callback_once(self, event: str, fn) -> None:
        """A DDP worker's trainer is built with the launching trainer's callbacks, ours among them."""
        if fn not in self.callbacks[event]:
            self.add_callback(event, fn)

    def _start_projectors(self) -> None:
        """Distillation: fit the projectors on calibration images before the first step (see ``fit_projectors``)."""
        model = unwrap_model(self.model)
        if not hasattr(model, "projector") or not hasattr(model, "teacher_model") or self.projector_images is None:
            return
        fit_projectors(model, self.projector_images)
        if self.ema is not None and hasattr(self.ema.ema, "projector"):
            self.ema.ema.projector.load_state_dict(model.projector.state_dict())


@torch.no_grad()
def fit_projectors(dm, images: torch.Tensor) -> int:
    """Start each of Ultralytics' distillation projectors (conv 1x1, ReLU, conv 1x1: student neck feature -> teacher
    neck feature) where it maps the student's features onto the teacher's as well as a linear map can, fitted by
    least squares on ``images``, instead of at random. A random projector makes the feature loss huge and
    meaningless at first, and its gradients wreck what pruning and reconstruction kept. The first conv passes the
    student's channels through, shifted above zero so the ReLU keeps them; the second holds the fit.
    Returns the number of projectors fitted (one whose student is wider than its teacher is left as it is)."""
    pairs = list(zip(dm.feats_idx[:-1], dm.teacher_feats_idx[:-1], dm.projector, strict=True))
    got: dict = {}
    hooks = []
    for i, (s, t, _) in enumerate(pairs):
        for side, net, idx in (("s", dm.student_model, s), ("t", dm.teacher_model, t)):
            hooks.append(net.model[idx].register_forward_hook(
                lambda _m, _a, out, key=(side, i): got.__setitem__(key, out.detach())))
    modes = (dm.student_model.training, dm.teacher_model.training)
    device = next(dm.student_model.parameters()).device
    try:
        dm.student_model.eval()
        dm.teacher_model.eval()
        dm.student_model(images.to(device))
        dm.teacher_model(images.to(device))
    finally:
        for h in hooks:
            h.remove()
        dm.student_model.train(modes[0])
        dm.teacher_model.train(modes[1])
    done = 0
    for i, (_, _, proj) in enumerate(pairs):
        x = got[("s", i)].float().transpose(0, 1).flatten(1).T.cpu()  # (P, s)
        y = got[("t", i)].float().transpose(0, 1).flatten(1).T.cpu()  # (P, t)
        first, last = proj[0], proj[-1]
        if x.shape[1] > y.shape[1] or first.out_channels != y.shape[1]:
            continue
        shift = float((-x.min()).clamp_min(0)) + 0.1
        a, c = fit_linear(x + shift, y)
        s_dim = x.shape[1]
        first.weight.zero_()
        first.weight[:s_dim, :, 0, 0] = torch.eye(s_dim)
        first.bias.zero_()
        first.bias[:s_dim] = shift
        last.weight.zero_()
        last.weight[:, :s_dim, 0, 0] = a.T.to(last.weight)
        last.bias.copy_(c.to(last.bias))
        done += 1
    return done


class PrunedClassificationTrainer(CheckpointModel, ClassificationTrainer):
    """ClassificationTrainer whose model is the checkpoint's own (pruned) module, as PrunedDetectionTrainer."""


def trainer_class(kind: str, chosen: type | None = None) -> type:
    """The trainer for a model of task ``kind`` that keeps its architecture: ``chosen`` (PrunedDetectionTrainer, the
    default, or a configured SparseDetectionTrainer) over the task's own Ultralytics trainer (SegmentationTrainer,
    PoseTrainer, OBBTrainer), or PrunedClassificationTrainer (no sparsity training: its penalty rides on the
    detection trainer)."""
    chosen = chosen or PrunedDetectionTrainer
    sparse = issubclass(chosen, SparseDetectionTrainer)
    base = trainer_base(kind)
    if base is DetectionTrainer:
        return chosen
    if issubclass(base, DetectionTrainer):
        return type(chosen.__name__.replace("Detection", base.__name__.removesuffix("Trainer")), (chosen, base), {})
    if sparse:
        raise ConfigError(f"sparsity training (train-sparse) is offered for detection-head models, not {kind} models")
    return PrunedClassificationTrainer


class SparseDetectionTrainer(PrunedDetectionTrainer):
    """Sparsity training for network slimming: ``grad(gamma) += sr * sign(gamma)`` on prunable BN channels.

    ``sr`` and ``sr_decay`` are class attributes (see ``configured``); given in the overrides beside Ultralytics'
    own arguments they win, and are taken out before the trainer validates them. The penalised BatchNorms are those
    of prunable channels in the graph traced through ``hooks``. |gamma| statistics go into
    results.csv each epoch, and a before/after histogram of |gamma| is written to ``<run>/gamma_hist.png``.
    """

    sr: float = 1e-4
    sr_decay: bool = False

    def __init__(self, cfg=None, overrides=None, _callbacks=None):
        overrides = dict(overrides or {})
        self.sr = float(overrides.pop("sr", self.sr))
        self.sr_decay = bool(overrides.pop("sr_decay", self.sr_decay))
        self.bn_masks: dict = {}
        self.gammas_before = None
        kwargs = {"cfg": cfg} if cfg is not None else {}
        super().__init__(overrides=overrides, _callbacks=_callbacks, **kwargs)
        self.add_callback_once("on_pretrain_routine_end", SparseDetectionTrainer._start)
        self.add_callback_once("on_train_end", SparseDetectionTrainer._finish)

    def _start(self) -> None:
        net = unwrap_model(self.model)
        self.bn_masks = slimming.penalised_bns(net, trace_model(net, self.hooks))
        self.gammas_before = slimming.gammas(net, self.bn_masks)
        self.optimizer.register_step_pre_hook(self._penalise)

    def _penalise(self, _optimizer, _args, _kwargs) -> None:
        """Before each optimizer step, i.e. inside the trainer's own ``optimizer_step`` after it has unscaled the
        AMP gradients and clipped them to norm 10: Ultralytics' losses are summed over the batch, so clipping is
        usually active and would scale down a penalty added before it."""
        slimming.add_l1_subgradient(unwrap_model(self.model), self.bn_masks, self.current_sr())

    def _reported(self):
        """The model whose gammas are reported and saved: the EMA when there is one."""
        return self.ema.ema if self.ema else unwrap_model(self.model)

    def _finish(self) -> None:
        plot_gamma_histogram(self.gammas_before, slimming.gammas(self._reported(), self.bn_masks),
                                      Path(self.save_dir) / "gamma_hist.png", self.sr)

    def current_sr(self) -> float:
        if not self.sr_decay:
            return self.sr
        return self.sr * (1.0 - 0.9 * self.epoch / max(self.epochs - 1, 1))

    def save_metrics(self, metrics):
        stats = slimming.gamma_stats(self._reported(), self.bn_masks)
        super().save_metrics({**metrics, **stats.as_metrics(), "slim/sr": self.current_sr()})


def _announce(trainer) -> None:
    say(f"run folder: {trainer.save_dir} (per-epoch results.csv and weights/ in it)")


def _epoch_line(trainer) -> None:
    """One compact line per epoch: losses, val mAP50-95, time spent and left."""
    import time

    done, total = trainer.epoch + 1, trainer.epochs
    elapsed = time.time() - getattr(trainer, "train_time_start", time.time())
    losses = trainer.tloss if isinstance(trainer.tloss, dict) else {}
    kind = trainer.args.task if trainer.args.task in VAL_KEYS else "detect"
    name, key = TASK_METRICS[kind][0], VAL_KEYS[kind][0]
    val = (trainer.metrics or {}).get(key)
    if done > total:  # Ultralytics' final validation of best.pt reports as one epoch past the end
        if val is not None:
            say(f"best.pt: val {name} {float(val):.4f}")
        return
    say(f"epoch {done}/{total}  " + "  ".join(f"{k} {float(v):.4f}" for k, v in losses.items())
          + (f"  val {name} {float(val):.4f}" if val is not None else "")
          + f"  {elapsed / 60:.1f} min, ~{elapsed / done * max(total - done, 0) / 60:.1f} min left")

def base_trainer(job: TrainJob, hooks: Adapter) -> type:
    """yoloprune's trainer for ``job`` (sparsity training or fine-tuning) on the models of ``hooks``' source."""
    if job.sr:
        return SparseDetectionTrainer.configured(sr=float(job.sr), sr_decay=bool(job.sr_decay), hooks=hooks)
    return PrunedDetectionTrainer.configured(hooks=hooks, projector_images=job.projector_images)


def chosen_weights(save_dir: str | Path, job: TrainJob) -> Path:
    """The run's output: sparsity training trades accuracy for small gammas on purpose, so the trainer's best.pt
    (highest mAP) would be its least sparse epoch, and the sparse model is the final one."""
    return Path(save_dir) / "weights" / ("last.pt" if job.sr else "best.pt")


def add_progress(target) -> None:
    """The run folder once, then one line per epoch, on a trainer or a YOLO object."""
    target.add_callback("on_pretrain_routine_start", _announce)
    target.add_callback("on_fit_epoch_end", _epoch_line)


def run(job: TrainJob, hooks: Adapter) -> Path:
    """Train an Ultralytics model through its task's trainer and write ``job.out``: the trainer's best (last for
    sparsity training) checkpoint; a distilled run's student alone, without teacher or projectors."""
    yolo = YOLO(job.model)
    add_progress(yolo)
    if job.teacher and yolo.task == "classify":
        raise ConfigError("distillation (--teacher) is offered for detection-head models, not classifiers")
    yolo.train(trainer=trainer_class(yolo.task, base_trainer(job, hooks)), **job.overrides)
    chosen = chosen_weights(yolo.trainer.save_dir, job)
    if job.teacher:  # keep the student alone: no teacher, no projector, a plain detection model
        student, ckpt = load_model(chosen)
        ckpt["train_args"] = {k: v for k, v in as_dict(ckpt.get("train_args")).items() if k not in ("distill_model", "dis")}
        student.args = ckpt["train_args"]
        meta = {**(job.given.get("yoloprune") or {}), "distilled_from": str(Path(job.teacher).resolve())}
        return save_checkpoint(student, job.out, ckpt, meta)
    atomic_write(job.out, lambda tmp: shutil.copyfile(chosen, tmp))
    return Path(job.out)


def plot_gamma_histogram(before: torch.Tensor, after: torch.Tensor, path: str | Path, sr: float | str) -> Path:
    """Histogram of |gamma| before and after sparsity training, written atomically as PNG."""
    from matplotlib.figure import Figure  # an explicit figure: the caller's matplotlib backend is untouched

    hi = float(max(before.max() if before.numel() else 1.0, after.max() if after.numel() else 1.0))
    bins = torch.linspace(0, hi, 81).tolist()
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.hist(before.numpy(), bins=bins, alpha=0.6, label=f"before ({len(before)} channels)")
    ax.hist(after.numpy(), bins=bins, alpha=0.6, label="after sparsity training")
    ax.set_xlabel("|BN gamma| of prunable channels")
    ax.set_ylabel("channels")
    ax.set_yscale("log")
    ax.set_title(f"network slimming, sr={sr:g}" if isinstance(sr, (int, float)) else f"network slimming, sr {sr}")
    ax.legend()
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
