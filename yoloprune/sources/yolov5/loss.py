"""The anchor-based YOLOv5 detection loss, written from the published method, on Ultralytics' batch format.

Targets are matched to anchors whose width/height ratio is within ``anchor_t``, each also assigned to the two
nearest neighbouring cells; CIoU box loss, BCE objectness towards the IoU, BCE classes; objectness balanced per
level.
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.utils.metrics import bbox_iou

# The original repository's hyp.scratch-low.yaml loss gains, scaled in its train.py by layers, classes and image size
HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "anchor_t": 4.0}
_BALANCE = {3: [4.0, 1.0, 0.4]}
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]]).float() * 0.5  # this cell, then 4 neighbours


class YOLOv5Loss:
    """Anchor-based YOLOv5 detection loss on Ultralytics' batch format (``batch_idx``, ``cls``, ``bboxes``).

    Returns ``(loss * batch_size, {"box_loss", "obj_loss", "cls_loss"})`` as Ultralytics' criteria do.
    """

    def __init__(self, model: nn.Module) -> None:
        head = model.model[-1]
        self.nc, self.nl, self.na = head.nc, head.nl, head.na
        self.anchors = head.anchors  # (nl, na, 2), in units of each level's stride
        args = getattr(model, "args", None) or {}
        imgsz = int(args.get("imgsz", 640) if isinstance(args, dict) else getattr(args, "imgsz", 640))
        self.gain = {"box": HYP["box"] * 3 / self.nl, "cls": HYP["cls"] * self.nc / 80 * 3 / self.nl,
                     "obj": HYP["obj"] * (imgsz / 640) ** 2 * 3 / self.nl}
        self.balance = _BALANCE.get(self.nl, [4.0, 1.0, 0.25, 0.06, 0.02])
        self.bce = nn.BCEWithLogitsLoss()

    def __call__(self, preds, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = preds[1] if isinstance(preds, tuple) else preds  # eval mode returns (decoded, raw maps)
        dev = p[0].device
        targets = torch.cat((batch["batch_idx"].view(-1, 1), batch["cls"].view(-1, 1), batch["bboxes"]), 1).to(dev)
        anchors = self.anchors.to(dev)
        lbox, lobj, lcls = (torch.zeros(1, device=dev) for _ in range(3))
        for i, pi in enumerate(p):
            b, a, gj, gi, tbox, tcls = self._targets(targets, anchors[i], pi.shape)
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=dev)
            if b.numel():
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pbox = torch.cat((pxy.sigmoid() * 2 - 0.5, (pwh.sigmoid() * 2) ** 2 * anchors[i][a]), 1)
                iou = bbox_iou(pbox, tbox, CIoU=True).squeeze(-1)
                lbox += (1.0 - iou).mean()
                tobj[b, a, gj, gi] = iou.detach().clamp(0).to(tobj.dtype)
                if self.nc > 1:
                    t = torch.zeros_like(pcls)
                    t[range(b.numel()), tcls] = 1.0
                    lcls += self.bce(pcls, t)
            lobj += self.bce(pi[..., 4], tobj) * self.balance[i]
        loss = torch.cat((lbox * self.gain["box"], lobj * self.gain["obj"], lcls * self.gain["cls"]))
        bs = p[0].shape[0]
        return loss * bs, dict(zip(("box_loss", "obj_loss", "cls_loss"), loss.detach(), strict=True))

    def _targets(self, targets: torch.Tensor, anchors: torch.Tensor, shape: torch.Size):
        """Targets (image, class, cx, cy, w, h; normalised) matched to this level's anchors and cells."""
        ny, nx = shape[2], shape[3]
        scale = torch.tensor([1, 1, nx, ny, nx, ny], device=targets.device, dtype=targets.dtype)
        t = targets * scale  # boxes in grid units
        nt = t.shape[0]
        t = torch.cat((t.repeat(self.na, 1, 1),
                       torch.arange(self.na, device=t.device).view(-1, 1, 1).expand(self.na, nt, 1).to(t.dtype)), 2)
        r = t[..., 4:6] / anchors[:, None]
        t = t[torch.max(r, 1 / r).max(2)[0] < HYP["anchor_t"]]  # (m, 7): anchors in ratio
        gxy = t[:, 2:4]
        gxi = torch.tensor([nx, ny], device=t.device, dtype=t.dtype) - gxy
        j, k = ((gxy % 1 < 0.5) & (gxy > 1)).T
        left, m = ((gxi % 1 < 0.5) & (gxi > 1)).T
        use = torch.stack((torch.ones_like(j), j, k, left, m))
        t = t.repeat((5, 1, 1))[use]
        offsets = (torch.zeros_like(gxy)[None] + _OFFSETS.to(t)[:, None])[use]
        b, c, gxy, gwh, a = t[:, 0].long(), t[:, 1].long(), t[:, 2:4], t[:, 4:6], t[:, 6].long()
        gij = (gxy - offsets).long()
        gi, gj = gij[:, 0].clamp(0, nx - 1), gij[:, 1].clamp(0, ny - 1)
        return b, a, gj, gi, torch.cat((gxy - gij, gwh), 1), c
