"""Training-time feature augmentation: one random offset per training sample (``VideoShift``).

Real feature releases differ from video to video by more than their actions: camera, scene and lighting
move a video's whole feature vector (a per-video offset). With a few hundred training videos a temporal
model can average its window, recognise a training video by that offset and memorise its class, which
does not carry over to new videos (docs/benchmarks.md sections 18 and 20). ``VideoShift`` adds to every training
sample one random vector, the same on all its chunks (work window, context and long memory), drawn per
dimension with the spread of the per-video mean features over the training videos times ``strength``:
a video's offset then says nothing about its class, while everything inside the window (what changes
from chunk to chunk) is untouched. Zero-padded positions (``mask`` False) stay zero, as at test time.
"""

from __future__ import annotations

import numpy as np
import torch

from oad.data.base import Batch, Video


def video_mean_spread(videos: list[Video]) -> np.ndarray:
    """Per dimension, the SD over ``videos`` of each video's mean feature, ``(in_dim,)`` float32."""
    if len(videos) < 2:
        raise ValueError(f"the spread of per-video means needs at least 2 videos, got {len(videos)}")
    means = np.stack([v.features().mean(axis=0, dtype=np.float64) for v in videos])
    return means.std(axis=0).astype(np.float32)


class VideoShift:
    """Adds ``strength * scale * N(0, 1)`` per sample and dimension to a training batch's features.

    Args:
        scale: ``(in_dim,)`` per-dimension SD of the offset (:func:`video_mean_spread` of the training
            videos).
        strength: multiplies ``scale``; 0 leaves batches unchanged.
    """

    def __init__(self, scale: np.ndarray | torch.Tensor, strength: float):
        if strength < 0:
            raise ValueError(f"video shift strength must be >= 0, got {strength}")
        self.scale = torch.as_tensor(np.asarray(scale, dtype=np.float32))
        if self.scale.ndim != 1:
            raise ValueError(f"video shift scale must be one value per dimension, got shape {tuple(self.scale.shape)}")
        self.strength = float(strength)

    def __call__(self, batch: Batch) -> Batch:
        if self.strength == 0:
            return batch
        feats = batch["features"]
        if feats.shape[-1] != self.scale.numel():
            raise ValueError(f"video shift: features have {feats.shape[-1]} dimensions, the scale {self.scale.numel()}")
        if self.scale.device != feats.device or self.scale.dtype != feats.dtype:
            self.scale = self.scale.to(feats.device, feats.dtype)  # once, not at every step
        scale = self.scale
        shift = torch.randn(feats.shape[0], feats.shape[-1], device=feats.device, dtype=feats.dtype)
        shift = shift * (self.strength * scale)
        out = dict(batch)
        out["features"] = _shifted(feats, shift, batch.get("mask"))
        if "long_features" in batch:
            # every long-memory token is a copy of a real chunk (padded slots repeat chunk 0 or are masked)
            out["long_features"] = _shifted(batch["long_features"], shift, None)
        return out  # type: ignore[return-value]


def _shifted(feats: torch.Tensor, shift: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``feats`` (B, L, D) plus ``shift`` (B, D) on every position where ``mask`` (B, L) is True."""
    add = shift[:, None, :]  # broadcast over the positions
    if mask is not None:
        add = add * mask[..., None].to(feats.dtype)
    return feats + add
