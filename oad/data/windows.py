"""Last-chunk training windows, and whole-video items for validation and test.

``WindowDataset`` keeps only ``(video, end)`` index pairs (:class:`oad.data.base.EpochIndex`) and slices
the per-video arrays when a sample is drawn, so memory holds the features once (memory-mapped arrays stay
on disk). A window ends at chunk ``t = end - 1`` and covers ``end - L .. end - 1``; positions before the
start of the video are zero padded on the left and masked (``mask`` False), so the first ``L - 1`` chunks
of every video are trained and scored too. Target = label of the last chunk, future targets = labels of
the next ``Q`` chunks (``t + future_offset + j``).

A window ends at every chunk (OadTR), or every ``stride`` chunks from a random per-video offset redrawn
each epoch (MiniROAD). With ``drop_ignored``, windows whose current target has an ignore-class
(Ambiguous) entry of exactly 1 are dropped, the reference's rule, also for soft or multi-label targets
(a soft Ambiguous entry below 1 keeps the window).

Dense supervision (every step of a window supervised, TRN) is :class:`oad.data.sequences.SequenceDataset`
with no history. A batch is a dict (see :class:`oad.data.base.Batch`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from oad.data.base import EpochIndex, Video, future_targets, padded_features


class WindowDataset(EpochIndex):
    """Windows of ``window`` chunks over a list of videos, the last chunk supervised (module docstring).

    Args:
        videos: the split's videos.
        window: window length ``L``.
        num_queries: number of future targets ``Q``.
        future_offset: future step ``j`` targets chunk ``t + future_offset + j``.
        ignore_index: class whose current-chunk windows are dropped, or None.
        drop_ignored: drop windows whose current label is ``ignore_index`` (training).
        seed: seed of the per-epoch random offsets (``stride > 1``).
        stride: a window ends every ``stride`` chunks, from a random offset in ``0..stride-1`` per video
            redrawn every epoch (``set_epoch``); 1: at every chunk.
    """

    def __init__(
        self,
        videos: list[Video],
        window: int,
        num_queries: int,
        future_offset: int = 1,
        ignore_index: int | None = 21,
        drop_ignored: bool = True,
        seed: int = 0,
        stride: int = 1,
    ):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.window, self.num_queries, self.future_offset, self.stride = window, num_queries, future_offset, stride
        self.ignore_index, self.drop_ignored = ignore_index, drop_ignored
        super().__init__(videos, seed)

    def ends(self, video: Video, rng: np.random.Generator) -> np.ndarray:
        first = int(rng.integers(0, self.stride)) if self.stride > 1 else 0
        ends = np.arange(first + 1, video.num_chunks + 1, self.stride)
        if self.drop_ignored and self.ignore_index is not None:
            # the reference's rule: left out when the Ambiguous entry is 1 (soft/multi-label too)
            ends = ends[video.targets[ends - 1, self.ignore_index] != 1]
        return ends

    def item(self, video: Video, end: int) -> dict[str, torch.Tensor]:
        feats, mask = padded_features(video, end, self.window)
        target = np.asarray(video.targets[end - 1], dtype=np.float32)
        fut = future_targets(video.targets, np.array([end - 1]), self.num_queries, self.future_offset)[0]
        return {
            "features": torch.from_numpy(feats),
            "mask": torch.from_numpy(mask),
            "target": torch.from_numpy(target),
            "future_target": torch.from_numpy(fut),
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
