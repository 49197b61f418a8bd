"""Action events decided online from the per-chunk class probabilities of one stream."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor


class EventDetector:
    """Action events of one stream, decided online from per-chunk class probabilities.

    The rule, per action class (background and the ignore class never form events), one chunk at a time:

    - **off -> pending**: the class's score reaches ``on_threshold`` at chunk ``s``: a candidate event
      starting at ``s``.
    - **pending -> on**: the score has stayed ``>= off_threshold`` for ``min_length`` chunks
      (``s .. s + min_length - 1``): the start is decided at chunk ``s + min_length - 1`` (a delay of
      ``min_length - 1`` chunks); the event starts at chunk ``s``. If the score falls below
      ``off_threshold`` earlier, the candidate is dropped: no event is shorter than ``min_length``.
    - **on -> off**: the first chunk ``e`` whose score is ``< off_threshold`` ends the event
      (chunks ``s .. e - 1``); the end is decided at chunk ``e``.
    - :meth:`finish` (end of the stream) closes open events at the last chunk (``end_by_stream_end``);
      pending candidates shorter than ``min_length`` are dropped.

    ``off_threshold < on_threshold`` is the hysteresis: a score wavering around one threshold does not
    split an event. Classes are independent (two classes may be active at once).

    Chunk ``t`` covers ``[t / rate, (t + 1) / rate)`` seconds, so its decision is known at ``(t + 1) / rate``.
    Each event is a dict: ``class_index, class_name, start_chunk, end_chunk`` (exclusive), ``start_s,
    end_s, num_chunks, start_decided_chunk, end_decided_chunk, start_decided_s, end_decided_s,
    start_delay_chunks`` (``start_decided_chunk - start_chunk``), ``end_delay_chunks``
    (``end_decided_chunk - (end_chunk - 1)``, 1 for an end seen at the next chunk), ``peak_score``,
    ``end_by_stream_end``.

    Args:
        class_names: the ``C`` class names.
        on_threshold: score that starts a candidate event.
        off_threshold: score below which an event (or candidate) ends; ``<= on_threshold``.
        min_length: minimum event length in chunks (``>= 1``).
        rate: chunks per second (for the times in seconds).
        background_index: background column (no events), or None.
        ignore_index: ignore column (no events; e.g. Ambiguous), or None.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        on_threshold: float = 0.5,
        off_threshold: float = 0.3,
        min_length: int = 2,
        rate: float = 4.0,
        background_index: int | None = 0,
        ignore_index: int | None = 21,
    ):
        if not 0.0 <= off_threshold <= on_threshold:
            raise ValueError(f"need 0 <= off_threshold <= on_threshold, got off {off_threshold}, on {on_threshold}")
        if int(min_length) < 1:
            raise ValueError(f"min_length must be >= 1 chunk, got {min_length}")
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.class_names = list(class_names)
        self.on, self.off = float(on_threshold), float(off_threshold)
        self.min_length, self.rate = int(min_length), float(rate)
        skip = {background_index, ignore_index}
        self.classes = np.array([c for c in range(len(self.class_names)) if c not in skip], dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget everything: a new stream."""
        self.t = 0  # index of the next chunk
        self.events: list[dict] = []  # finished events, in order of their end decision
        self._start: dict[int, int] = {}  # class -> start chunk of its pending or active event
        self._active: set[int] = set()
        self._peak: dict[int, float] = {}

    @property
    def active(self) -> list[dict]:
        """The events started (decided) and not yet ended, as they stand now."""
        return [self._event(c, None, None) for c in sorted(self._active)]

    def describe(self) -> dict:
        """The settings, for the outputs."""
        return {"on_threshold": self.on, "off_threshold": self.off, "min_length": self.min_length,
                "rate": self.rate, "classes": [self.class_names[c] for c in self.classes]}

    def _event(self, c: int, end: int | None, decided: int | None, by_stream_end: bool = False) -> dict:
        s = self._start[c]
        sd = s + self.min_length - 1
        ev = {
            "class_index": int(c),
            "class_name": self.class_names[c],
            "start_chunk": s,
            "end_chunk": end,
            "start_s": s / self.rate,
            "end_s": None if end is None else end / self.rate,
            "num_chunks": None if end is None else end - s,
            "start_decided_chunk": sd,
            "end_decided_chunk": decided,
            "start_decided_s": (sd + 1) / self.rate,
            "end_decided_s": None if decided is None else (decided + 1) / self.rate,
            "start_delay_chunks": sd - s,
            "end_delay_chunks": None if decided is None else decided - (end - 1),
            "peak_score": self._peak[c],
            "end_by_stream_end": by_stream_end,
        }
        return ev

    def update(self, scores: np.ndarray | Tensor | Sequence[float]) -> list[dict]:
        """Take the probabilities ``(C,)`` of the next chunk; returns the decisions made at this chunk.

        Returns:
            ``[{'decision': 'start' | 'end', **event}]`` (for a start, the end fields are None).
        """
        if isinstance(scores, Tensor):
            scores = scores.detach().float().cpu().numpy()
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != (len(self.class_names),):
            raise ValueError(f"expected ({len(self.class_names)},) scores, got {s.shape}")
        t = self.t
        decisions = []
        for c in self.classes.tolist():
            v = float(s[c])
            if c in self._start:
                if v < self.off:
                    if c in self._active:
                        ev = self._event(c, t, t)
                        self.events.append(ev)
                        decisions.append({"decision": "end", **ev})
                        self._active.discard(c)
                    del self._start[c]  # a candidate shorter than min_length is dropped
                    continue
                self._peak[c] = max(self._peak[c], v)
            elif v >= self.on:
                self._start[c], self._peak[c] = t, v
            else:
                continue
            if c not in self._active and t - self._start[c] + 1 >= self.min_length:
                self._active.add(c)
                decisions.append({"decision": "start", **self._event(c, None, None)})
        self.t += 1
        return decisions

    def finish(self) -> list[dict]:
        """End of the stream: close the active events at the last chunk; returns all events by start."""
        last = self.t - 1
        for c in sorted(self._active):
            self.events.append(self._event(c, self.t, last, by_stream_end=True))
        self._active.clear()
        self._start.clear()
        return sorted(self.events, key=lambda e: (e["start_chunk"], e["class_index"]))
