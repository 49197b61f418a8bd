"""Video decoding with decord and chunking at a fixed rate.

A video is cut into chunks at a fixed rate (default 4 chunks per second, as LSTR/TeSTra use for
THUMOS'14), independent of the source frame rate: chunk ``i`` covers ``[i / rate, (i + 1) / rate)``
seconds of the stream's own timestamps, so variable-frame-rate files and rates that do not divide the
fps need no special case. The rule lives in :func:`chunk_span`, :func:`frame_shown_at`,
:func:`motion_indices` and :func:`num_chunks_for`: :func:`chunk_frames` applies it to a file it can seek
in, :class:`oad.live.source.ChunkCutter` to frames as they arrive from a live source.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# A last partial chunk is kept unless it covers less than this fraction of a chunk (absorbs float error).
PARTIAL_CHUNK_TOL = 1e-3


class VideoError(ValueError):
    """A video that cannot be read (missing, unreadable, corrupt, truncated or without frames), or whose
    features come out of the backbone as NaN/Inf."""


# ---------------------------------------------------------------------------------------------------
# Decoding and chunking
# ---------------------------------------------------------------------------------------------------


def num_chunks_for(duration: float, rate: float) -> int:
    """Number of chunks of a stream of ``duration`` seconds at ``rate`` chunks per second.

    ``ceil(duration * rate)``: a last partial chunk is kept, so every frame belongs to a chunk and a
    video shorter than one chunk still gives one. The count is within 1 of ``duration * rate``.
    """
    return max(1, math.ceil(duration * rate - PARTIAL_CHUNK_TOL))


def chunk_span(index: int, rate: float) -> tuple[float, float]:
    """Chunk ``index`` covers ``[index / rate, (index + 1) / rate)`` seconds."""
    return index / rate, (index + 1) / rate


def middle_time(index: int | np.ndarray, rate: float) -> float | np.ndarray:
    """The time whose frame represents chunk ``index``: its middle, ``(index + 0.5) / rate``."""
    return (index + 0.5) / rate


def frame_shown_at(starts: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    """Index of the frame shown at time ``t``: the last frame starting at or before ``t``, clamped to
    the frames given (``starts``: the frames' start times in seconds, non-decreasing)."""
    idx = np.searchsorted(starts, t, side="right") - 1
    return np.clip(idx, 0, len(starts) - 1)


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
        return frame_shown_at(self.timestamps[:, 0], t)

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
    mids = vr.frame_at(middle_time(np.arange(total), rate))
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
            yield Chunk(i, *chunk_span(i, rate), frames[pos[int(mids[i])]], motion)


# ---------------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------------


