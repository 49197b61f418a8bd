"""The one timer of online steps: the benchmarks (``oad/bench``) and the leaderboard's step latency
(:mod:`oad.tasks.leaderboard`) time their steps with :func:`round_robin`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

__all__ = ["device_sync", "median_ms", "round_robin"]


def round_robin(fns: Mapping[Hashable, Callable[[], Any]], reps: int, warmup: int = 1,
                sync: Callable[[], Any] | None = None) -> dict[Hashable, list[float]]:
    """Seconds of each call of each function, the functions called in turn ``reps`` times after ``warmup``
    untimed rounds.

    Calling the configurations in turn, rather than one after the other, makes a change of the machine's
    load hit all of them alike, so they compare within a run.

    Args:
        fns: name -> a function of no argument (one step of one configuration).
        reps: timed rounds.
        warmup: untimed rounds before them.
        sync: called before and after each timed call (e.g. ``torch.cuda.synchronize``), so that a
            device's queued work is inside the call's time; None on the CPU.

    Returns:
        name -> the ``reps`` times in seconds, in call order.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[Hashable, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            times[k].append(time.perf_counter() - t0)
    return times


def median_ms(times: Sequence[float]) -> float:
    """The median of times in seconds, in milliseconds."""
    return 1e3 * statistics.median(times)


def device_sync(device: Any) -> Callable[[], Any] | None:
    """The ``sync`` of :func:`round_robin` for a device: CUDA's synchronize, None elsewhere."""
    import torch

    return torch.cuda.synchronize if torch.device(device).type == "cuda" else None
