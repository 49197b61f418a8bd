"""Dense training sequences with their history: every chunk of a sequence supervised, as seen online.

A sample is ``seq_len`` consecutive supervised chunks preceded by ``context`` chunks of history that are
read (features) but not supervised. A sliding-window model whose output at chunk ``t`` depends on the
``R`` chunks before it (its receptive field: ``(num_layers + 1) * (window - 1)`` for OadTR-SW's
sliding-window encoder) then computes, for every supervised chunk, exactly what it computes
online: with ``context >= R`` no supervised chunk sees a history truncated by the cut of the sequence
(only by the start of its video, as online). Without the context the first ``R`` positions of every
sequence (half of a 2L sequence) would be trained on a history that never occurs at test time.

With ``context=0`` these are TRN's dense windows (every step supervised, with its own ``Q`` future
targets). Per video, non-overlapping supervised sequences from a random offset redrawn every epoch
(``set_epoch``); the first ends at ``offset`` in ``1..seq_len``, the next every ``seq_len`` chunks, the
last is clipped to the end of the video (it may repeat chunks), so the count per video does not depend
on the offset and every chunk is supervised once per epoch. Positions before the start of the video are
zero padded (``mask`` False, targets zero: unsupervised). Nothing is left out: Ambiguous chunks are
excluded by the criterion (:class:`oad.losses.OadCriterion`).

An item (collated into a :class:`oad.data.base.Batch`):
    ``features (context + seq_len, D)``, ``mask (context + seq_len,)``, ``target (seq_len, C)``,
    ``future_target (seq_len, Q, C)`` (chunk ``t + future_offset + j``; zeros past the video's end),
    ``video``, ``end`` (exclusive end of the supervised chunks).
The supervised chunks are the last ``seq_len`` feature rows: a model's ``training_logits`` scores the
last ``target.shape[1]`` positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from oad.data.base import EpochIndex, Video, future_targets, padded_features


def sequence_lengths(config: Mapping[str, Any]) -> tuple[int, int]:
    """``(seq_len, context)`` of a model config: ``seq_len`` (default ``2 * window``) and ``context``
    (default the receptive field ``(num_layers + 1) * (window - 1)``, num_layers defaulting to 3, or
    ``long_memory - 1`` where that is longer: a long memory of ``M`` chunks reads the ``M - 1`` before)."""
    window = int(config.get("window", 64))
    seq_len = config.get("seq_len")
    seq_len = 2 * window if seq_len is None else int(seq_len)
    context = config.get("context")
    if context is None:
        context = max((int(config.get("num_layers", 3)) + 1) * (window - 1), int(config.get("long_memory") or 0) - 1)
    if seq_len < 1 or int(context) < 0:
        raise ValueError(f"need seq_len >= 1 and context >= 0, got {seq_len}, {context}")
    return seq_len, int(context)


class SequenceDataset(EpochIndex):
    """Supervised sequences of ``seq_len`` chunks with ``context`` chunks of history (module docstring).

    Args:
        videos: the split's videos.
        seq_len: supervised chunks per sample.
        context: history chunks in front of them (features only).
        num_queries: future targets ``Q`` per chunk.
        future_offset: future step ``j`` of chunk ``t`` targets chunk ``t + future_offset + j``.
        seed: seed of the per-epoch offsets.
    """

    def __init__(self, videos: list[Video], seq_len: int, context: int, num_queries: int, future_offset: int = 1,
                 seed: int = 0):
        if seq_len < 1 or context < 0:
            raise ValueError(f"need seq_len >= 1 and context >= 0, got {seq_len}, {context}")
        self.seq_len, self.context = seq_len, context
        self.num_queries, self.future_offset = num_queries, future_offset
        super().__init__(videos, seed)

    def ends(self, video: Video, rng: np.random.Generator) -> np.ndarray:
        # The first sequence ends at `offset`, the next ones every S chunks, the last is clipped to the end
        # of the video. The count does not depend on the offset, so the dataset length is the same every
        # epoch (samplers, DDP) and every chunk is covered.
        S, T = self.seq_len, video.num_chunks
        offset = int(rng.integers(1, S + 1))
        count = -(-(T - 1) // S) + 1
        return np.minimum(offset + S * np.arange(count), T)

    def item(self, video: Video, end: int) -> dict[str, torch.Tensor]:
        S = self.seq_len
        feats, mask = padded_features(video, end, S + self.context)
        C = video.targets.shape[1]
        s0 = max(0, end - S)  # first real supervised chunk
        k = end - s0
        target = np.zeros((S, C), dtype=np.float32)
        target[S - k:] = video.targets[s0:end]
        fut = np.zeros((S, self.num_queries, C), dtype=np.float32)
        fut[S - k:] = future_targets(video.targets, np.arange(s0, end), self.num_queries, self.future_offset)
        return {
            "features": torch.from_numpy(feats),
            "mask": torch.from_numpy(mask),
            "target": torch.from_numpy(target),
            "future_target": torch.from_numpy(fut),
        }
