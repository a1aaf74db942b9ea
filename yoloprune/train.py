"""Training through the Ultralytics trainer: baselines from a yaml, fine-tuning a pruned model in place, and
sparsity training for network slimming.

Ultralytics' trainer rebuilds its model from the yaml and copies over only shape-matching weights, which would
undo pruning. ``PrunedDetectionTrainer`` instead hands the trainer the pruned model from the checkpoint file
itself. For multi-GPU runs, Ultralytics' DDP launcher pickles the trainer's class, arguments, model and callbacks
(cloudpickle) and each worker rebuilds the trainer from them: the pruned module itself travels, settings that are
not Ultralytics arguments (the slimming penalty) travel as attributes of the class, and callbacks are added once.
``SparseDetectionTrainer`` adds the slimming penalty between gradient clipping and the optimizer step, through a
step pre-hook on the trainer's own optimizer (a torch API); nothing in Ultralytics is patched or copied.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from ultralytics.models.yolo.classify import ClassificationTrainer
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.torch_utils import unwrap_model

from yoloprune import slimming, sources
from yoloprune.atomic import atomic_write
from yoloprune.data import load_data
from yoloprune.defaults import DISTILL_WEIGHT
from yoloprune.errors import ConfigError
from yoloprune.reconstruct import fit_linear
from yoloprune.sources import as_dict, load_model, recorded_source, save_checkpoint
from yoloprune.sources.ultralytics import YOLO

# Fine-tuning a trained (pruned) model: a tenth of the from-scratch SGD rate and no warm-up. Ultralytics' default
# warm-up starts biases at lr 0.1, and its "auto" optimizer ignores lr0; both would first wreck what pruning kept.
FINETUNE_DEFAULTS = {"optimizer": "SGD", "lr0": 0.002, "lrf": 0.1, "momentum": 0.937, "warmup_epochs": 0.0,
                     "close_mosaic": 0}
PROJECTOR_IMAGES = 16  # calibration images on which distillation projectors are fitted


@dataclass
class TrainConfig:
    """One training run. ``model`` is a yaml (from scratch) or a checkpoint (its architecture is kept)."""

    model: str
    data: str
    out: str
    epochs: int = 50
    imgsz: int = 320
    batch: int = 16
    workers: int = 2
    lr0: float | None = None
    device: str = "cpu"
    seed: int = 0
    patience: int = 100
    time: float | None = None  # hours; overrides epochs and anneals the LR schedule to fit (Ultralytics `time=`)
    project: str | None = None  # run folder parent (default: runs/ in the working directory, as Ultralytics)
    name: str | None = None  # run folder name (default: the kind of run, numbered if taken: finetune, finetune2, ...)
    finetune: bool = False  # use FINETUNE_DEFAULTS (explicit options still win)
    sr: float = 0.0  # network slimming: L1 strength on prunable BN gammas (0: plain training)
    sr_decay: bool = False  # decay sr linearly to 10% over the run
    teacher: str | None = None  # knowledge distillation from this checkpoint (Ultralytics' distill_model)
    dis: float | None = None  # distillation loss weight (DISTILL_WEIGHT when None)
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.sr < 0:
            raise ConfigError(f"sr must be >= 0, got {self.sr}")
        if self.time is not None and self.time <= 0:
            raise ConfigError(f"time must be > 0 hours, got {self.time}")
        if self.dis is not None and self.dis < 0:
            raise ConfigError(f"dis must be >= 0, got {self.dis}")

    def overrides(self) -> dict:
        o = dict(FINETUNE_DEFAULTS) if self.finetune else {}
        o.update({
            "data": str(Path(self.data).resolve()), "epochs": self.epochs, "imgsz": self.imgsz,
            "batch": self.batch, "workers": self.workers, "device": self.device, "seed": self.seed,
            "patience": self.patience, "plots": False, "verbose": False,
            "project": str(Path(self.project or "runs").resolve()),
            "name": self.name or ("train-sparse" if self.sr else "finetune" if self.finetune else "train"),
            "exist_ok": self.name is not None,
        })
        if self.lr0 is not None:
            o["lr0"] = self.lr0
        if self.time is not None:
            o["time"] = self.time
        if self.sr:
            o.update(sr=self.sr, sr_decay=self.sr_decay)
        if self.teacher:
            o["distill_model"] = str(Path(self.teacher).resolve())
            o["dis"] = DISTILL_WEIGHT if self.dis is None else self.dis
        return {**o, **self.extra}


class CheckpointModel:
    """Trainer mixin: the model is the checkpoint's own (pruned) module, every parameter trainable, not one rebuilt
    from its yaml (a yaml still builds a fresh model)."""

    def get_model(self, cfg=None, weights=None, verbose=True):
        if Path(str(self.args.model)).suffix in (".yaml", ".yml"):
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        model, _ = load_model(self.args.model)
        for p in model.parameters():
            p.requires_grad_(True)
        return model


class PrunedDetectionTrainer(CheckpointModel, DetectionTrainer):
    """DetectionTrainer whose model is the checkpoint's own (pruned) module, not one rebuilt from its yaml."""

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
        if not hasattr(model, "projector") or not hasattr(model, "teacher_model"):
            return
        from yoloprune.compensate import calibration_images

        images = calibration_images(self.args.data, self.args.imgsz, PROJECTOR_IMAGES)
        fit_projectors(model, images)
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
    base = sources.ultralytics.trainer_base(kind)
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
    own arguments they win, and are taken out before the trainer validates them. |gamma| statistics go into
    results.csv each epoch, and a before/after histogram of |gamma| is written to ``<run>/gamma_hist.png``.
    """

    sr: float = 1e-4
    sr_decay: bool = False

    @classmethod
    def configured(cls, sr: float, sr_decay: bool = False) -> type:
        """A subclass that carries the penalty. Ultralytics' DDP workers rebuild the trainer from its pickled class
        and its Ultralytics arguments only, so a setting held anywhere else would fall back to the default."""
        return type(cls.__name__, (cls,), {"sr": float(sr), "sr_decay": bool(sr_decay), "__module__": cls.__module__})

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
        self.bn_masks = slimming.penalised_bns(net)
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
        slimming.plot_gamma_histogram(self.gammas_before, slimming.gammas(self._reported(), self.bn_masks),
                                      Path(self.save_dir) / "gamma_hist.png", self.sr)

    def current_sr(self) -> float:
        if not self.sr_decay:
            return self.sr
        return self.sr * (1.0 - 0.9 * self.epoch / max(self.epochs - 1, 1))

    def save_metrics(self, metrics):
        stats = slimming.gamma_stats(self._reported(), self.bn_masks)
        super().save_metrics({**metrics, **stats.as_metrics(), "slim/sr": self.current_sr()})


def default_teacher(model: str) -> str | None:
    """The checkpoint a pruned model was pruned from, when its metadata names it and the file is unchanged."""
    if Path(model).suffix in (".yaml", ".yml"):
        return None
    _, ckpt = load_model(model)
    src = recorded_source(ckpt)
    return str(src) if src is not None else None


def _source_model(cfg: TrainConfig, spec) -> tuple[torch.nn.Module | None, dict]:
    """The model to train, loaded and checked before the trainer starts (bad checkpoints fail in one line)."""
    path = Path(cfg.model)
    if path.suffix in (".yaml", ".yml") and not (path.is_file() and sources.is_original_yaml(path)):
        return None, {}
    model, given = load_model(cfg.model)
    spec.check_model(model)
    return model, given


def _announce(trainer) -> None:
    print(f"run folder: {trainer.save_dir} (per-epoch results.csv and weights/ in it)", flush=True)


def _epoch_line(trainer) -> None:
    """One compact line per epoch: losses, val mAP50-95, time spent and left."""
    import time

    done, total = trainer.epoch + 1, trainer.epochs
    elapsed = time.time() - getattr(trainer, "train_time_start", time.time())
    losses = trainer.tloss if isinstance(trainer.tloss, dict) else {}
    name, _, key, _ = sources.ultralytics.TASK_METRICS.get(trainer.args.task, sources.ultralytics.TASK_METRICS["detect"])
    val = (trainer.metrics or {}).get(key)
    if done > total:  # Ultralytics' final validation of best.pt reports as one epoch past the end
        if val is not None:
            print(f"best.pt: val {name} {float(val):.4f}", flush=True)
        return
    print(f"epoch {done}/{total}  " + "  ".join(f"{k} {float(v):.4f}" for k, v in losses.items())
          + (f"  val {name} {float(val):.4f}" if val is not None else "")
          + f"  {elapsed / 60:.1f} min, ~{elapsed / done * max(total - done, 0) / 60:.1f} min left", flush=True)


def train(cfg: TrainConfig) -> Path:
    """Train and copy the best checkpoint to ``cfg.out`` atomically. Returns the output path."""
    cfg.validate()
    for split in ("train", "val"):  # broken data files fail here in one line, not deep inside the trainer
        spec = load_data(cfg.data, split)
    model, given = _source_model(cfg, spec)
    adapter = sources.adapter(model) if model is not None else sources.ultralytics
    own_trainer = adapter is not sources.ultralytics  # another source trains with its own trainer, run directly
    if cfg.teacher:
        if own_trainer:
            raise ConfigError("distillation (--teacher) is offered for Ultralytics models only; fine-tune without it")
        teacher, _ = load_model(cfg.teacher)
        spec.check_model(teacher)
    overrides = cfg.overrides()
    overrides["model"] = str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model
    base = SparseDetectionTrainer.configured(cfg.sr, cfg.sr_decay) if cfg.sr else PrunedDetectionTrainer
    if own_trainer:
        trainer = adapter.trainer_class(base)(overrides=overrides)
        trainer.add_callback("on_pretrain_routine_start", _announce)
        trainer.add_callback("on_fit_epoch_end", _epoch_line)
        trainer.train()
        save_dir = trainer.save_dir
    else:
        yolo = YOLO(cfg.model)
        yolo.add_callback("on_pretrain_routine_start", _announce)
        yolo.add_callback("on_fit_epoch_end", _epoch_line)
        if cfg.teacher and yolo.task == "classify":
            raise ConfigError("distillation (--teacher) is offered for detection-head models, not classifiers")
        yolo.train(trainer=trainer_class(yolo.task, base), **overrides)
        save_dir = yolo.trainer.save_dir
    # Sparsity training trades accuracy for small gammas on purpose: the trainer's best.pt (highest mAP) would be
    # its least sparse epoch, so the sparse model is the final one.
    chosen = Path(save_dir) / "weights" / ("last.pt" if cfg.sr else "best.pt")
    if own_trainer:
        trained = adapter.from_trainer_checkpoint(chosen)
        opt = {**as_dict(given.get("opt")), "imgsz": cfg.imgsz, "data": str(cfg.data), "epochs": cfg.epochs}
        return save_checkpoint(trained, cfg.out, {**given, "opt": opt}, {"trained": {"epochs": cfg.epochs}})
    if cfg.teacher:  # keep the student alone: no teacher, no projector, a plain detection model
        student, ckpt = load_model(chosen)
        ckpt["train_args"] = {k: v for k, v in as_dict(ckpt.get("train_args")).items() if k not in ("distill_model", "dis")}
        student.args = ckpt["train_args"]
        meta = {**(given.get("yoloprune") or {}), "distilled_from": str(Path(cfg.teacher).resolve())}
        return save_checkpoint(student, cfg.out, ckpt, meta)
    atomic_write(cfg.out, lambda tmp: shutil.copyfile(chosen, tmp))
    return Path(cfg.out)
