"""Online scores for every chunk of whole videos (the "all" protocol), computed offline in batches.

The score of chunk ``t`` uses chunks ``<= t`` only:

- window models (OadTR): chunk ``t`` is scored from the window ending at ``t``; the first ``L - 1``
  chunks get a left-padded, masked window. The input projection is applied once per chunk and the
  windows are gathered from the projected sequence, exactly as the streaming runner does it.
- recurrent models (TRN, anything with ``init_state``/``step``): the state is carried from the first
  chunk of the video; several videos are stepped together as one batch.

Probabilities are the softmax over the non-ignored columns (the ignore column gets probability 0), as
the reference scores them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def class_probabilities(logits: Tensor, ignore_index: int | None) -> Tensor:
    """Softmax over the classes other than ``ignore_index``; the ignore column is set to 0. ``(..., C)``."""
    logits = logits.float()
    if ignore_index is None:
        return torch.softmax(logits, dim=-1)
    masked = logits.clone()
    masked[..., ignore_index] = float("-inf")
    return torch.softmax(masked, dim=-1)


def is_recurrent(model: nn.Module) -> bool:
    return hasattr(model, "step") and hasattr(model, "init_state")


def window_indices(t: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Rows of a front-padded sequence forming the windows that end at chunks ``t``, and their masks.

    With ``window - 1`` padding rows in front, the window ending at chunk ``t`` is rows ``t .. t+L-1``.
    Returns ``(rows (N, L), mask (N, L))``, mask True on real chunks.
    """
    offs = torch.arange(window, device=t.device)
    rows = t[:, None] + offs[None, :]  # (N, L)
    mask = rows >= window - 1
    return rows, mask


@torch.no_grad()
def score_window_model(model: nn.Module, features: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Logits of every chunk of one video with a window model.

    Args:
        model: module with ``window``, ``embed`` and ``forward_embedded`` (OadTR).
        features: ``(T, in_dim)`` on the model's device.
        batch_size: windows per forward.
    Returns:
        ``logits (T, C)`` and ``future_logits (T, Q, C)``.
    """
    L = model.window
    T = features.shape[0]
    e = model.embed(features)  # (T, D) -> (T, d), once per chunk
    e = torch.cat((e.new_zeros(L - 1, e.shape[1]), e), dim=0)  # (L-1+T, d)
    logits, future = [], []
    for t0 in range(0, T, batch_size):
        t = torch.arange(t0, min(T, t0 + batch_size), device=features.device)
        rows, mask = window_indices(t, L)
        lg, fut = model.forward_embedded(e[rows], mask)  # (N, L, d) -> (N, C), (N, Q, C)
        logits.append(lg)
        future.append(fut)
    return torch.cat(logits), torch.cat(future)


@torch.no_grad()
def score_recurrent_model(model: nn.Module, features: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Logits of every chunk of several videos with a recurrent model, stepped together.

    Videos are right-padded to the longest; padded steps are dropped from the outputs.
    """
    lengths = [f.shape[0] for f in features]
    B, Tmax = len(features), max(lengths)
    x = features[0].new_zeros(B, Tmax, features[0].shape[1])
    for i, f in enumerate(features):
        x[i, : f.shape[0]] = f
    state = model.init_state(B, device=x.device, dtype=x.dtype)
    logits, future = [], []
    for t in range(Tmax):
        lg, fut, state = model.step(x[:, t], state)
        logits.append(lg)
        future.append(fut)
    lg = torch.stack(logits, dim=1)  # (B, Tmax, C)
    fut = torch.stack(future, dim=1)  # (B, Tmax, Q, C)
    return [(lg[i, :n], fut[i, :n]) for i, n in enumerate(lengths)]


@torch.no_grad()
def score_videos(
    model: nn.Module, features: Sequence[Tensor], batch_size: int = 256, recurrent_group: int = 32
) -> list[tuple[Tensor, Tensor]]:
    """Online logits ``(T, C)`` and future logits ``(T, Q, C)`` for each video, in input order."""
    was_training = model.training
    model.eval()
    try:
        if not is_recurrent(model):
            return [score_window_model(model, f, batch_size) for f in features]
        order = sorted(range(len(features)), key=lambda i: features[i].shape[0])
        out: list = [None] * len(features)
        for g in range(0, len(order), recurrent_group):
            idx = order[g : g + recurrent_group]
            for i, res in zip(idx, score_recurrent_model(model, [features[i] for i in idx])):
                out[i] = res
        return out
    finally:
        model.train(was_training)
