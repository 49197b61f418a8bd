"""The training criteria, each its own module returning named terms and their weights (``weight_dict``):
:class:`OadCriterion` (OadTR, TRN, the linear floor), :class:`MiniROADCriterion`, :class:`LSTRCriterion`
(LSTR, TeSTra), :class:`CMeRTCriterion`. Every one is called ``criterion(logits, future_logits, target, future_target)`` with the
outputs of the model's ``training_logits`` and returns a dict with the training ``loss``.

OadTR/TRN: 
Soft-target cross entropy over the non-ignored columns (log-softmax over columns ``0..C-1`` except
``ignore_index``), averaged over the samples whose target is not the ignore class. A sample is left out
when its ignore (Ambiguous) entry is exactly 1, the reference's rule, also for soft or multi-label
targets: a row with Ambiguous 1 and another label is left out, a soft row with Ambiguous 0.5 is kept
(its Ambiguous column is dropped from the softmax like every row's). The reference
(OadTR ``SetCriterion.loss_labels``) also averages over all-zero target rows; here a row with no label at
all (a future step past the end of a video, or a padded position) is excluded as well, since it carries
no supervision. Weights follow the reference: current 1.0, future 0.5 for OadTR; TRN sums both with 1.0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int | None) -> Tensor:
    """Mean soft-target cross entropy over valid rows.

    Args:
        logits: ``(..., C)`` raw scores.
        target: ``(..., C)`` one-hot or soft targets; rows that are all zero carry no label.
        ignore_index: class whose rows (entry exactly 1) are excluded and whose column is left out of the softmax.

    Returns:
        Scalar loss (0 with a gradient path when no row is valid).
    """
    C = logits.shape[-1]
    logits = logits.reshape(-1, C).float()  # (..., C) -> (N, C)
    target = target.reshape(-1, C).float()
    valid = target.sum(dim=1) > 0
    if ignore_index is not None:
        valid &= target[:, ignore_index] != 1  # the reference's rule: an Ambiguous entry of exactly 1
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


# --- MiniROAD ----------------------------------------------------------------------------------------


def l2_soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Per-row soft cross entropy with L2-normalised targets (the reference's ``mlce_loss``, unreduced).

    Args:
        logits: ``(B, C)`` raw scores.
        target: ``(B, C)`` one-hot or multi-hot targets; an all-zero row gives 0.

    Returns:
        ``(B,)`` losses, in float32 (or float64 for float64 inputs).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    t = F.normalize(target.to(dtype), dim=1)  # t / max(||t||_2, 1e-12), as the reference
    return -(t * torch.log_softmax(logits.to(dtype), dim=1)).sum(dim=1)


class MiniROADCriterion(nn.Module):
    """Last-step soft cross entropy with L2-normalised targets, mean over the batch.

    The MiniROAD training criterion: the reference ``OadLoss`` ("NONUNIFORM").

    Reference: jbistanbul/MiniROAD, ``criterions/loss.py`` (An et al., ICCV 2023). Only the last step of each
    training window is supervised, with the soft cross entropy ``-sum_c t_c log_softmax(z)_c`` where ``t`` is
    the target row divided by its L2 norm (``F.normalize``), not by its sum (the reference's quirk 3): a
    one-hot row gives the ordinary cross entropy, a row with ``k`` labels weighs each of them ``1/sqrt(k)``
    (a total weight of ``sqrt(k)``, not 1), and an all-zero row gives 0 but still counts in the mean. Nothing
    is ignored: Background and Ambiguous are trained as classes. Mean over the batch.

    Unlike :class:`oad.losses.OadCriterion` there is no ignore class, no removal of unlabelled rows and no
    future term: MiniROAD does not anticipate, so the future arguments are accepted and ignored.

    Attributes:
        weight_dict: ``{'current': 1.0}``, the weight of each named term in ``loss``.
    """

    def __init__(self, ignore_index: int | None = None) -> None:
        super().__init__()
        # Accepted like every criterion's, and not used: the reference trains Ambiguous as a class.
        self.ignore_index = ignore_index
        self.weight_dict = {"current": 1.0}

    @staticmethod
    def per_sample(logits: Tensor, target: Tensor) -> Tensor:
        """``(B,)`` losses of the last step of each window (the reference's ``mlce_loss`` before its mean).

        Args:
            logits: ``(B, C)`` logits of the last step of each window, or ``(B, T, C)`` (the last step is
                taken).
            target: ``(B, C)`` or ``(B, T, C)`` targets, likewise.
        """
        if logits.dim() == 3:
            logits = logits[:, -1]  # (B, T, C) -> (B, C)
        if target.dim() == 3:
            target = target[:, -1]  # (B, T, C) -> (B, C)
        return l2_soft_cross_entropy(logits, target)

    def forward(
        self,
        logits: Tensor,
        future_logits: Tensor | None,
        target: Tensor,
        future_target: Tensor | None,
    ) -> dict[str, Tensor]:
        """The reference ``OadLoss.end_loss``.

        Args:
            logits: ``(B, C)`` logits of the last step of each window, or ``(B, T, C)`` (the last step is
                taken).
            future_logits: ignored (MiniROAD has no anticipation; ``(B, 0, C)`` from the model).
            target: ``(B, C)`` or ``(B, T, C)`` targets, likewise.
            future_target: ignored.

        Returns:
            ``{'current': mean loss, 'loss': the weighted sum used for training}`` (scalars; the unreduced
            losses are :meth:`per_sample`).
        """
        current = self.per_sample(logits, target).mean()
        return {"current": current, "loss": self.weight_dict["current"] * current}


# --- LSTR, TeSTra -----------------------------------------------------------------------------------


def multi_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int | None) -> Tensor:
    """Reference MCE of ``logits``/``target`` ``(..., C)``; 0 (with a gradient path) when no row counts."""
    C = logits.shape[-1]
    logits = logits.reshape(-1, C).float()  # (..., C) -> (R, C)
    target = target.reshape(-1, C).float()
    if ignore_index is None:
        keep = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    else:
        keep = target[:, ignore_index] != 1
        cols = [i for i in range(C) if i != ignore_index]
        logits, target = logits[:, cols], target[:, cols]
    per_row = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1)  # (R,)
    per_row = torch.where(keep, per_row, torch.zeros_like(per_row))
    return per_row.sum() / keep.sum().clamp(min=1)


class LSTRCriterion(nn.Module):
    """MCE on every work-window chunk (LSTR and TeSTra have no future outputs to supervise).

    The LSTR/TeSTra training criterion: the reference ``MultipCrossEntropyLoss`` ("MCE").

    Every chunk of a work window is supervised. Per chunk: log-softmax over the columns other than
    ``ignore_index`` (THUMOS: Ambiguous, 21; TVSeries: None, all columns) and ``-sum_c t_c log p_c``; the loss is
    the mean over the chunks whose target is not Ambiguous (``target[..., ignore_index] != 1``; chunks without
    any label still count, as in the reference). One difference: a batch whose chunks are all Ambiguous gives
    0 with a gradient path, where the reference LSTR gives NaN (the mean of an empty tensor; TeSTra skips it).

    Args:
        ignore_index: Ambiguous class (21 for THUMOS), or None (TVSeries: softmax over all columns).
    """

    def __init__(self, ignore_index: int | None = 21):
        super().__init__()
        self.ignore_index = ignore_index
        self.weight_dict = {"current": 1.0}

    def forward(self, logits: Tensor, future_logits: Tensor | None, target: Tensor,
                future_target: Tensor | None) -> dict[str, Tensor]:
        """``logits``/``target`` ``(B, W, C)`` -> ``{'current', 'loss'}``; the future arguments are ignored."""
        current = multi_cross_entropy(logits, target, self.ignore_index)
        return {"current": current, "loss": self.weight_dict["current"] * current}


# --- CMeRT --------------------------------------------------------------------------------------------


class CMeRTCriterion(nn.Module):
    """CMeRT's training loss (reference ``main.py``, ``S1_W``/``S2_W``/``F_W``): MCE on every pass over the
    work and anticipation rows, the first pass weighted ``first_weight`` (0.1), each refined pass
    ``refined_weight`` (1.0), and MCE on the future head weighted ``future_weight`` (0.5).

    Each MCE is :func:`multi_cross_entropy` (the reference ``MultipCrossEntropyLoss``): the work and
    anticipation rows of a pass form one mean, as in the reference, which concatenates their targets.

    Args:
        first_weight: weight of the first pass (reference ``S1_W``).
        refined_weight: weight of each refinement pass (``S2_W``).
        future_weight: weight of the future head (``F_W``).
        ignore_index: Ambiguous class (21 for THUMOS), or None.
    """

    def __init__(self, first_weight: float = 0.1, refined_weight: float = 1.0, future_weight: float = 0.5,
                 ignore_index: int | None = 21):
        super().__init__()
        self.ignore_index = ignore_index
        self.weight_dict = {"first": float(first_weight), "refined": float(refined_weight),
                            "future": float(future_weight)}

    def forward(self, logits: Tensor, future_logits: Tensor, target: Tensor,
                future_target: Tensor) -> dict[str, Tensor]:
        """``logits (B, P, W + A, C)`` (passes: first, refined...), ``target (B, W + A, C)``,
        ``future_logits``/``future_target (B, F, C)`` -> ``{'first', 'refined', 'future', 'loss'}``."""
        ii = self.ignore_index
        terms = {
            "first": multi_cross_entropy(logits[:, 0], target, ii),
            "refined": sum(multi_cross_entropy(logits[:, p], target, ii) for p in range(1, logits.shape[1])),
            "future": multi_cross_entropy(future_logits, future_target, ii),
        }
        terms["loss"] = sum(self.weight_dict[k] * v for k, v in terms.items())
        return terms
