"""The in-memory form every data source is turned into: a list of videos, each with its feature
streams and per-chunk targets.

Readers of the public layouts (OadTR pickles, LSTR/TeSTra folders, TRN folders) and the built-in
synthetic generator all return ``list[Video]``; the window dataset, the evaluation and the streaming
runner only ever see this form. Streams may be ``np.memmap`` arrays: nothing here copies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
