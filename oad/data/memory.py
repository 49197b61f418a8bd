"""LSTR/TeSTra/CMeRT training samples: work windows of ``W`` chunks, each with its long memory of ``N`` chunks
(CMeRT: also context chunks, anticipation and future targets, :class:`ContextWindowDataset`).

As the references' training data layer (``perframe_data_layers.py``): per epoch and video a random
offset ``s0`` in ``[0, W)``, windows ``[ws, ws + W)`` at stride ``W`` with ``ws + W < T`` (a window ending
at the last chunk and the tail are dropped), every work chunk supervised. The long memory of a window
is ``N`` chunks at ``int(linspace(start, ws - 1, N))`` clipped at 0, with ``start = ws - L`` (TeSTra) or
``max(0, ws - L)`` (LSTR: a short history is stretched over the chunks there are, unlike at test time);
the padding mask hides every slot before the last one holding chunk 0.
"""

from __future__ import annotations

import numpy as np
import torch

from oad.data.base import EpochIndex, Video


def long_memory_sample(ws: int, long_memory: int, num_tokens: int, stretch: bool) -> tuple[np.ndarray, np.ndarray]:
    """Training long-memory indices ``(N,)`` of the window starting at ``ws`` and their validity ``(N,)``."""
    start = max(0, ws - long_memory) if stretch else ws - long_memory
    idx = np.clip(np.linspace(start, ws - 1, num_tokens).astype(np.int64), 0, None)  # truncation, as the reference
    zeros = np.flatnonzero(idx == 0)
    valid = np.ones(num_tokens, dtype=bool)
    if zeros.size:
        valid[: zeros[-1]] = False  # every slot before the last one holding chunk 0 is padding
    return idx, valid


class MemoryWindowDataset(EpochIndex):
    """Work windows with their long memories over a list of videos (see the module docstring).

    An item: ``features (W, D)`` work chunks, ``mask (W,)`` (all True), ``target (W, C)``,
    ``future_target (W, 0, C)``, ``long_features (N, D)``, ``long_mask (N,)`` True on real tokens,
    ``video``, ``end`` (``ws + W``).

    Args:
        videos: the split's videos.
        work_memory: ``W``.
        long_memory: ``L`` chunks spanned by the long memory.
        long_stride: ``L / N``.
        stretch: LSTR's rule for short histories (see the module docstring); False: TeSTra's.
        seed: seed of the per-epoch offsets.
    """

    def __init__(self, videos: list[Video], work_memory: int, long_memory: int, long_stride: int, stretch: bool,
                 seed: int = 0):
        if work_memory < 1 or long_memory < long_stride or long_memory % long_stride:
            raise ValueError(f"need work_memory >= 1 and long_memory a multiple of long_stride, got "
                             f"{work_memory}, {long_memory}, {long_stride}")
        self.W, self.L = work_memory, long_memory
        self.N, self.stretch = long_memory // long_stride, stretch
        super().__init__(videos, seed)

    def ends(self, video: Video, rng: np.random.Generator) -> np.ndarray:
        s0 = int(rng.integers(0, self.W))  # the references redraw it every epoch
        starts = np.arange(s0, video.num_chunks - self.W, self.W)  # ws + W < T
        return starts + self.W

    def item(self, video: Video, end: int) -> dict[str, torch.Tensor]:
        ws = end - self.W
        idx, valid = long_memory_sample(ws, self.L, self.N, self.stretch)
        lo = int(idx.min())
        long = video.features(lo, int(idx.max()) + 1)[idx - lo]  # (N, D)
        targets = np.asarray(video.targets[ws:end], dtype=np.float32)  # (W, C)
        return {
            "features": torch.from_numpy(video.features(ws, end)),
            "mask": torch.ones(self.W, dtype=torch.bool),
            "target": torch.from_numpy(targets),
            "future_target": torch.zeros(self.W, 0, targets.shape[1]),
            "long_features": torch.from_numpy(np.ascontiguousarray(long)),
            "long_mask": torch.from_numpy(valid),
        }


def window_tail(window_bound: str, anticipation: int) -> int:
    """Chunks a CMeRT training window leaves after itself: ``ws + W + tail < T``; ``2A`` under the
    reference's bound (``"reference"``: ``ws + W + A < T - A``), 0 under LSTR's (``"video"``)."""
    tails = {"reference": 2 * anticipation, "video": 0}
    if window_bound not in tails:
        raise ValueError(f"window_bound must be 'reference' or 'video', got {window_bound!r}")
    return tails[window_bound]


class ContextWindowDataset(MemoryWindowDataset):
    """CMeRT's training samples (reference ``CMeRTBatchDataLayer``): TeSTra's work windows and long memories
    with ``K`` context chunks before each window, ``A`` anticipation targets after it and ``F`` future targets.

    Per epoch and video a random offset ``s0`` in ``[0, W)``, windows ``[ws, ws + W)`` at stride ``W`` with
    ``ws + W + A < T - A`` (``window_bound="reference"``, the reference's bound) or ``ws + W < T`` (``"video"``,
    LSTR's). An item: ``features (K + W, D)`` the context chunks
    (chunk 0 before the start of the video) then the work chunks, ``mask (K + W,)`` (all True),
    ``target (W + A, C)`` of chunks ``ws .. ws + W + A - 1`` (the last chunk's past the end of the video),
    ``future_target (F, C)`` of chunks
    ``ws .. ws + F - 1`` (the last chunk's past the end of the video), ``long_features (N, D)`` and
    ``long_mask (N,)`` as TeSTra's (``linspace(ws - L, ws - 1, N)``).

    Args:
        videos: the split's videos.
        work_memory: ``W``.
        long_memory: ``L`` chunks spanned by the long memory.
        long_stride: ``L / N``.
        context: ``K``.
        anticipation: ``A``.
        future: ``F``.
        window_bound: ``"reference"`` or ``"video"`` (above).
        seed: seed of the per-epoch offsets.
    """

    def __init__(self, videos: list[Video], work_memory: int, long_memory: int, long_stride: int, context: int,
                 anticipation: int, future: int, window_bound: str = "reference", seed: int = 0):
        self.K, self.A, self.F = context, anticipation, future
        self.tail = window_tail(window_bound, anticipation)
        super().__init__(videos, work_memory, long_memory, long_stride, stretch=False, seed=seed)

    def ends(self, video: Video, rng: np.random.Generator) -> np.ndarray:
        s0 = int(rng.integers(0, self.W))
        starts = np.arange(s0, video.num_chunks - self.W - self.tail, self.W)
        return starts + self.W

    def item(self, video: Video, end: int) -> dict[str, torch.Tensor]:
        ws, T = end - self.W, video.num_chunks
        idx, valid = long_memory_sample(ws, self.L, self.N, self.stretch)
        lo = int(idx.min())
        long = video.features(lo, int(idx.max()) + 1)[idx - lo]  # (N, D)
        work = np.clip(np.arange(ws - self.K, end), 0, None)  # (K + W,)
        lo = int(work[0])
        future = np.minimum(np.arange(ws, ws + self.F), T - 1)  # (F,)
        targets = np.asarray(video.targets, dtype=np.float32)
        return {
            "features": torch.from_numpy(np.ascontiguousarray(video.features(lo, end)[work - lo])),
            "mask": torch.ones(self.K + self.W, dtype=torch.bool),
            "target": torch.from_numpy(targets[np.minimum(np.arange(ws, end + self.A), T - 1)]),
            "future_target": torch.from_numpy(targets[future]),
            "long_features": torch.from_numpy(np.ascontiguousarray(long)),
            "long_mask": torch.from_numpy(valid),
        }
