"""The live run's files, written while it runs (:class:`FileSink`, a :class:`oad.live.records.Sink`).

Per stream, in ``<output_dir>/<stream>/``:

- ``scores.jsonl``: one line per chunk as the pipeline decides it: ``chunk, start_s, end_s, status``
  (``scored``, ``dropped``, ``skipped``), ``segment``, ``latency_s`` (seconds, scored chunks), ``top`` and
  ``top_score`` (the best class and its probability) and ``scores`` (one per class, rounded to 6 digits);
  the unscored chunks have null there.
- ``events.jsonl``: a line when an event starts (``what: "start"``, end fields null) and a line when it
  ends (``what: "end"``, the whole event), the dicts of :class:`oad.online.EventDetector`.
- ``summary.json`` (at the stream's end, written atomically): the stream's figures (why it ended, chunk
  counts, latency p50/p95/max, real-time factor, segments, reconnections; :mod:`oad.live.pipeline`) and
  ``meta`` (run id, source, checkpoint, model, extractor, rate, class names).
- ``scores.csv`` and ``timeline.png`` (at the stream's end, as :mod:`oad.tasks.streaming` writes them for a
  file): the scored chunks.

Every JSONL line is written whole by one ``write`` on an unbuffered file: ``tail -f`` shows it at once
and after ``kill -9`` every line already written parses (at most the line being written is missing).
A new run into the same folder starts the files anew.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, Any

import numpy as np

from oad.io import atomic_write_bytes, scores_csv_bytes, write_json
from oad.live.records import ChunkRecord

log = logging.getLogger(__name__)

__all__ = ["FileSink", "STREAM_FILES"]

STREAM_FILES = ("scores.jsonl", "events.jsonl", "summary.json", "scores.csv", "timeline.png")


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n").encode()


class _Open:
    """One stream's open files and what its end-of-stream files need."""

    def __init__(self, folder: Path, meta: dict[str, Any]):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.meta = folder, meta
        self.scores: IO[bytes] = open(folder / "scores.jsonl", "wb", buffering=0)
        self.events: IO[bytes] = open(folder / "events.jsonl", "wb", buffering=0)
        self.rows: list[tuple[int, float, float, np.ndarray]] = []
        self.ended: list[dict] = []

    def close(self) -> None:
        self.scores.close()
        self.events.close()


class FileSink:
    """The incremental files of a live run (see the module docstring).

    Args:
        output_dir: one folder per stream is made in it.
        class_names: the model's classes.
        rate: chunks per second (the timeline's time axis).
        ignore_index: the ignore class (left out of the timeline), or None.
        background_index: the background class, or None.
        plot: draw ``timeline.png`` at each stream's end.
    """

    wants_frames = False

    def __init__(self, output_dir: str | Path, class_names: list[str], rate: float, ignore_index: int | None = None,
                 background_index: int | None = 0, plot: bool = True):
        self.output_dir = Path(output_dir)
        self.class_names, self.rate = list(class_names), float(rate)
        self.ignore_index, self.background_index, self.plot = ignore_index, background_index, bool(plot)
        self._streams: dict[str, _Open] = {}

    def open_stream(self, stream: str, meta: dict[str, Any]) -> None:
        self._streams[stream] = _Open(self.output_dir / stream, meta)

    def chunk(self, record: ChunkRecord) -> None:
        s = self._streams[record.stream]
        scored = record.scores is not None
        top = int(np.argmax(record.scores)) if scored else None
        s.scores.write(_line({
            "chunk": record.index,
            "start_s": round(record.start_s, 6),
            "end_s": round(record.end_s, 6),
            "status": record.status,
            "segment": record.segment,
            "latency_s": None if record.latency_s is None else round(record.latency_s, 6),
            "top": None if top is None else self.class_names[top],
            "top_score": None if top is None else round(float(record.scores[top]), 6),
            "scores": None if not scored else np.round(record.scores.astype(np.float64), 6).tolist(),
        }))
        if scored:
            s.rows.append((record.index, record.start_s, record.end_s, np.asarray(record.scores, np.float32)))

    def event(self, stream: str, event: dict[str, Any], what: str) -> None:
        s = self._streams[stream]
        s.events.write(_line({"what": what, **event}))
        if what == "end":
            s.ended.append(event)

    def close_stream(self, stream: str, summary: dict[str, Any]) -> None:
        s = self._streams.pop(stream)
        s.close()
        write_json(s.folder / "summary.json", {**summary, "meta": s.meta}, strict=True)
        if not s.rows:
            return
        comment = (f"oad live stream {stream}: source={s.meta.get('source')} checkpoint={s.meta.get('checkpoint')} "
                   f"run_id={s.meta.get('run_id')}")
        atomic_write_bytes(s.folder / "scores.csv", scores_csv_bytes(comment, self.class_names, s.rows))
        if self.plot:
            from oad.plots import plot_timeline

            try:
                plot_timeline(np.stack([r for *_, r in s.rows]), None, self.class_names, s.folder / "timeline.png",
                              fps=self.rate, title=f"{stream}: {len(s.rows)} scored chunks at {self.rate:g}/s",
                              ignore_index=self.ignore_index, events=sorted(s.ended, key=lambda e: e["start_chunk"]),
                              background_index=self.background_index or 0)
            except Exception as e:  # noqa: BLE001 - the picture is a convenience; the data files are written
                log.error("%s: timeline.png not drawn (%s)", stream, e)

    def close(self) -> None:
        for s in self._streams.values():
            s.close()
        self._streams.clear()
