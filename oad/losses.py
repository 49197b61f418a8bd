"""The reference OadTR/TRN training criterion, as its own module returning named terms.

Soft-target cross entropy over the non-ignored columns (log-softmax over columns ``0..C-1`` except
``ignore_index``), averaged over the samples whose target is not the ignore class. The reference
(OadTR ``SetCriterion.loss_labels``) also averages over all-zero target rows; here a row with no label at
all (a future step past the end of a video, or a padded position) is excluded as well, since it carries
no supervision. Weights follow the reference: current 1.0, future 0.5 for OadTR; TRN sums both with 1.0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def soft_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int | None) -> Tensor:
    """Mean soft-target cross entropy over valid rows.

    Args:
        logits: ``(..., C)`` raw scores.
        target: ``(..., C)`` one-hot or soft targets; rows that are all zero carry no label.
        ignore_index: class whose rows are excluded and whose column is left out of the softmax.

    Returns:
        Scalar loss (0 with a gradient path when no row is valid).
    """
    C = logits.shape[-1]
    logits = logits.reshape(-1, C).float()  # (..., C) -> (N, C)
    target = target.reshape(-1, C).float()
    valid = target.sum(dim=1) > 0
    if ignore_index is not None:
        valid &= target[:, ignore_index] <= 0
        keep = [i for i in range(C) if i != ignore_index]
        logits, target = logits[:, keep], target[:, keep]
    per_row = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1)  # (N,)
    n = valid.sum()
    return (per_row * valid).sum() / n.clamp(min=1)


class OadCriterion(nn.Module):
    """Weighted sum of the current-chunk and future-chunk soft cross entropies.

    Args:
        current_weight: weight of the current-chunk term (reference 1.0).
        future_weight: weight of the future (decoder) term (OadTR 0.5, TRN 1.0).
        ignore_index: Ambiguous class index (21 for THUMOS), or None.
    """

    def __init__(self, current_weight: float = 1.0, future_weight: float = 0.5, ignore_index: int | None = 21):
        super().__init__()
        self.weight_dict = {"current": float(current_weight), "future": float(future_weight)}
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, future_logits: Tensor, target: Tensor, future_target: Tensor) -> dict[str, Tensor]:
        """Returns ``{'current', 'future', 'loss'}``; ``loss`` is the weighted sum used for training.

        Shapes: ``logits``/``target`` ``(B, C)`` or ``(B, L, C)``; ``future_*`` one more axis ``Q``.
        """
        terms = {
            "current": soft_cross_entropy(logits, target, self.ignore_index),
            "future": soft_cross_entropy(future_logits, future_target, self.ignore_index),
        }
        terms["loss"] = sum(self.weight_dict[k] * v for k, v in terms.items())
        return terms
