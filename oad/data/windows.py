"""Training windows and whole-video items over per-chunk features.

``WindowDataset`` keeps only ``(video, end)`` index pairs and slices the per-video arrays when a sample
is drawn, so memory holds the features once (memory-mapped arrays stay on disk). A window ends at chunk
``t = end - 1`` and covers ``end - L .. end - 1``; positions before the start of the video are zero
padded on the left and masked (``mask`` False), so the first ``L - 1`` chunks of every video are trained
and scored too.

Two supervision modes:

- ``dense=False`` (OadTR): one window per chunk (stride 1); target = label of the last chunk, future
  targets = labels of the next ``Q`` chunks (``t + future_offset + j``). Windows whose current target
  has an ignore-class (Ambiguous) entry of exactly 1 are dropped, the reference's rule, also for soft
  or multi-label targets (a soft Ambiguous entry below 1 keeps the window).
- ``dense=True`` (TRN): non-overlapping windows with a random per-video offset redrawn each epoch
  (``set_epoch``); every step of the window is supervised, with its own ``Q`` future targets. The
  window count per video is fixed (the last window is clipped to the video's end and may repeat).

A batch is a dict (see ``Batch``).
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from oad.data.base import Video


class Batch(TypedDict, total=False):
    """A collated batch. ``B`` batch, ``L`` window, ``D`` in_dim, ``C`` classes, ``Q`` future steps.

    features: (B, L, D) float32, left-padded with zeros.
    mask: (B, L) bool, True on real chunks.
    target: (B, C) current-chunk targets, or (B, L, C) in dense mode (zeros at padded positions).
    future_target: (B, Q, C), or (B, L, Q, C) in dense mode; rows past the end of a video are zeros.
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


class WindowDataset(Dataset):
    """Windows of ``window`` chunks over a list of videos.

    Args:
        videos: the split's videos.
        window: window length ``L``.
        num_queries: number of future targets ``Q``.
        future_offset: future step ``j`` targets chunk ``t + future_offset + j`` (1 for OadTR, 0 for TRN).
        dense: TRN-style dense supervision (see module docstring).
        ignore_index: class whose current-chunk windows are dropped (non-dense mode), or None.
        drop_ignored: drop windows whose current label is ``ignore_index`` (training).
        seed: seed of the per-epoch random offsets (dense mode, and ``stride > 1``).
        stride: non-dense mode: a window ends every ``stride`` chunks, from a random offset in
            ``0..stride-1`` per video redrawn every epoch (``set_epoch``); 1: at every chunk.
    """

    def __init__(
        self,
        videos: list[Video],
        window: int,
        num_queries: int,
        future_offset: int = 1,
        dense: bool = False,
        ignore_index: int | None = 21,
        drop_ignored: bool = True,
        seed: int = 0,
        stride: int = 1,
    ):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride
        self.videos = videos
        self.window, self.num_queries, self.future_offset = window, num_queries, future_offset
        self.dense, self.ignore_index, self.drop_ignored, self.seed = dense, ignore_index, drop_ignored, seed
        self.in_dim = videos[0].in_dim if videos else 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Rebuild the index (new random offsets in dense mode)."""
        pairs = []
        rng = np.random.default_rng((self.seed, epoch))
        for vi, v in enumerate(self.videos):
            T = v.num_chunks
            if self.dense:
                # The first window ends at `offset`, the next ones every L chunks, the last is clipped
                # to the end of the video. The count does not depend on the offset, so the dataset
                # length is the same every epoch (samplers, DDP) and every chunk is covered.
                offset = int(rng.integers(1, self.window + 1))
                count = -(-(T - 1) // self.window) + 1
                ends = np.minimum(offset + self.window * np.arange(count), T)
            else:
                first = int(rng.integers(0, self.stride)) if self.stride > 1 else 0
                ends = np.arange(first + 1, T + 1, self.stride)
                if self.drop_ignored and self.ignore_index is not None:
                    # the reference's rule: left out when the Ambiguous entry is 1 (soft/multi-label too)
                    ends = ends[v.targets[:, self.ignore_index] != 1]
            pairs.append(np.stack([np.full(len(ends), vi), ends], axis=1))
        self.index = np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        vi, end = (int(x) for x in self.index[i])
        v = self.videos[vi]
        L = self.window
        start = max(0, end - L)
        n = end - start
        feats = np.zeros((L, v.in_dim), dtype=np.float32)
        feats[L - n:] = v.features(start, end)
        mask = np.zeros(L, dtype=bool)
        mask[L - n:] = True
        if self.dense:
            t = np.arange(start, end)
            target = np.zeros((L, v.targets.shape[1]), dtype=np.float32)
            target[L - n:] = v.targets[start:end]
            fut = np.zeros((L, self.num_queries, v.targets.shape[1]), dtype=np.float32)
            fut[L - n:] = future_targets(v.targets, t, self.num_queries, self.future_offset)
        else:
            target = np.asarray(v.targets[end - 1], dtype=np.float32)
            fut = future_targets(v.targets, np.array([end - 1]), self.num_queries, self.future_offset)[0]
        return {
            "features": torch.from_numpy(feats),
            "mask": torch.from_numpy(mask),
            "target": torch.from_numpy(target),
            "future_target": torch.from_numpy(fut),
            "video": torch.tensor(vi),
            "end": torch.tensor(end),
        }


class VideoDataset(Dataset):
    """Whole videos, one item each, for online scoring of every chunk (validation and test).

    An item is ``{'video': index, 'name': str, 'features': (T, D), 'targets': (T, C)}``; collate with
    ``collate_videos`` (a batch is a list of such items).
    """

    def __init__(self, videos: list[Video]):
        self.videos = videos

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict:
        v = self.videos[i]
        return {
            "video": i,
            "name": v.name,
            "features": torch.from_numpy(v.features()),
            "targets": torch.from_numpy(np.asarray(v.targets, dtype=np.float32)),
        }


def collate_videos(items: list[dict]) -> list[dict]:
    """Keep whole-video items as a list (videos have different lengths)."""
    return items
