"""What the live pipeline hands to its outputs: one :class:`ChunkRecord` per chunk of a stream (scored or
dropped), the events as they are decided, and the :class:`Sink` interface every output implements
(incremental files, the rendered video, the live page)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["ChunkRecord", "Sink", "upcoming_action"]


@dataclass
class ChunkRecord:
    """One chunk of one stream, as the pipeline decided it.

    Attributes:
        stream: the stream's name (unique in a run).
        index: the chunk number in the stream (``start_s = index / rate``), counted from the stream's start.
        start_s, end_s: the chunk's span on the stream's own timeline (seconds).
        status: ``"scored"``, or why it was not: ``"dropped"`` (the pipeline fell behind and left it out:
            the model never saw it) or ``"skipped"`` (non-finite features).
        scores: ``(C,)`` float32 probabilities of the chunk (None unless scored).
        future_scores: ``(Q, C)`` float32 probabilities of the next chunks (None unless scored).
        latency_s: seconds from the arrival of the chunk's last frame to its scores (None unless scored).
        frames: every decoded frame of the chunk, RGB uint8 ``(K, H, W, 3)``, when an output asked for frames
            (:attr:`Sink.wants_frames`); else None. Dropped chunks carry them too (a rendered video has no hole).
        frame_times: ``(K,)`` the frames' times on the stream's timeline (seconds), with ``frames``.
        segment: the stream's segment: 0 at the start, +1 at every reset of its history (a gap in its
            timestamps, a reconnection).
    """

    stream: str
    index: int
    start_s: float
    end_s: float
    status: str = "scored"
    scores: np.ndarray | None = None
    future_scores: np.ndarray | None = None
    latency_s: float | None = None
    frames: np.ndarray | None = None
    frame_times: np.ndarray | None = None
    segment: int = 0


class Sink(Protocol):
    """An output of a live run. The pipeline calls it from one thread, in each stream's chunk order.

    ``wants_frames``: whether :meth:`chunk` needs ``record.frames`` (decoding keeps every frame only then).
    """

    wants_frames: bool

    def open_stream(self, stream: str, meta: dict[str, Any]) -> None:
        """A stream starts (``meta``: source, rate, class names, model, ...)."""

    def chunk(self, record: ChunkRecord) -> None:
        """A chunk was scored, dropped or skipped."""

    def event(self, stream: str, event: dict[str, Any], what: str) -> None:
        """An event's start (``what == "start"``) or end (``"end"``) was decided (the dict of
        :class:`oad.online.EventDetector`)."""

    def close_stream(self, stream: str, summary: dict[str, Any]) -> None:
        """A stream ended (``summary``: why, chunk counts, latency figures)."""

    def close(self) -> None:
        """The run ends: flush and release everything."""


def upcoming_action(future_scores: np.ndarray | None, ignore_index: int | None,
                    background_index: int | None) -> tuple[int, float, int] | None:
    """The upcoming action of a scored chunk: the highest score of ``future_scores (Q, C)`` over every future
    step and every class but background and the ignored one, as ``(class, score, q)`` (``q + 1`` chunks
    ahead); None without future scores. NaN counts as 0."""
    if future_scores is None or not np.size(future_scores):
        return None
    fut = np.nan_to_num(np.asarray(future_scores, np.float64), nan=0.0)  # (Q, C)
    for c in (ignore_index, background_index):
        if c is not None and 0 <= c < fut.shape[1]:
            fut[:, c] = -1.0
    q, c = np.unravel_index(int(np.argmax(fut)), fut.shape)
    return (int(c), float(fut[q, c]), int(q)) if fut[q, c] >= 0 else None
