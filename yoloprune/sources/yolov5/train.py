"""Training and validation of original YOLOv5 models through Ultralytics' trainer and validator.

The original ``train.py`` rebuilds the model from its yaml and copies only shape-matching weights, so a pruned
checkpoint passed as ``--weights`` silently goes back to full width. Here Ultralytics' trainer supplies data
loading and augmentation, optimizer, EMA, AMP, checkpoints and validation; the model is the checkpoint's own
(pruned) module, and its criterion is the anchor-based YOLOv5 loss (``loss.py``, through ``YOLOv5Model``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from ultralytics.models.yolo.classify import ClassificationValidator
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.models.yolo.segment import SegmentationValidator

from yoloprune.errors import ConfigError
from yoloprune.sources.base import Adapter, TrainJob
from yoloprune.sources.ultralytics.model import as_dict
from yoloprune.sources.ultralytics.train import add_progress, base_trainer, chosen_weights
from yoloprune.sources.yolov5.checkpoint import from_trainer_checkpoint, load, save
from yoloprune.sources.yolov5.model import YOLOv5Model

NMS_IOU = 0.6  # the original repository's val.py default


class YOLOv5Validator(DetectionValidator):
    """Ultralytics' detection validator on YOLOv5's ``(B, N, 5 + nc)`` output: score = objectness x class."""

    def postprocess(self, preds):
        y = preds[0] if isinstance(preds, (tuple, list)) else preds
        scores = y[..., 5:] * y[..., 4:5]
        return super().postprocess(torch.cat((y[..., :4], scores), -1).transpose(1, 2))


class YOLOv5SegmentValidator(SegmentationValidator):
    """Ultralytics' segmentation validator on v7.0's ``(B, N, 5 + nc + nm)`` output and prototypes: score =
    objectness x class, masks from the same coefficients-times-prototypes product."""

    def postprocess(self, preds):
        y, proto = preds[0], preds[1]
        nc = self.nc if hasattr(self, "nc") else y.shape[-1] - 5 - proto.shape[1]
        scores = y[..., 5 : 5 + nc] * y[..., 4:5]
        return super().postprocess([torch.cat((y[..., :4], scores, y[..., 5 + nc :]), -1).transpose(1, 2), proto])


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class YOLOv5ClassifyValidator(ClassificationValidator):
    """Ultralytics' classification validator for YOLOv5 classifiers, which read ImageNet-normalised images (the
    original ``classify_transforms``); their logits rank the classes as probabilities would."""

    def preprocess(self, batch):
        batch = super().preprocess(batch)
        img = batch["img"]
        mean = torch.tensor(IMAGENET_MEAN, device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
        batch["img"] = (img - mean) / std
        return batch


VALIDATORS = {"detect": YOLOv5Validator, "segment": YOLOv5SegmentValidator, "classify": YOLOv5ClassifyValidator}


def trainer_class(base: type):
    """The trainer class for original YOLOv5 models, on ``base``: yoloprune's fine-tuning or sparsity trainer."""

    class YOLOv5Trainer(base):
        def setup_model(self):
            self.model = self.get_model()

        def get_model(self, cfg=None, weights=None, verbose=True):
            path = Path(str(self.args.model))
            model = YOLOv5Model(path, nc=self.data["nc"]) if path.suffix in (".yaml", ".yml") else load(path)[0]
            for p in model.parameters():
                p.requires_grad_(True)
            return model.train()

        def get_validator(self):
            args = copy.copy(self.args)
            args.iou = NMS_IOU
            return YOLOv5Validator(self.test_loader, save_dir=self.save_dir, args=args, _callbacks=self.callbacks)

    YOLOv5Trainer.__name__ = YOLOv5Trainer.__qualname__ = f"YOLOv5{base.__name__}"
    return YOLOv5Trainer


def run(job: TrainJob, hooks: Adapter) -> Path:
    """Train an original YOLOv5 model on its own trainer and write ``job.out`` in the original format, its
    ``opt`` recording the run's image size, data and epochs."""
    if job.teacher:
        raise ConfigError("distillation (--teacher) is offered for Ultralytics models only; fine-tune without it")
    trainer = trainer_class(base_trainer(job, hooks))(overrides=job.overrides)
    add_progress(trainer)
    trainer.train()
    trained = from_trainer_checkpoint(chosen_weights(trainer.save_dir, job))
    opt = {**as_dict(job.given.get("opt")), "imgsz": job.imgsz, "data": str(job.data), "epochs": job.epochs}
    return save(trained, job.out, {**job.given, "opt": opt}, {"trained": {"epochs": job.epochs}})
