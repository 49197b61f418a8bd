"""Training samples per model kind: the functions named by a model's ``samples`` attribute.

Each is ``function(videos, config, *, ignore_index, seed) -> Dataset``, where ``config`` is the model's
constructor config (``window``, ``num_queries``, ...) with the class's ``future_offset`` added: every size
a dataset needs is read from it (defaults as the model's). A batch of any of them is a
:class:`oad.data.base.Batch`; a model's ``training_logits`` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oad.data.base import Video
from oad.data.memory import ContextWindowDataset, MemoryWindowDataset
from oad.data.sequences import SequenceDataset, sequence_lengths
from oad.data.windows import WindowDataset


def last_chunk_windows(videos: list[Video], config: Mapping[str, Any], *, ignore_index: int | None,
                       seed: int = 0) -> WindowDataset:
    """The window ending at every chunk (stride 1), current and ``Q`` future targets of its last chunk;
    windows whose current target is Ambiguous (entry 1) are left out (OadTR, the linear floor)."""
    return WindowDataset(videos, int(config["window"]), int(config.get("num_queries", 0)),
                         future_offset=int(config.get("future_offset", 1)), ignore_index=ignore_index,
                         drop_ignored=True, seed=seed)


def dense_windows(videos: list[Video], config: Mapping[str, Any], *, ignore_index: int | None,
                  seed: int = 0) -> SequenceDataset:
    """Non-overlapping windows with a random per-video offset redrawn every epoch, every step supervised
    with its own ``Q`` future targets (TRN): sequences of ``window`` chunks with no history. Nothing is
    left out (Ambiguous chunks are excluded by the criterion)."""
    return SequenceDataset(videos, int(config["window"]), 0, int(config.get("num_queries", 0)),
                           future_offset=int(config.get("future_offset", 0)), seed=seed)


def dense_sequences(videos: list[Video], config: Mapping[str, Any], *, ignore_index: int | None,
                    seed: int = 0) -> SequenceDataset:
    """Sequences of ``seq_len`` supervised chunks with ``context`` chunks of history, sizes read from the
    config (:func:`oad.data.sequences.sequence_lengths`), nothing left out (OadTR-SW)."""
    seq_len, context = sequence_lengths(config)
    return SequenceDataset(videos, seq_len, context, int(config.get("num_queries", 0)),
                           future_offset=int(config.get("future_offset", 1)), seed=seed)


def strided_windows(videos: list[Video], config: Mapping[str, Any], *, ignore_index: int | None,
                    seed: int = 0) -> WindowDataset:
    """Windows ending every ``stride`` chunks from a random per-video offset redrawn every epoch, the
    last step supervised, nothing left out (MiniROAD: window 128, stride 4; Ambiguous is a class there).

    Every chunk ``offset, offset + stride, ...`` is a window end once per epoch; windows that start
    before the video are zero padded on the left, so early chunks are window ends too (the reference
    puts ``window - 1`` zero rows in front of each video).
    """
    return WindowDataset(videos, int(config["window"]), int(config.get("num_queries", 0)),
                         future_offset=int(config.get("future_offset", 1)), ignore_index=ignore_index,
                         drop_ignored=False, seed=seed, stride=int(config.get("stride", 1)))


def lstr_memory_windows(videos: list[Video], config: Mapping[str, Any], *, ignore_index: int | None,
                        seed: int = 0) -> MemoryWindowDataset:
    """LSTR: work windows with their long memories, the long memory of a short history stretched over
    the chunks there are (``linspace(max(0, ws - L), ws - 1, N)``)."""
    return _memory_windows(videos, config, seed, stretch=True)


def testra_memory_windows(videos: list[Video], config: Mapping[str, Any], *, ignore_index: int | None,
                          seed: int = 0) -> MemoryWindowDataset:
    """TeSTra: as LSTR, but the long memory always spans ``L`` chunks (``linspace(ws - L, ws - 1, N)``,
    negative indices become chunk 0)."""
    return _memory_windows(videos, config, seed, stretch=False)


def cmert_memory_windows(videos: list[Video], config: Mapping[str, Any], *, ignore_index: int | None,
                         seed: int = 0) -> ContextWindowDataset:
    """CMeRT: TeSTra's windows and long memories, with context chunks before each window, anticipation
    targets after it and future targets from its start."""
    return ContextWindowDataset(videos, work_memory=int(config.get("work_memory", 16)),
                                long_memory=int(config.get("long_memory", 1024)),
                                long_stride=int(config.get("long_stride", 4)), context=int(config.get("context", 2)),
                                anticipation=int(config.get("anticipation", 8)), future=int(config.get("future", 48)),
                                window_bound=str(config.get("window_bound", "reference")), seed=seed)


def _memory_windows(videos: list[Video], config: Mapping[str, Any], seed: int, stretch: bool) -> MemoryWindowDataset:
    return MemoryWindowDataset(videos, work_memory=int(config.get("work_memory", 32)),
                               long_memory=int(config.get("long_memory", 2048)),
                               long_stride=int(config.get("long_stride", 4)), stretch=stretch, seed=seed)
