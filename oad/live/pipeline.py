"""The live pipeline: N sources, one model, answers as chunks arrive.

Threads: every source decodes in its own daemon thread (:meth:`oad.live.source.LiveSource.run`; PyAV
releases the GIL while decoding) into a bounded queue of complete chunks (frames only). One consumer (the
thread that calls :meth:`LivePipeline.run`) loops: it takes every stream's ready chunks, computes their
features in one backbone batch (:meth:`oad.video.FeatureExtractor.featurize`), steps every stream that has
a chunk ready in one :meth:`oad.online.StreamPool.step` (again for streams with more chunks ready), decides
the events (one :class:`oad.online.EventDetector` per stream) and hands records and events to the sinks
(:class:`oad.live.records.Sink`), all from this one thread, in each stream's chunk order.

Falling behind: a live source is never blocked. When a stream's queue already holds ``queue_chunks``
chunks waiting for the model, a chunk is dropped by the policy ``drop``: ``oldest`` (default: the oldest
waiting chunk is left out, so the newest answers, the ones that matter live, come first) or ``newest``
(the arriving chunk is left out). A dropped chunk is counted and reported as a
:class:`~oad.live.records.ChunkRecord` with ``status="dropped"``; the model never sees it. The stream's
history then goes from the chunk before the hole to the chunk after it, as for chunks skipped for
non-finite features (:mod:`oad.tasks.streaming`), rather than being reset: a drop is a short hole the
pipeline made itself in a continuous scene, and a reset would throw away the whole history (a long
memory, a recurrent state) at every overload, making the answers worse exactly when the machine
struggles. Gaps in the source itself (timestamps, reconnections) do reset it (:mod:`oad.live.source`). A
file read faster than real time (``realtime=false``) is not live: its decoder waits for room instead
(nothing is lost by waiting), so no chunk of it is dropped.

Latency of a scored chunk: from its arrival (``time.monotonic()`` when the decoder produced the frame that
completed it) to its scores being handed to the sinks. Per stream and overall: p50/p95/max latency,
scored, dropped and skipped chunks, and the real-time factor (stream seconds / wall seconds; a stream
paced by its source stays at about 1 when the pipeline keeps up, the overall factor of N such streams is
about N).

Failures and stops: a source that fails, stalls (the watchdog: no frame for ``stall_timeout_s``) or ends
closes its own stream (events closed, summary written) while the others go on. :meth:`LivePipeline.stop`
(SIGINT/SIGTERM while :meth:`run` runs in the main thread) stops the sources; the chunks already
decoded (queued, and the last partial chunk of each source, cut as at the end of a stream) are scored,
every stream's summary is written, and :meth:`run` returns normally. A source whose read does not end
within the grace time is left behind (its thread is a daemon) and its stream closed as ``stopped``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oad.live.records import ChunkRecord, Sink
from oad.live.source import LiveChunk, LiveSource, SegmentStart

log = logging.getLogger(__name__)

__all__ = ["DROP_POLICIES", "ChunkQueue", "LivePipeline", "latency_figures", "summary_lines"]

DROP_POLICIES = ("oldest", "newest")
_END = object()  # a stream's last queue item


class ChunkQueue:
    """One source's complete chunks waiting for the model; at most ``bound`` of them.

    Args:
        bound: chunks waiting at most.
        drop: ``oldest`` or ``newest`` (see the module docstring).
        block: wait for room instead of dropping (a file read faster than real time).
        wake: set on every put (the consumer waits on it).
        stop: ends a blocked wait.
        keep_frames: a dropped chunk keeps its frames (a sink wants them).

    Attributes:
        dropped: chunks dropped so far.
        max_pending: the most chunks ever waiting (never above ``bound``).
    """

    def __init__(self, bound: int, drop: str, block: bool, wake: threading.Event, stop: threading.Event,
                 keep_frames: bool = False):
        if bound < 1:
            raise ValueError(f"queue_chunks must be >= 1, got {bound}")
        if drop not in DROP_POLICIES:
            raise ValueError(f"drop must be one of {', '.join(DROP_POLICIES)}, got {drop!r}")
        self.bound, self.drop, self.block = int(bound), drop, bool(block)
        self._wake, self._stop, self._keep = wake, stop, keep_frames
        self._items: deque = deque()
        self._cond = threading.Condition()
        self.pending = 0
        self.max_pending = 0
        self.dropped = 0
        self.closed = False

    def _drop(self, c: LiveChunk) -> None:
        c.dropped = True
        c.chunk.motion = None  # the model will not see it: keep only what a sink may draw
        if not self._keep:
            c.frames = c.frame_times = None
        self.dropped += 1

    def put(self, item: LiveChunk | SegmentStart) -> None:
        """Queue ``item``; a chunk beyond the bound drops one (or, ``block``, waits for room)."""
        with self._cond:
            if self.closed:
                return
            if isinstance(item, LiveChunk):
                while self.block and self.pending >= self.bound and not self._stop.is_set():
                    self._cond.wait(0.1)
                if self.pending >= self.bound:
                    if self.drop == "newest":
                        self._drop(item)
                    else:
                        oldest = next(c for c in self._items if isinstance(c, LiveChunk) and not c.dropped)
                        self._drop(oldest)
                        self.pending -= 1
                if not item.dropped:
                    self.pending += 1
                    self.max_pending = max(self.max_pending, self.pending)
            self._items.append(item)
        self._wake.set()

    def close(self) -> None:
        """No more items: the stream's end marker is queued and later puts are ignored."""
        with self._cond:
            if not self.closed:
                self._items.append(_END)
                self.closed = True
        self._wake.set()

    def take(self) -> list:
        """Every queued item, oldest first."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self.pending = 0
            self._cond.notify_all()
        return items


def latency_figures(latencies: list[float]) -> dict[str, float] | None:
    """``{'p50', 'p95', 'max', 'mean'}`` seconds, or None without a scored chunk."""
    if not latencies:
        return None
    a = np.asarray(latencies, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "max": float(a.max()),
            "mean": float(a.mean())}


@dataclass
class _Stream:
    """A stream's running state (consumer side)."""

    name: str
    source: LiveSource
    queue: ChunkQueue
    events: Any
    thread: threading.Thread | None = None
    segment: int = -1
    scored: int = 0
    skipped: list = field(default_factory=list)
    dropped: int = 0
    chunks: int = 0
    num_events: int = 0
    latencies: list = field(default_factory=list)
    opened_at: float = 0.0
    abandoned: str | None = None
    stop_asked_at: float | None = None
    summary: dict | None = None


class LivePipeline:
    """N live sources through one feature extractor and one stream pool (see the module docstring).

    Args:
        sources: the sources, their names unique.
        extractor: the feature extractor (:class:`oad.video.FeatureExtractor`; ``featurize``).
        pool: the model's stream pool (:class:`oad.online.StreamPool`).
        make_events: a new :class:`oad.online.EventDetector` (one per stream).
        sinks: the outputs.
        queue_chunks: chunks waiting per stream at most.
        drop: ``oldest`` or ``newest``.
        meta: what every stream's ``open_stream`` meta and summary hold besides the stream's own facts.
    """

    def __init__(self, sources: list[LiveSource], extractor: Any, pool: Any, make_events: Callable[[], Any],
                 sinks: list[Sink], queue_chunks: int = 8, drop: str = "oldest", meta: dict[str, Any] | None = None):
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique, got {names}")
        if not sources:
            raise ValueError("no source")
        self.extractor, self.pool, self.sinks = extractor, pool, list(sinks)
        self.meta = dict(meta or {})
        self.rate = sources[0].options.rate
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.queue_chunks, self.drop = int(queue_chunks), drop
        self.streams = []
        for s in sources:
            block = s.spec.kind == "file" and not s.options.realtime
            q = ChunkQueue(queue_chunks, drop, block, self._wake, s.stop_event, keep_frames=s.options.keep_frames)
            self.streams.append(_Stream(s.name, s, q, make_events()))
        self.busy_s = 0.0

    def stop(self) -> None:
        """Stop the run (safe from a signal handler or another thread): see the module docstring."""
        self._stop.set()
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run until every stream has ended (or :meth:`stop`).

        Returns:
            ``{'streams': {name: summary}, 'overall': {...}}`` (the figures of the module docstring).
        """
        t0 = time.monotonic()
        handlers = self._install_signals()
        try:
            for st in self.streams:
                self._open(st)
            while any(st.summary is None for st in self.streams):
                self._wake.wait(0.05)
                self._wake.clear()
                self._check(time.monotonic())
                self._tick()
        except BaseException:
            for st in self.streams:  # every stream's files still get their summary
                st.source.stop()
                if st.summary is None:
                    st.abandoned = st.abandoned or "failed: the pipeline stopped on an error"
                    try:
                        self._close(st)
                    except Exception:  # noqa: BLE001 - the first error is the one raised
                        log.exception("%s: could not close the stream", st.name)
            raise
        finally:
            self._restore_signals(handlers)
            for sink in self.sinks:
                sink.close()
        wall = time.monotonic() - t0
        return {"streams": {st.name: st.summary for st in self.streams}, "overall": self._overall(wall)}

    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}

        def handler(signum, frame):
            log.warning("%s: stopping (the chunks already decoded are scored, the summaries written)",
                        signal.Signals(signum).name)
            self._restore_signals(old)  # a second signal acts as usual
            self.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return old

    @staticmethod
    def _restore_signals(old: dict) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)
        old.clear()

    def _open(self, st: _Stream) -> None:
        st.opened_at = time.monotonic()
        self.pool.open(st.name)
        meta = {**self.meta, "stream": st.name, "source": st.source.spec.text, "kind": st.source.spec.kind}
        for sink in self.sinks:
            sink.open_stream(st.name, meta)

        def decode() -> None:
            st.source.run(st.queue.put)
            st.queue.close()

        st.thread = threading.Thread(target=decode, name=f"oad-live-{st.name}", daemon=True)
        st.thread.start()

    def _check(self, now: float) -> None:
        """The stop request and the stall watchdog: leave behind a source that does not end or deliver."""
        for st in self.streams:
            if st.summary is not None or st.queue.closed:
                continue
            src, o = st.source, st.source.options
            if self._stop.is_set():
                if st.stop_asked_at is None:
                    st.stop_asked_at = now
                    src.stop()
                elif now - st.stop_asked_at > o.stall_timeout_s + 1.0:
                    self._abandon(st, "stopped")
                continue
            if src.state not in ("opening", "reading"):
                continue
            limit = o.stall_timeout_s + (o.open_timeout_s if src.state == "opening" else 0.0)
            if src.spec.reconnects:  # its own read timeout should have fired: a margin before giving up
                limit += o.stall_timeout_s + o.open_timeout_s
            if now - src.progress_at > limit:
                src.stalls += 1
                log.error("%s: no frame for %.1f s: stalled, giving up on it", st.name, now - src.progress_at)
                self._abandon(st, "stalled")

    def _abandon(self, st: _Stream, reason: str) -> None:
        st.abandoned = reason
        st.source.stop()
        st.queue.close()

    def _tick(self) -> None:
        taken = {st.name: st.queue.take() for st in self.streams if st.summary is None}
        if not any(taken.values()):
            return
        t0 = time.monotonic()
        ready = [it for items in taken.values() for it in items if isinstance(it, LiveChunk) and not it.dropped]
        feats = self.extractor.featurize([c.chunk for c in ready])
        vectors = {id(c): f.vector for c, f in zip(ready, feats)}
        by_name = {st.name: st for st in self.streams}
        todo = {name: deque(items) for name, items in taken.items() if items}
        while todo:
            batch: dict[str, tuple[LiveChunk, np.ndarray]] = {}
            for name in list(todo):
                st, items = by_name[name], todo[name]
                while items:
                    it = items.popleft()
                    if it is _END:
                        self._close(st)
                    elif isinstance(it, SegmentStart):
                        self._segment(st, it)
                    elif it.dropped:
                        st.dropped += 1
                        self._record(st, it, "dropped")
                    elif not np.isfinite(vectors[id(it)]).all():
                        v = vectors[id(it)]
                        reason = f"{int((~np.isfinite(v)).sum())} of {v.size} feature values are NaN/Inf"
                        log.error("%s: chunk %d skipped: %s (not fed to the model)", name, it.chunk.index, reason)
                        st.skipped.append({"chunk": it.chunk.index, "start_s": it.chunk.start, "end_s": it.chunk.end,
                                           "reason": reason})
                        self._record(st, it, "skipped")
                    else:
                        batch[name] = (it, vectors[id(it)])
                        break
                if not items:
                    del todo[name]
            if batch:
                self._step(batch, by_name)
        self.busy_s += time.monotonic() - t0

    def _step(self, batch: dict[str, tuple[LiveChunk, np.ndarray]], by_name: dict[str, _Stream]) -> None:
        outs = self.pool.step({name: v for name, (_, v) in batch.items()})
        for name, (it, _) in batch.items():
            st = by_name[name]
            scores = outs[name].scores.float().cpu().numpy()
            future = outs[name].future_scores.float().cpu().numpy()
            if not np.isfinite(scores).all():
                raise ValueError(f"{name}: chunk {it.chunk.index}: the model's scores are NaN/Inf for finite "
                                 "features (the checkpoint's weights are broken?)")
            st.events.t = it.chunk.index  # events keep the stream's chunk numbers across dropped/skipped chunks
            decisions = st.events.update(scores)
            st.scored += 1
            latency = time.monotonic() - it.arrival
            st.latencies.append(latency)
            self._record(st, it, "scored", scores, future, latency)
            for d in decisions:
                ev = {k: v for k, v in d.items() if k != "decision"}
                st.num_events += d["decision"] == "start"
                for sink in self.sinks:
                    sink.event(name, ev, d["decision"])

    def _record(self, st: _Stream, it: LiveChunk, status: str, scores: np.ndarray | None = None,
                future: np.ndarray | None = None, latency: float | None = None) -> None:
        c = it.chunk
        st.chunks += 1
        rec = ChunkRecord(st.name, c.index, c.start, c.end, status, scores, future, latency, it.frames,
                          it.frame_times, max(st.segment, 0))
        for sink in self.sinks:
            sink.chunk(rec)

    def _close_events(self, st: _Stream) -> None:
        """Close the stream's open events (at a segment's or the stream's end) and tell the sinks."""
        n = len(st.events.events)
        st.events.finish()
        for ev in st.events.events[n:]:
            for sink in self.sinks:
                sink.event(st.name, ev, "end")

    def _segment(self, st: _Stream, seg: SegmentStart) -> None:
        if st.segment >= 0:
            log.warning("%s: new segment at chunk %d (%s): the model's history is reset", st.name, seg.first_chunk,
                        seg.reason)
            self.pool.reset(st.name)
            self._close_events(st)
        st.segment += 1

    def _close(self, st: _Stream) -> None:
        self._close_events(st)
        self.pool.close(st.name)
        src = st.source
        wall = time.monotonic() - st.opened_at
        stream_s = st.chunks / self.rate
        st.summary = {
            "stream": st.name,
            "source": src.spec.text,
            "kind": src.spec.kind,
            "end_reason": st.abandoned or src.end_reason or "ended",
            "chunks": st.chunks,
            "scored_chunks": st.scored,
            "dropped_chunks": st.dropped,
            "skipped_chunks": len(st.skipped),
            "skipped": st.skipped,
            "latency_s": latency_figures(st.latencies),
            "stream_s": stream_s,
            "wall_s": wall,
            "real_time_factor": stream_s / max(wall, 1e-9),
            "events": st.num_events,
            "frames": src.frames,
            "fps": src.fps,
            "size": [src.width, src.height],
            "reconnects": src.reconnects,
            "stalls": src.stalls,
            "segments": list(src.segments),
            "queue": {"bound": st.queue.bound, "max_pending": st.queue.max_pending, "drop": st.queue.drop,
                      "blocking": st.queue.block},
        }
        log.info("%s: %s after %d chunks (%d scored, %d dropped)", st.name, st.summary["end_reason"], st.chunks,
                 st.scored, st.dropped)
        for sink in self.sinks:
            sink.close_stream(st.name, st.summary)

    def _overall(self, wall: float) -> dict[str, Any]:
        sums = [st.summary for st in self.streams]
        stream_s = sum(s["stream_s"] for s in sums)
        return {
            "streams": len(sums),
            "chunks": sum(s["chunks"] for s in sums),
            "scored_chunks": sum(s["scored_chunks"] for s in sums),
            "dropped_chunks": sum(s["dropped_chunks"] for s in sums),
            "skipped_chunks": sum(s["skipped_chunks"] for s in sums),
            "latency_s": latency_figures([x for st in self.streams for x in st.latencies]),
            "stream_s": stream_s,
            "wall_s": wall,
            "real_time_factor": stream_s / max(wall, 1e-9),
            "busy_s": self.busy_s,
            "engine_calls": getattr(self.pool, "engine_calls", None),
            "end_reasons": {s["stream"]: s["end_reason"] for s in sums},
        }


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1e3 * x:.0f} ms"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What ``tools/stream.py`` prints after a live run (the last line: the overall real-time factor)."""
    lines = []
    for name, s in result["streams"].items():
        lat = s["latency_s"] or {}
        lines.append(f"{name}: {s['end_reason']}; {s['scored_chunks']} scored, {s['dropped_chunks']} dropped, "
                     f"{s['skipped_chunks']} skipped of {s['chunks']} chunks ({s['stream_s']:.2f} s); latency p50 "
                     f"{_ms(lat.get('p50'))}, p95 {_ms(lat.get('p95'))}, max {_ms(lat.get('max'))}; real-time "
                     f"factor {s['real_time_factor']:.2f}")
    o = result["overall"]
    lat = o["latency_s"] or {}
    lines.append(f"all {o['streams']} streams: {o['scored_chunks']} scored, {o['dropped_chunks']} dropped; latency "
                 f"p50 {_ms(lat.get('p50'))}, p95 {_ms(lat.get('p95'))}, max {_ms(lat.get('max'))}")
    if result.get("output_dir"):
        lines.append(f"outputs -> {result['output_dir']}/<stream>/ (scores.jsonl, events.jsonl, summary.json)")
    lines.append(f"real-time factor: {o['real_time_factor']:.2f} (stream seconds / wall seconds, all streams)")
    return lines
