"""The in-memory form every data source is turned into, and what the training datasets share.

Readers of the public layouts (OadTR pickles, LSTR/TeSTra folders, TRN folders) and the built-in
synthetic generator all return ``list[Video]``; the training datasets, the evaluation and the streaming
runner only ever see this form. Streams may be ``np.memmap`` arrays: nothing here copies them.

Every training dataset (:mod:`oad.data.windows`, :mod:`oad.data.sequences`, :mod:`oad.data.memory`) is
an :class:`EpochIndex`: an index of ``(video, end)`` pairs redrawn every epoch, its items collated into
a :class:`Batch`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class Video:
    """One video as per-chunk arrays.

    Attributes:
        name: session name (unique within a split), e.g. ``video_test_0000004``.
        streams: one array per feature stream, each ``(T, d_k)``, in the model's input order (RGB first,
            then flow); the model input of chunk ``t`` is their concatenation on the last axis.
        targets: ``(T, C)`` float per-chunk targets (one-hot, or soft where a dataset has several labels).
        meta: free-form extras (fps, source files) for reports.
    """

    name: str
    streams: tuple[np.ndarray, ...]
    targets: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def num_chunks(self) -> int:
        return int(self.targets.shape[0])

    @property
    def in_dim(self) -> int:
        return int(sum(s.shape[1] for s in self.streams))

    def features(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """Concatenated features of chunks ``start..end-1`` as float32, ``(end - start, in_dim)``."""
        parts = [np.asarray(s[start:end], dtype=np.float32) for s in self.streams]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def stream_dims(videos: list[Video]) -> tuple[int, ...]:
    """Per-stream feature sizes, checked to be the same in every video."""
    if not videos:
        raise ValueError("no videos")
    dims = tuple(int(s.shape[1]) for s in videos[0].streams)
    for v in videos[1:]:
        d = tuple(int(s.shape[1]) for s in v.streams)
        if d != dims:
            raise ValueError(
                f"video {v.name!r}: feature sizes {d} differ from {dims} of video {videos[0].name!r}"
            )
    return dims


class Batch(TypedDict, total=False):
    """A collated training batch. ``B`` batch, ``L`` window, ``S`` supervised chunks, ``D`` in_dim,
    ``C`` classes, ``Q`` future steps.

    features: (B, L, D) float32, left-padded with zeros.
    mask: (B, L) bool, True on real chunks.
    target: (B, C) current-chunk targets (last-chunk windows), or (B, S, C) targets of the last ``S``
        positions (sequences, memory windows; zeros at padded positions).
    future_target: (B, Q, C) with a (B, C) target, or (B, S, Q, C) with a (B, S, C) one; rows past the end
        of a video are zeros.
    video: (B,) int64 index of the video in the dataset; end: (B,) int64 end (exclusive) of each window.
    long_features: (B, N, D) long-memory chunks (LSTR/TeSTra samples, :mod:`oad.data.memory`), and
    long_mask: (B, N) bool, True on real long-memory tokens; the work window is ``features`` (B, W, D).
    """

    features: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor
    future_target: torch.Tensor
    video: torch.Tensor
    end: torch.Tensor
    long_features: torch.Tensor
    long_mask: torch.Tensor


class EpochIndex(Dataset, ABC):
    """Training items addressed by ``(video, end)`` pairs, the pairs redrawn every epoch.

    ``index`` is an ``(N, 2)`` int64 array of ``(video, end)`` rows, the item's last chunk ``end - 1``.
    ``set_epoch(epoch)`` rebuilds it from :meth:`ends`, asking the videos in order with one generator
    seeded by ``(seed, epoch)``: the same items for the same seed and epoch, on every process and worker.
    An item is :meth:`item`'s tensors plus ``video`` and ``end``.

    Subclasses set their own attributes before calling ``super().__init__``, which builds epoch 0.

    Args:
        videos: the split's videos.
        seed: seed of the per-epoch random offsets.
    """

    def __init__(self, videos: list[Video], seed: int = 0):
        self.videos, self.seed = videos, seed
        self.set_epoch(0)

    @abstractmethod
    def ends(self, video: Video, rng: np.random.Generator) -> np.ndarray:
        """The item ends ``(n,)`` of one video in this epoch, drawing its random offsets from ``rng``."""

    @abstractmethod
    def item(self, video: Video, end: int) -> dict[str, torch.Tensor]:
        """The tensors of the item of ``video`` ending at ``end`` (exclusive)."""

    def set_epoch(self, epoch: int) -> None:
        """Rebuild the index for ``epoch`` (new random offsets); ``epoch`` is kept (``self.epoch``)."""
        self.epoch = epoch
        rng = np.random.default_rng((self.seed, epoch))
        pairs = []
        for vi, v in enumerate(self.videos):
            ends = self.ends(v, rng)
            pairs.append(np.stack([np.full(len(ends), vi), ends], axis=1))
        self.index = np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        vi, end = (int(x) for x in self.index[i])
        return {**self.item(self.videos[vi], end), "video": torch.tensor(vi), "end": torch.tensor(end)}


def padded_features(video: Video, end: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``length`` chunks ending at ``end`` (exclusive) as ``(length, D)`` float32 features and their
    ``(length,)`` mask; positions before the start of the video are zeros, masked (False)."""
    lo = max(0, end - length)  # first real chunk
    feats = np.zeros((length, video.in_dim), dtype=np.float32)
    feats[length - (end - lo):] = video.features(lo, end)
    mask = np.zeros(length, dtype=bool)
    mask[length - (end - lo):] = True
    return feats, mask


def future_targets(targets: np.ndarray, t: np.ndarray, num_queries: int, offset: int) -> np.ndarray:
    """Labels of chunks ``t + offset + j`` for ``j < Q``; zero rows past the end of the video.

    Args:
        targets: ``(T, C)`` per-chunk targets of one video.
        t: ``(N,)`` chunk indices.
    Returns:
        ``(N, Q, C)``.
    """
    T, C = targets.shape
    idx = t[:, None] + offset + np.arange(num_queries)[None, :]  # (N, Q)
    out = np.zeros((len(t), num_queries, C), dtype=np.float32)
    ok = idx < T
    out[ok] = targets[idx[ok]]
    return out
