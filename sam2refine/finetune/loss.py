"""Segmentation loss for fine-tuning SAM 2: focal (x20) + Dice + IoU-prediction MSE.

The weights are SAM's and SAM-Med2D's: focal and Dice supervise the mask logits, and the
IoU head learns to predict each candidate mask's real IoU (the session uses that estimate to
pick among SAM's multimask outputs). With several candidate masks only the best one (lowest
mask loss) is supervised, so the candidates can stay different, as in SAM and SAM 2.

SAM 2 also predicts whether the object is on the frame at all and, when it says no, replaces
the mask by a constant, which blocks every mask gradient. Like SAM 2's own training we
therefore add a binary cross-entropy on that object score (weight 1), and take the mask terms
only on frames where the object is present.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

FOCAL_WEIGHT, DICE_WEIGHT, IOU_WEIGHT, SCORE_WEIGHT = 20.0, 1.0, 1.0, 1.0


@dataclass
class LossTerms:
    """The weighted total (to back-propagate) and its unweighted parts (to log)."""

    total: torch.Tensor
    focal: torch.Tensor
    dice: torch.Tensor
    iou: torch.Tensor
    score: torch.Tensor


def sigmoid_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """(B, M, H, W) logits, (B, 1, H, W) target -> (B, M) mean focal loss per mask.

    Down-weights easy pixels so that the thin, hard boundary dominates the loss.
    """
    target = target.expand_as(logits).float()
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1.0 - prob) * (1.0 - target)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1.0 - alpha) * (1.0 - target))
    return loss.flatten(2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """(B, M, H, W) logits, (B, 1, H, W) target -> (B, M) soft Dice loss per mask."""
    prob = logits.sigmoid().flatten(2)
    target = target.expand_as(logits).float().flatten(2)
    inter = (prob * target).sum(-1)
    return 1.0 - (2.0 * inter + eps) / (prob.sum(-1) + target.sum(-1) + eps)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, M) IoU of each thresholded mask with the target (1 when both are empty)."""
    pred = (logits > 0).flatten(2)
    target = target.expand_as(logits).flatten(2).bool()
    inter = (pred & target).sum(-1).float()
    union = (pred | target).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))


def segmentation_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    object_score: torch.Tensor | None = None,
) -> LossTerms:
    """Loss of SAM's (B, M, H, W) candidate mask logits, (B, M) IoU predictions and (B, 1)
    object-score logits against a (B, 1, H, W) target.

    Focal and Dice are taken on the candidate with the lowest mask loss, the IoU MSE on all
    candidates, all three only where the target is not empty; averaged over the batch.
    """
    logits = logits.float()
    if target.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"Target {tuple(target.shape)} and logits {tuple(logits.shape)} differ.")
    present = target.flatten(1).any(dim=1).float()  # (B,)
    focal = sigmoid_focal_loss(logits, target)
    dice = dice_loss(logits, target)
    mask_loss = FOCAL_WEIGHT * focal + DICE_WEIGHT * dice
    best = mask_loss.argmin(dim=1, keepdim=True)
    iou = F.mse_loss(iou_pred.float(), mask_iou(logits.detach(), target), reduction="none")
    focal_best = (focal.gather(1, best)[:, 0] * present).mean()
    dice_best = (dice.gather(1, best)[:, 0] * present).mean()
    iou_mean = (iou.mean(dim=1) * present).mean()
    if object_score is None:
        score = logits.new_zeros(())
    else:
        score = F.binary_cross_entropy_with_logits(
            object_score.float().reshape(-1), present, reduction="mean"
        )
    total = (FOCAL_WEIGHT * focal_best + DICE_WEIGHT * dice_best + IOU_WEIGHT * iou_mean
             + SCORE_WEIGHT * score)
    return LossTerms(total, focal_best.detach(), dice_best.detach(), iou_mean.detach(),
                     score.detach())
