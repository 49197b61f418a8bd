"""From a video file to per-chunk features: the extractor (decoding in :mod:`oad.video.decode`,
backbones in :mod:`oad.video.backbones`, flow in :mod:`oad.video.flow`).

A video is cut into chunks at a fixed rate (default 4 chunks per second, as LSTR/TeSTra use for
THUMOS'14), independent of the source frame rate: chunk ``i`` covers ``[i / rate, (i + 1) / rate)``
seconds of the stream's own timestamps, so variable-frame-rate files and rates that do not divide the
fps need no special case. The RGB stream is the middle frame of each chunk through an ImageNet
backbone (ResNet-50 pooled features, 2048-d, as in the TSN features of OadTR/TRN); the optional motion
stream is a stack of Farneback optical-flow fields of consecutive frames around the middle through
its own backbone whose first convolution takes ``2 * pairs`` channels (TSN's cross-modality init).

Differences from the reference pipelines (TSN via denseflow/mmaction2): those use TV-L1 flow, a
flow-trained network and the frames' index rather than their timestamps; here the flow is OpenCV's
Farneback and, without a flow-trained state dict, the flow network is ImageNet weights adapted to
flow input (a usable but weaker feature). No weights are ever downloaded: they come from a local
file or torchvision's local cache.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from oad.video.backbones import Backbone, build_backbone, normalize_rgb, resize_crop
from oad.video.decode import Chunk, VideoError, VideoReader, chunk_frames
from oad.video.flow import stacked_flow

log = logging.getLogger(__name__)


@dataclass
class ChunkFeatures:
    """Features of one chunk, as the online runner consumes them.

    Attributes:
        index: chunk number.
        start, end: seconds.
        rgb: ``(D_rgb,)`` float32.
        flow: ``(D_flow,)`` float32, or None without the motion stream.
    """

    index: int
    start: float
    end: float
    rgb: np.ndarray
    flow: np.ndarray | None = None

    @property
    def vector(self) -> np.ndarray:
        """The model input of this chunk: ``[rgb, flow]`` concatenated."""
        return self.rgb if self.flow is None else np.concatenate([self.rgb, self.flow])


def check_finite_features(features: dict, video: str | os.PathLike) -> None:
    """The whole-video features of :meth:`FeatureExtractor.__call__` must be finite (a backbone can give
    NaN/Inf, e.g. in bf16 or with broken weights); such a video is not written as a feature file.

    Raises:
        VideoError: naming the video, the stream and the first chunks with NaN/Inf.
    """
    for stream in ("rgb", "flow"):
        array = features.get(stream)
        if array is None:
            continue
        bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
        if len(bad):
            raise VideoError(f"video {video}: the {stream} backbone gave NaN/Inf features for {len(bad)} of "
                             f"{len(array)} chunks (first: {', '.join(map(str, bad[:5]))})")


class FeatureExtractor:
    """Video file -> per-chunk RGB (and optionally flow) features.

    Args:
        backbone: torchvision model name of the RGB stream.
        weights: ``'imagenet'``, a local state dict path or ``'random'`` (see :func:`build_backbone`).
        rate: chunks per second.
        flow: add the motion stream.
        flow_pairs: flow fields per chunk (``2 * flow_pairs`` input channels).
        flow_backbone: model name of the motion stream (default: ``backbone``).
        flow_weights: its weights (default: ``weights``, RGB weights adapted by cross-modality init).
        allow_random: permit random weights (every output then says ``weights: random``).
        device: where the backbones run.
        batch_chunks: chunks decoded and run through the backbone together.
        bf16: bfloat16 autocast for the backbones (features are returned as float32).
        resize, crop: shorter side resize then centre crop (ImageNet: 256, 224).
    """

    @classmethod
    def from_config(cls, cfg, rate: float | None = None) -> "FeatureExtractor":
        """Build from the ``backbone``/``flow_backbone`` blocks of ``configs/extract.yaml`` or
        ``configs/stream.yaml`` (``rate`` overrides ``cfg.rate``)."""
        bb, fl = cfg.backbone, cfg.flow_backbone
        return cls(
            bb.name,
            bb.weights,
            rate=cfg.rate if rate is None else rate,
            flow=cfg.flow,
            flow_pairs=fl.pairs,
            flow_backbone=fl.name,
            flow_weights=fl.weights,
            allow_random=bb.allow_random,
            device=cfg.device,
            batch_chunks=cfg.batch_chunks,
            bf16=cfg.bf16,
            resize=cfg.resize,
            crop=cfg.crop,
        )

    def __init__(
        self,
        backbone: str = "resnet50",
        weights: str | None = "imagenet",
        *,
        rate: float = 4.0,
        flow: bool = False,
        flow_pairs: int = 5,
        flow_backbone: str | None = None,
        flow_weights: str | None = None,
        allow_random: bool = False,
        device: str | torch.device = "cpu",
        batch_chunks: int = 16,
        bf16: bool = False,
        resize: int = 256,
        crop: int = 224,
    ):
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if flow and flow_pairs < 1:
            raise ValueError(f"flow_pairs must be >= 1, got {flow_pairs}")
        self.rate = float(rate)
        self.batch_chunks = int(batch_chunks)
        self.bf16 = bool(bf16)
        self.resize, self.crop = int(resize), int(crop)
        self.device = torch.device(device)
        self.rgb = build_backbone(backbone, weights, allow_random).to(self.device)
        self.flow_pairs = int(flow_pairs) if flow else 0
        self.flow: Backbone | None = None
        if flow:
            self.flow = build_backbone(
                flow_backbone or backbone,
                flow_weights if flow_weights is not None else weights,
                allow_random,
                in_channels=2 * self.flow_pairs,
            ).to(self.device)

    @property
    def random_weights(self) -> bool:
        return self.rgb.random or (self.flow is not None and self.flow.random)

    def describe(self) -> dict:
        """The settings that determine the features (recorded in every output)."""
        return {
            "rate": self.rate,
            "backbone": self.rgb.name,
            "weights": self.rgb.weights,
            "rgb_dim": self.rgb.dim,
            "flow": self.flow is not None,
            "flow_backbone": self.flow.name if self.flow is not None else None,
            "flow_weights": self.flow.weights if self.flow is not None else None,
            "flow_dim": self.flow.dim if self.flow is not None else None,
            "flow_pairs": self.flow_pairs if self.flow is not None else None,
            "random_weights": self.random_weights,
            "resize": self.resize,
            "crop": self.crop,
        }

    @torch.inference_mode()
    def _forward(self, net: Backbone, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            y = net(x)  # (B, C, h, w) -> (B, D)
        return y.float().cpu().numpy()

    def _features(self, chunks: list[Chunk]) -> list[ChunkFeatures]:
        frames = np.stack([c.frame for c in chunks])  # (B, H, W, 3)
        rgb = self._forward(self.rgb, normalize_rgb(resize_crop(frames, self.resize, self.crop)))
        flow = None
        if self.flow is not None:
            b, k1 = len(chunks), self.flow_pairs + 1
            motion = np.concatenate([c.motion for c in chunks])  # (B * (K+1), H, W, 3)
            small = resize_crop(motion, self.resize, self.crop).round().to(torch.uint8)
            small = small.permute(0, 2, 3, 1).numpy()  # (B*(K+1), 3, h, w) -> (B*(K+1), h, w, 3)
            small = small.reshape(b, k1, *small.shape[1:])  # (B*(K+1), h, w, 3) -> (B, K+1, h, w, 3)
            stacks = torch.from_numpy(np.stack([stacked_flow(s) for s in small]))  # (B, 2K, h, w)
            flow = self._forward(self.flow, stacks)
        return [
            ChunkFeatures(c.index, c.start, c.end, rgb[j], None if flow is None else flow[j])
            for j, c in enumerate(chunks)
        ]

    def featurize(self, chunks: list[Chunk]) -> list[ChunkFeatures]:
        """The features of decoded chunks (e.g. the chunks of several live streams), run through the
        backbone(s) as one batch; order kept.

        Raises:
            ValueError: a chunk without its motion frames while the extractor has a flow stream.
        """
        if not chunks:
            return []
        if self.flow is not None and any(c.motion is None for c in chunks):
            raise ValueError(f"the flow stream needs {self.flow_pairs + 1} motion frames per chunk; a chunk has none")
        return self._features(chunks)

    def iter_chunks(self, video: str | os.PathLike | VideoReader) -> Iterator[ChunkFeatures]:
        """Yield the features of each chunk in order, computed ``batch_chunks`` chunks at a time.

        Raises:
            VideoError: the video cannot be opened or decoded (the message names the file and chunks).
        """
        batch: list[Chunk] = []
        chunks = chunk_frames(video, self.rate, motion_pairs=self.flow_pairs, batch_chunks=self.batch_chunks)
        for chunk in chunks:
            batch.append(chunk)
            if len(batch) == self.batch_chunks:
                yield from self._features(batch)
                batch = []
        if batch:
            yield from self._features(batch)

    def __call__(self, video_path: str | os.PathLike) -> dict:
        """Features of a whole video.

        Returns:
            ``rgb``: ``(T, D_rgb)`` float32; ``flow``: ``(T, D_flow)`` float32 or None; ``timestamps``:
            ``(T, 2)`` chunk start/end seconds; ``meta``: fps, duration, num_frames and the settings of
            :meth:`describe` (``weights: 'random'`` where random).

        Raises:
            VideoError: the video cannot be opened or decoded.
        """
        vr = VideoReader(video_path)
        feats = list(self.iter_chunks(vr))
        rgb = np.stack([f.rgb for f in feats]).astype(np.float32)
        flow = np.stack([f.flow for f in feats]).astype(np.float32) if self.flow is not None else None
        timestamps = np.array([[f.start, f.end] for f in feats], dtype=np.float64)
        meta = {"fps": vr.fps, "duration": vr.duration, "num_frames": vr.num_frames, **self.describe()}
        return {"rgb": rgb, "flow": flow, "timestamps": timestamps, "meta": meta}
