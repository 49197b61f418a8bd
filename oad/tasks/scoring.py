"""Online scores of every chunk of whole videos (the "all" protocol), computed offline.

The score of chunk ``t`` uses chunks ``<= t`` only. Each model computes its own whole-video logits
(``forward_videos``, :mod:`oad.models.base`), the same function its online step computes chunk by
chunk; here they become probabilities: the softmax over the non-ignored columns (the ignore column
gets probability 0), as the references score them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from oad.models.base import class_probabilities

__all__ = ["class_probabilities", "score_videos"]


@torch.no_grad()
def score_videos(model: nn.Module, features: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Online logits ``(T, C)`` and future logits ``(T, Q, C)`` for each video, in input order (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        return model.forward_videos(list(features))
    finally:
        model.train(was_training)
