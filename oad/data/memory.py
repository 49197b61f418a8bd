"""LSTR/TeSTra training samples: work windows of ``W`` chunks, each with its long memory of ``N`` chunks.

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
from torch.utils.data import Dataset

from oad.data.base import Video


def long_memory_sample(ws: int, long_memory: int, num_tokens: int, stretch: bool) -> tuple[np.ndarray, np.ndarray]:
    """Training long-memory indices ``(N,)`` of the window starting at ``ws`` and their validity ``(N,)``."""
    start = max(0, ws - long_memory) if stretch else ws - long_memory
    idx = np.clip(np.linspace(start, ws - 1, num_tokens).astype(np.int64), 0, None)  # truncation, as the reference
    zeros = np.flatnonzero(idx == 0)
    valid = np.ones(num_tokens, dtype=bool)
    if zeros.size:
        valid[: zeros[-1]] = False  # every slot before the last one holding chunk 0 is padding
    return idx, valid


class MemoryWindowDataset(Dataset):
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
        self.videos, self.W, self.L = videos, work_memory, long_memory
        self.N, self.stretch, self.seed = long_memory // long_stride, stretch, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """New random offsets (the references redraw them every epoch)."""
        rng = np.random.default_rng((self.seed, epoch))
        pairs = []
        for vi, v in enumerate(self.videos):
            s0 = int(rng.integers(0, self.W))
            starts = np.arange(s0, v.num_chunks - self.W, self.W)  # ws + W < T
            pairs.append(np.stack([np.full(len(starts), vi), starts], axis=1))
        self.index = np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        vi, ws = (int(x) for x in self.index[i])
        v = self.videos[vi]
        idx, valid = long_memory_sample(ws, self.L, self.N, self.stretch)
        lo = int(idx.min())
        long = v.features(lo, int(idx.max()) + 1)[idx - lo]  # (N, D)
        targets = np.asarray(v.targets[ws : ws + self.W], dtype=np.float32)  # (W, C)
        return {
            "features": torch.from_numpy(v.features(ws, ws + self.W)),
            "mask": torch.ones(self.W, dtype=torch.bool),
            "target": torch.from_numpy(targets),
            "future_target": torch.zeros(self.W, 0, targets.shape[1]),
            "long_features": torch.from_numpy(np.ascontiguousarray(long)),
            "long_mask": torch.from_numpy(valid),
            "video": torch.tensor(vi),
            "end": torch.tensor(ws + self.W),
        }
