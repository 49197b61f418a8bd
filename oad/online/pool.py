"""Many live streams through one model: :class:`StreamPool`.

A live run (:mod:`oad.live`) holds streams that start, stop, reset and skip chunks independently, while
:class:`oad.online.OnlineDetector` steps ``N`` streams started together. The pool keeps one history per
stream (keyed by any hashable) and steps every stream that has a chunk ready in :meth:`StreamPool.step`.

This first version keeps one detector per stream: correct, but it steps the streams one by one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from torch import Tensor, nn

from oad.online.runner import OnlineDetector, StepOutput

__all__ = ["StreamPool"]


class StreamPool:
    """Independent streams of one model, stepped together where their chunks are ready.

    Args:
        model: the trained network (not modified).
        **detector_options: :class:`OnlineDetector`'s options (``dtype``, ``device``, ``ignore_index``,
            step options), the same for every stream.

    Attributes:
        engine_calls: online steps run so far (one per batched step).
    """

    def __init__(self, model: nn.Module, **detector_options: Any):
        self.model = model
        self.options = detector_options
        self._streams: dict[Hashable, OnlineDetector] = {}
        self.engine_calls = 0

    @property
    def keys(self) -> list[Hashable]:
        """The open streams, in the order they were opened."""
        return list(self._streams)

    def open(self, key: Hashable) -> None:
        """A new stream with no history.

        Raises:
            KeyError: ``key`` is already open.
        """
        if key in self._streams:
            raise KeyError(f"stream {key!r} is already open")
        self._streams[key] = OnlineDetector(self.model, **self.options)

    def close(self, key: Hashable) -> None:
        """Forget a stream (its history is dropped)."""
        del self._streams[key]

    def reset(self, key: Hashable) -> None:
        """Forget a stream's history (e.g. after a gap in its timestamps); it stays open."""
        self._streams[key].reset()

    def num_steps(self, key: Hashable) -> int:
        """Chunks stepped in ``key``'s history since it was opened or reset."""
        return self._streams[key].num_steps

    def step(self, chunks: Mapping[Hashable, np.ndarray | Tensor]) -> dict[Hashable, StepOutput]:
        """Score the newest chunk of each given stream (``(in_dim,)`` features per key).

        Returns:
            ``{key: StepOutput}`` with ``(C,)`` scores and ``(Q, C)`` future scores per stream.

        Raises:
            KeyError: a key that is not open.
        """
        out = {}
        for key, x in chunks.items():
            if key not in self._streams:
                raise KeyError(f"stream {key!r} is not open")
            out[key] = self._streams[key].step(x)
            self.engine_calls += 1
        return out
