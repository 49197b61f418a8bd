"""From a video file to per-chunk features: decoding, chunking, backbones and the extractor.

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
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TSN feeds flow as images 128 + flow * 128 / 20 (clipped) normalised by mean 0.5, std 0.226 (the mean
# ImageNet std): in flow units that is flow / (40 * 0.226), clipped at +-20 pixels.
FLOW_BOUND = 20.0
FLOW_SCALE = 1.0 / (2 * FLOW_BOUND * float(np.mean(IMAGENET_STD)))
# A last partial chunk is kept unless it covers less than this fraction of a chunk (absorbs float error).
PARTIAL_CHUNK_TOL = 1e-3


class VideoError(ValueError):
    """A video that cannot be read: missing, unreadable, corrupt, truncated or without frames."""


# ---------------------------------------------------------------------------------------------------
# Decoding and chunking
# ---------------------------------------------------------------------------------------------------


def num_chunks_for(duration: float, rate: float) -> int:
    """Number of chunks of a stream of ``duration`` seconds at ``rate`` chunks per second.

    ``ceil(duration * rate)``: a last partial chunk is kept, so every frame belongs to a chunk and a
    video shorter than one chunk still gives one. The count is within 1 of ``duration * rate``.
    """
    return max(1, math.ceil(duration * rate - PARTIAL_CHUNK_TOL))


class VideoReader:
    """A decord reader with the stream's frame timestamps, decoding only the frames asked for.

    Args:
        path: any file decord (FFmpeg) opens.
        num_threads: decoder threads (0: decord's choice).

    Attributes:
        path: the file.
        num_frames: frames in the stream.
        timestamps: ``(num_frames, 2)`` start and end of each frame in seconds.
        duration: end of the last frame in seconds.
        fps: the container's average frame rate (for reports; chunking uses the timestamps).

    Raises:
        VideoError: the file is missing, cannot be opened or has no frames.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int = 0):
        import decord

        self.path = Path(path)
        if not self.path.is_file():
            raise VideoError(f"{self.path}: no such video file")
        try:
            self._vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=num_threads)
            n = len(self._vr)
            if n == 0:
                raise VideoError(f"{self.path}: the video has no frames")
            ts = np.asarray(self._vr.get_frame_timestamp(np.arange(n)), dtype=np.float64)
            avg_fps = float(self._vr.get_avg_fps())
        except VideoError:
            raise
        except Exception as e:  # decord raises DECORDError (not a RuntimeError) or RuntimeError
            raise VideoError(f"{self.path}: cannot open video ({_short(e)})") from e
        self.num_frames = n
        self.timestamps = self._checked_timestamps(ts, avg_fps)
        self.duration = float(self.timestamps[-1, 1])
        self.fps = avg_fps if avg_fps > 0 else n / self.duration

    def _checked_timestamps(self, ts: np.ndarray, avg_fps: float) -> np.ndarray:
        """Decord's per-frame times, or ``index / fps`` where the container gives no usable ones."""
        n = len(ts)
        ok = (
            ts.shape == (n, 2)
            and np.isfinite(ts).all()
            and ts[0, 0] >= 0
            and ts[-1, 1] > 0
            and (np.diff(ts[:, 0]) >= 0).all()
        )
        if ok:
            return ts
        if avg_fps <= 0:
            raise VideoError(f"{self.path}: the video has neither frame timestamps nor a frame rate")
        log.warning("%s: no usable frame timestamps, using frame index / %.3f fps", self.path, avg_fps)
        start = np.arange(n, dtype=np.float64) / avg_fps
        return np.stack([start, start + 1.0 / avg_fps], axis=1)

    def num_chunks(self, rate: float) -> int:
        return num_chunks_for(self.duration, rate)

    def frame_at(self, t: float | np.ndarray) -> np.ndarray:
        """Index of the frame shown at time ``t`` (seconds), clamped to the stream."""
        idx = np.searchsorted(self.timestamps[:, 0], t, side="right") - 1
        return np.clip(idx, 0, self.num_frames - 1)

    def get_frames(self, indices: list[int] | np.ndarray, where: str = "") -> np.ndarray:
        """Decode the given frames as RGB uint8 ``(len(indices), H, W, 3)``.

        Raises:
            VideoError: decoding failed (e.g. a truncated file); ``where`` is added to the message.
        """
        try:
            return self._vr.get_batch([int(i) for i in indices]).asnumpy()
        except Exception as e:
            at = f" at {where}" if where else ""
            raise VideoError(f"{self.path}: decoding failed{at} ({_short(e)})") from e


def _short(e: BaseException, limit: int = 300) -> str:
    """One line of a (often multi-line, very long) decord error."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class Chunk:
    """One chunk of a video.

    Attributes:
        index: chunk number ``i``.
        start: ``i / rate`` seconds.
        end: ``(i + 1) / rate`` seconds.
        frame: the middle frame (shown at ``(i + 0.5) / rate``), RGB uint8 ``(H, W, 3)``.
        motion: ``(pairs + 1, H, W, 3)`` consecutive frames centred on the middle frame, or None.
    """

    index: int
    start: float
    end: float
    frame: np.ndarray
    motion: np.ndarray | None = None


def motion_indices(mid: int, count: int, num_frames: int) -> np.ndarray:
    """``count`` consecutive frame indices around ``mid``, shifted to stay in the stream.

    Streams with fewer than ``count`` frames repeat the last frame (zero flow there).
    """
    first = min(max(mid - (count - 1) // 2, 0), max(num_frames - count, 0))
    return np.minimum(first + np.arange(count), num_frames - 1)


def chunk_frames(
    video: str | os.PathLike | VideoReader,
    rate: float = 4.0,
    *,
    motion_pairs: int = 0,
    batch_chunks: int = 16,
) -> Iterator[Chunk]:
    """Yield the chunks of a video, decoding the frames of ``batch_chunks`` chunks per batch.

    Args:
        video: a file or an open :class:`VideoReader`.
        rate: chunks per second.
        motion_pairs: with ``K > 0``, each chunk also carries ``K + 1`` consecutive frames (K flow pairs).
        batch_chunks: chunks decoded per ``get_batch`` call; the video is never decoded whole.

    Raises:
        VideoError: the video cannot be opened, or decoding failed (the message names the chunks).
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if batch_chunks < 1:
        raise ValueError(f"batch_chunks must be >= 1, got {batch_chunks}")
    vr = video if isinstance(video, VideoReader) else VideoReader(video)
    total = vr.num_chunks(rate)
    mids = vr.frame_at((np.arange(total) + 0.5) / rate)
    for c0 in range(0, total, batch_chunks):
        c1 = min(c0 + batch_chunks, total)
        wanted = [np.array([mids[i]]) for i in range(c0, c1)]
        if motion_pairs > 0:
            wanted += [motion_indices(mids[i], motion_pairs + 1, vr.num_frames) for i in range(c0, c1)]
        frames_idx = np.unique(np.concatenate(wanted))
        frames = vr.get_frames(frames_idx, where=f"chunks {c0}-{c1 - 1} of {total}")
        pos = {int(f): k for k, f in enumerate(frames_idx)}
        for i in range(c0, c1):
            motion = None
            if motion_pairs > 0:
                window = motion_indices(mids[i], motion_pairs + 1, vr.num_frames)
                motion = frames[[pos[int(f)] for f in window]]
            yield Chunk(i, i / rate, (i + 1) / rate, frames[pos[int(mids[i])]], motion)


# ---------------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------------


class Backbone(nn.Module):
    """A torchvision classification model with its classifier removed: images in, pooled features out.

    Attributes:
        name: torchvision model name.
        dim: feature size (2048 for ResNet-50).
        weights: where the weights came from: ``random``, ``imagenet:<file>`` or a file path.
        in_channels: input channels (3 for RGB, ``2 * pairs`` for stacked flow).
    """

    def __init__(self, net: nn.Module, name: str, dim: int, weights: str, in_channels: int):
        super().__init__()
        self.net = net
        self.name = name
        self.dim = dim
        self.weights = weights
        self.in_channels = in_channels

    @property
    def random(self) -> bool:
        return self.weights == "random"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` normalised input -> ``(B, dim)`` features."""
        return self.net(x)


_HEAD_NAMES = ("fc", "classifier", "heads", "head")


def _remove_head(net: nn.Module, name: str) -> tuple[str, int]:
    """Replace the final ``nn.Linear`` by identity; returns its module path and input size."""
    for attr in _HEAD_NAMES:
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Identity())
            return attr, head.in_features
        if isinstance(head, nn.Sequential):
            linear = [k for k, m in head.named_children() if isinstance(m, nn.Linear)]
            if linear:
                key = linear[-1]
                dim = head.get_submodule(key).in_features
                setattr(head, key, nn.Identity())
                return f"{attr}.{key}", dim
    raise ValueError(f"backbone {name!r}: no linear classifier found in {_HEAD_NAMES} to remove")


def _first_conv(net: nn.Module) -> tuple[str, nn.Conv2d]:
    for path, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            return path, m
    raise ValueError("backbone has no Conv2d to adapt to flow input")


def _adapt_first_conv(net: nn.Module, in_channels: int) -> str:
    """Give the first convolution ``in_channels`` inputs (weights re-initialised); returns its path."""
    path, conv = _first_conv(net)
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    parent, _, child = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, new)
    return path


def torchvision_cache_files(name: str) -> list[Path]:
    """Where torchvision's ImageNet weights of ``name`` would be cached, preferred first (V2, V1)."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    entries = [getattr(enum, k) for k in ("IMAGENET1K_V2", "IMAGENET1K_V1") if hasattr(enum, k)]
    if not entries:
        entries = [enum.DEFAULT]
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return [checkpoints / e.url.rsplit("/", 1)[-1] for e in entries]


def _resolve_weights(name: str, weights: str | None, allow_random: bool) -> tuple[Path | None, str]:
    """The local weights file and its description; never downloads."""
    if weights is None or weights == "imagenet":
        files = torchvision_cache_files(name)
        for f in files:
            if f.is_file():
                return f, f"imagenet:{f.name}"
        raise FileNotFoundError(
            f"ImageNet weights of {name!r} are not in torchvision's local cache; nothing is downloaded. "
            f"Put the file at {files[0]}"
            + (f" (or {', '.join(str(f) for f in files[1:])})" if len(files) > 1 else "")
            + ", or pass a local state dict path as the weights, or 'random' with allow_random=True."
        )
    if weights == "random":
        if not allow_random:
            raise ValueError(
                f"backbone {name!r}: weights='random' gives meaningless features; pass allow_random=True "
                "(backbone.allow_random=true) to use them anyway (outputs are then flagged random)"
            )
        return None, "random"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone {name!r}: weights file {path} does not exist; give the path of a local state dict, "
            "'imagenet' (torchvision's local cache) or 'random'"
        )
    return path, str(path)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: not a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def build_backbone(
    name: str = "resnet50",
    weights: str | None = "imagenet",
    allow_random: bool = False,
    *,
    in_channels: int = 3,
) -> Backbone:
    """A torchvision classification model without its classifier, in eval mode.

    Args:
        name: any torchvision classification model with a linear classifier (``resnet50``, ``resnet18``,
            ``mobilenet_v3_small``, ``efficientnet_b0``, ``vit_b_16``, ...).
        weights: ``'imagenet'`` (or None): torchvision's ImageNet weights (IMAGENET1K_V2, else V1) from
            the local cache ``torch.hub.get_dir()/checkpoints``; a path: a local state dict (with or
            without the classifier); ``'random'``: random init, only with ``allow_random``.
        allow_random: permit ``weights='random'``.
        in_channels: input channels; other than 3, the first convolution is widened and, from RGB
            weights, initialised with the mean of its RGB filters in every channel (TSN cross-modality).
            A state dict whose first convolution already has ``in_channels`` is loaded as it is.

    Raises:
        FileNotFoundError: the weights file is missing (the message says where to put it).
        ValueError: random weights without ``allow_random``, or a state dict that does not fit.
    """
    from torchvision.models import get_model

    path, desc = _resolve_weights(name, weights, allow_random)
    net = get_model(name, weights=None)
    head_path, dim = _remove_head(net, name)
    conv_path = _adapt_first_conv(net, in_channels) if in_channels != 3 else None
    if path is not None:
        sd = _load_state_dict(path)
        if conv_path is not None:
            w = sd.get(f"{conv_path}.weight")
            if w is not None and w.shape[1] == 3:
                # (O, 3, k, k) -> (O, in_channels, k, k): TSN's cross-modality initialisation.
                w = w.mean(dim=1, keepdim=True).expand(-1, in_channels, -1, -1)
                sd[f"{conv_path}.weight"] = w.clone()
                desc = f"{desc} (cross-modality)"
        missing, unexpected = net.load_state_dict(sd, strict=False)
        unexpected = [k for k in unexpected if not k.startswith(head_path + ".")]
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit {name!r}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
    elif desc == "random":
        log.warning("backbone %s uses RANDOM weights: its features are for testing only", name)
    return Backbone(net, name, dim, desc, in_channels).eval()


# ---------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------


def resize_crop(frames: np.ndarray, resize: int, crop: int) -> torch.Tensor:
    """Shorter side to ``resize`` (bilinear, antialiased), then the centre ``crop`` x ``crop``.

    Args:
        frames: ``(N, H, W, 3)`` RGB uint8.

    Returns:
        ``(N, 3, crop, crop)`` float32 in ``[0, 255]``.
    """
    if crop > resize:
        raise ValueError(f"crop {crop} is larger than the resized shorter side {resize}")
    x = torch.from_numpy(np.ascontiguousarray(frames))
    x = x.permute(0, 3, 1, 2).float()  # (N, H, W, 3) -> (N, 3, H, W)
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_long = int(resize * long / short)
    size = (resize, new_long) if h <= w else (new_long, resize)
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = round((size[0] - crop) / 2), round((size[1] - crop) / 2)
    return x[..., top : top + crop, left : left + crop].clamp_(0, 255)


def normalize_rgb(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, h, w)`` in ``[0, 255]`` -> ImageNet-normalised float."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def stacked_flow(frames: np.ndarray) -> np.ndarray:
    """Farneback flow of consecutive frames, stacked as TSN does.

    Args:
        frames: ``(K + 1, h, w, 3)`` RGB uint8.

    Returns:
        ``(2K, h, w)`` float32 ``[x_1, y_1, ..., x_K, y_K]``, clipped at +-20 pixels and scaled to
        TSN's flow input range.
    """
    import cv2

    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    fields = [
        cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)  # (h, w, 2)
        for a, b in zip(gray[:-1], gray[1:])
    ]
    flow = np.stack(fields).transpose(0, 3, 1, 2)  # (K, h, w, 2) -> (K, 2, h, w)
    flow = np.clip(flow, -FLOW_BOUND, FLOW_BOUND) * FLOW_SCALE
    return flow.reshape(-1, *flow.shape[2:]).astype(np.float32)  # (K, 2, h, w) -> (2K, h, w)


# ---------------------------------------------------------------------------------------------------
# The extractor
# ---------------------------------------------------------------------------------------------------


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
