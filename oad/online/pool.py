"""Many live streams through one model: :class:`StreamPool`.

A live run (:mod:`oad.live`) holds streams that start, stop, reset and skip chunks independently, while
:class:`oad.online.OnlineDetector` steps ``N`` streams started together. The pool keeps one history per
stream (keyed by any hashable) and steps the streams that have a chunk ready in as few batched calls of
the model's online step as their histories allow.

Streams live in *cohorts*: one online step (:class:`oad.online.base.OnlineStep`, sharing the weights of
every other) holding the state of several streams whose shared counters are equal. At each
:meth:`StreamPool.step`:

- a cohort whose streams all have a chunk is stepped as it is: one call, no copy (the common case:
  streams opened together and fed together stay one batch for good);
- a cohort of which only some streams have a chunk is split (:meth:`~oad.online.base.StreamState.split`)
  into the ready streams and the others;
- streams opened or reset since their last chunk (no history) start as one new cohort;
- then the ready cohorts whose counters are equal (:meth:`~oad.online.base.StreamState.history_key`) are
  merged (:meth:`~oad.online.base.StreamState.merge`) and each ready cohort is stepped once.

Which streams can share a step is the step class's to say. A window, a ring buffer or a long memory
places the next chunk by the number of chunks seen, so streams whose histories differ in length cannot
share a step: a stream that skips a tick goes on in its own cohort, and is batched again with any
others as soon as their histories are as long as its own (e.g. once another stream has skipped a tick
too, or after a reset). A recurrent state (TRN, MiniROAD) has no counter: its streams merge back at the
very next tick. Splits and merges copy the streams' state once (a few chunks' worth of tensors per
stream), never the weights.

Scores per stream equal those of an :class:`~oad.online.OnlineDetector` fed only that stream's chunks
since its last reset, as ``N`` streams stepped together by one detector equal each alone: to rounding in
float32 (except where rounding moves a key across MAT's top-k cut-off, as it does for the detector's
``N`` streams); in int8 within the quantization noise, since dynamic quantization scales each product by
the whole batch (``tests/test_stream_pool.py`` states the bounds).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from oad.models.base import class_probabilities
from oad.online.base import OnlineStep
from oad.online.runner import OnlineDetector, StepOutput

__all__ = ["StreamPool"]


@dataclass
class _Cohort:
    """Streams stepped together: their step (started for ``len(keys)`` streams) and keys, in its order."""

    step: OnlineStep
    keys: list[Hashable]


class StreamPool:
    """Independent streams of one model, stepped together where their chunks are ready.

    Args:
        model: the trained network (not modified; copied once for all the streams).
        **detector_options: :class:`OnlineDetector`'s options (``dtype``, ``device``, ``ignore_index``,
            step options), the same for every stream.

    Attributes:
        engine_calls: batched online steps run so far (one per cohort stepped).
        detector: the :class:`OnlineDetector` whose step (weights, run device and dtype) every cohort
            forks (it steps no stream itself); its ``precision`` and ``implementation`` describe the pool's.
    """

    def __init__(self, model: nn.Module, **detector_options: Any):
        self.detector = OnlineDetector(model, **detector_options)
        self.engine_calls = 0
        self._steps: dict[Hashable, int] = {}  # every open stream, in opening order: chunks since (re)start
        self._fresh: list[Hashable] = []  # open streams without history (in no cohort)
        self._cohorts: list[_Cohort] = []

    @property
    def keys(self) -> list[Hashable]:
        """The open streams, in the order they were opened."""
        return list(self._steps)

    @property
    def cohorts(self) -> list[list[Hashable]]:
        """The streams with a history, grouped as they are stepped (one batched call per group)."""
        return [list(c.keys) for c in self._cohorts]

    def open(self, key: Hashable) -> None:
        """A new stream with no history.

        Raises:
            KeyError: ``key`` is already open.
        """
        if key in self._steps:
            raise KeyError(f"stream {key!r} is already open")
        self._steps[key] = 0
        self._fresh.append(key)

    def close(self, key: Hashable) -> None:
        """Forget a stream (its history is dropped).

        Raises:
            KeyError: ``key`` is not open.
        """
        self._detach(key)
        del self._steps[key]

    def reset(self, key: Hashable) -> None:
        """Forget a stream's history (e.g. after a gap in its timestamps); it stays open.

        Raises:
            KeyError: ``key`` is not open.
        """
        self._detach(key)
        self._steps[key] = 0
        self._fresh.append(key)

    def num_steps(self, key: Hashable) -> int:
        """Chunks stepped in ``key``'s history since it was opened or reset."""
        return self._steps[key]

    def _detach(self, key: Hashable) -> None:
        """Take ``key`` out of its cohort (the others keep their state) or out of the fresh streams."""
        if key not in self._steps:
            raise KeyError(f"stream {key!r} is not open")
        if key in self._fresh:
            self._fresh.remove(key)
            return
        for i, c in enumerate(self._cohorts):
            if key in c.keys:
                rest = [j for j, k in enumerate(c.keys) if k != key]
                if rest:
                    self._cohorts[i] = _Cohort(c.step.split(rest), [c.keys[j] for j in rest])
                else:
                    del self._cohorts[i]
                return

    def _features(self, key: Hashable, x: np.ndarray | Tensor) -> Tensor:
        """One stream's chunk as an ``(in_dim,)`` tensor in the run dtype."""
        if isinstance(x, np.ndarray) and not x.flags.writeable:
            x = np.array(x)  # e.g. a row of a read-only memory map: torch wants writable memory
        x = torch.as_tensor(x)
        if x.shape != (self.detector.in_dim,):
            raise ValueError(f"stream {key!r}: expected features of shape ({self.detector.in_dim},), "
                             f"got {tuple(x.shape)}")
        return x.to(dtype=self.detector.dtype)

    @torch.inference_mode()
    def step(self, chunks: Mapping[Hashable, np.ndarray | Tensor]) -> dict[Hashable, StepOutput]:
        """Score the newest chunk of each given stream (``(in_dim,)`` features per key).

        Returns:
            ``{key: StepOutput}`` with ``(C,)`` scores and ``(Q, C)`` future scores per stream.

        Raises:
            KeyError: a key that is not open.
            ValueError: features of another shape.
        """
        for key in chunks:
            if key not in self._steps:
                raise KeyError(f"stream {key!r} is not open")
        feats = {key: self._features(key, x) for key, x in chunks.items()}
        ready, idle = [], []
        for c in self._cohorts:
            have = [i for i, k in enumerate(c.keys) if k in feats]
            if len(have) == len(c.keys):
                ready.append(c)
            elif not have:
                idle.append(c)
            else:  # only some streams have a chunk: split them off
                rest = [i for i, k in enumerate(c.keys) if k not in feats]
                ready.append(_Cohort(c.step.split(have), [c.keys[i] for i in have]))
                idle.append(_Cohort(c.step.split(rest), [c.keys[i] for i in rest]))
        new = [k for k in self._fresh if k in feats]
        if new:  # streams without history: one new cohort
            step = self.detector.engine.fork()
            step.start(len(new))
            ready.append(_Cohort(step, new))
            self._fresh = [k for k in self._fresh if k not in feats]
        groups: dict[tuple, list[_Cohort]] = {}  # ready cohorts by counters: each group is one batch
        for c in ready:
            groups.setdefault(c.step.history_key(), []).append(c)
        out: dict[Hashable, StepOutput] = {}
        stepped = []
        for group in groups.values():
            c = group[0] if len(group) == 1 else _Cohort(OnlineStep.merge([g.step for g in group]),
                                                         [k for g in group for k in g.keys])
            out.update(self._step(c, feats))
            stepped.append(c)
        self._cohorts = idle + stepped
        return out

    def _step(self, c: _Cohort, feats: Mapping[Hashable, Tensor]) -> dict[Hashable, StepOutput]:
        """One batched call of the online step on a cohort's chunks."""
        x = torch.stack([feats[k] for k in c.keys]).to(device=self.detector.device, non_blocking=True)  # (n, in_dim)
        logits, future = c.step.step(x)
        self.engine_calls += 1
        ignore = self.detector.ignore_index
        scores = class_probabilities(logits, ignore)  # (n, C), fp32
        future_scores = class_probabilities(future, ignore)  # (n, Q, C), fp32
        for k in c.keys:
            self._steps[k] += 1
        return {k: StepOutput(scores[i], future_scores[i]) for i, k in enumerate(c.keys)}
