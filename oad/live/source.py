"""Live sources: every input through one code path (PyAV, i.e. FFmpeg), cut into chunks as frames arrive.

A source is a file, an ``rtsp://``, ``http(s)://`` (HLS too), ``udp://``, ``srt://`` (or ``tcp://``,
``rtmp://``, ``rtp://``) URL, a V4L2 device (``/dev/videoN``, FFmpeg's ``v4l2`` format) or ``-`` (standard
input, FFmpeg's ``pipe:0``). :class:`LiveSource` decodes it in its own thread (PyAV releases the GIL
while decoding) and hands out complete chunks (:class:`LiveChunk`) through a callback.

Times: a frame's time is ``pts * time_base`` on the stream's own timeline, relative to the first frame
(the first frame is at 0 s, as :class:`oad.video.VideoReader` gives a file's frames). Chunks are cut by
the rule of :mod:`oad.video.decode` (:class:`ChunkCutter`): chunk ``i`` covers ``[i / rate, (i + 1) / rate)``,
its frame is the one shown at ``(i + 0.5) / rate``, its motion frames the consecutive frames around it.
A chunk is complete when a frame at or after its end has arrived (and, with a motion stream, the last
of its motion frames), or when the segment ends; the cutter keeps only the frames later chunks need.

Segments: a jump in the timestamps larger than ``gap_s`` seconds, a step backwards, or a reconnection
ends the current segment and starts a new one (:class:`SegmentStart`): the pipeline then resets the
stream's history (:meth:`oad.online.StreamPool.reset`) instead of carrying it across the gap. The segment
being ended is finished as a stream end is (its last chunks are complete: the last frame's end closes
them). Chunk indices continue without a hole: a new segment's first frame is at ``k / rate`` seconds,
``k`` being the number of chunks of the segments before it, and its frames follow at their own pts
differences from there. The chunk times therefore form one gap-free timeline per stream (``start_s =
index / rate``); what was skipped in the source's own timestamps (``jump_s``) is recorded per segment.

Robustness: PyAV's ``timeout=(open_timeout_s, stall_timeout_s)`` bounds opening and every read; a
source that gives no frame for ``stall_timeout_s`` is stalled (counted; the pipeline's watchdog also
gives up on a source whose read cannot be interrupted, :attr:`LiveSource.progress_at`). Network sources
reconnect after an error or a stall with exponential back-off (:class:`Reconnect`); the end of the data
(EOF) ends them, as it ends files and standard input, which never reconnect. ``realtime=True`` paces a
file at its own timestamps, as a camera delivers frames.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oad.video.decode import Chunk, chunk_span, frame_shown_at, middle_time, motion_indices, num_chunks_for

log = logging.getLogger(__name__)

__all__ = ["ChunkCutter", "LiveChunk", "LiveSource", "NETWORK_SCHEMES", "Reconnect", "SegmentStart", "SourceOptions",
           "SourceSpec", "parse_source", "stream_names"]

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")
KINDS = ("file", "network", "device", "stdin")
_NO_END = 1 << 62  # "the stream has not ended": motion windows are not shifted back from an unknown end


@dataclass(frozen=True)
class SourceSpec:
    """What a source string names.

    Attributes:
        text: the string as given.
        url: what PyAV opens (``pipe:0`` for ``-``).
        format: the FFmpeg demuxer forced (``v4l2`` for a device), or None (probed).
        kind: ``file``, ``network``, ``device`` or ``stdin``.
        name: the stream's default name (``clip`` for ``/x/clip.mp4``, ``video0``, ``stdin``, ``cam1`` for
            ``rtsp://host/cam1``).
    """

    text: str
    url: str
    format: str | None
    kind: str
    name: str

    @property
    def reconnects(self) -> bool:
        """Network sources reconnect; files, devices and standard input do not."""
        return self.kind == "network"


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "stream"


def parse_source(text: str, input_format: str | None = None) -> SourceSpec:
    """Classify a source string (see the module docstring); ``input_format`` forces a demuxer.

    Raises:
        ValueError: an empty string, or a file that does not exist.
    """
    text = str(text).strip()
    if not text:
        raise ValueError("source: empty")
    if text == "-":
        return SourceSpec(text, "pipe:0", input_format, "stdin", "stdin")
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in NETWORK_SCHEMES:
        rest = text.split("://", 1)[1].split("?", 1)[0]
        host, _, path = rest.partition("/")
        stem = Path(path).stem if path.strip("/") else host.split("@")[-1]
        return SourceSpec(text, text, input_format, "network", _clean(stem))
    if scheme:
        raise ValueError(f"source {text!r}: unknown scheme {scheme}:// (known: "
                         f"{', '.join(s + '://' for s in NETWORK_SCHEMES)}, a file, /dev/videoN or -)")
    if re.fullmatch(r"/dev/video\d+", text):
        return SourceSpec(text, text, input_format or "v4l2", "device", Path(text).name)
    if not Path(text).is_file():
        raise ValueError(f"source {text}: no such file (a live source is a file, a URL, /dev/videoN or -)")
    return SourceSpec(text, text, input_format, "file", _clean(Path(text).stem))


def stream_names(specs: list[SourceSpec]) -> list[str]:
    """One unique name per source: its own name, ``-2``, ``-3``, ... added to repeats."""
    seen: dict[str, int] = {}
    names = []
    for s in specs:
        n = seen.get(s.name, 0) + 1
        seen[s.name] = n
        names.append(s.name if n == 1 else f"{s.name}-{n}")
    while len(set(names)) != len(names):  # a given name that looked like a suffixed one ("a-2" next to two "a")
        names = [f"{n}-{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]
    return names


@dataclass(frozen=True)
class Reconnect:
    """Reconnection of a network source: after an error, wait ``initial_delay_s``, doubling at each
    failed try up to ``max_delay_s``; give up after ``tries`` tries in a row without a frame."""

    tries: int = 5
    initial_delay_s: float = 0.5
    max_delay_s: float = 10.0

    def __post_init__(self) -> None:
        if self.tries < 0 or self.initial_delay_s < 0 or self.max_delay_s < self.initial_delay_s:
            raise ValueError(f"reconnect: need tries >= 0 and 0 <= initial_delay_s <= max_delay_s, got {self}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt`` (1, 2, ...)."""
        return min(self.initial_delay_s * 2 ** (attempt - 1), self.max_delay_s)


@dataclass(frozen=True)
class SourceOptions:
    """How a source is read and cut.

    Attributes:
        rate: chunks per second.
        motion_pairs: ``K > 0``: each chunk carries ``K + 1`` motion frames (the flow stream).
        keep_frames: each chunk carries all its frames (a sink wants them).
        realtime: pace a file at its own timestamps.
        open_timeout_s: opening (connecting, probing) gives up after this.
        stall_timeout_s: no frame for this long: the source is stalled.
        gap_s: a forward jump in the timestamps larger than this starts a new segment.
        reconnect: network sources' reconnection.
    """

    rate: float
    motion_pairs: int = 0
    keep_frames: bool = False
    realtime: bool = False
    open_timeout_s: float = 10.0
    stall_timeout_s: float = 5.0
    gap_s: float = 2.0
    reconnect: Reconnect = field(default_factory=Reconnect)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.open_timeout_s <= 0 or self.stall_timeout_s <= 0 or self.gap_s <= 0:
            raise ValueError("rate, open_timeout_s, stall_timeout_s and gap_s must be > 0")


@dataclass
class LiveChunk:
    """A complete chunk of a live stream.

    Attributes:
        chunk: index, span, middle frame and motion frames (:class:`oad.video.Chunk`).
        arrival: ``time.monotonic()`` when the frame that completed it was decoded (or its segment ended).
        frames: every frame of the chunk ``(K, H, W, 3)`` uint8 when kept (``keep_frames``; the middle frame
            alone for a chunk no frame starts in), else None.
        frame_times: ``(K,)`` their times (seconds), with ``frames``.
        dropped: set by the pipeline's queue when it leaves the chunk out.
    """

    chunk: Chunk
    arrival: float
    frames: np.ndarray | None = None
    frame_times: np.ndarray | None = None
    dropped: bool = False


@dataclass(frozen=True)
class SegmentStart:
    """A new segment of a stream (see the module docstring).

    Attributes:
        first_chunk: the index of its first chunk.
        reason: ``start``, ``gap``, ``backwards`` or ``reconnect``.
        jump_s: the jump in the source's timestamps that caused it (None for start and reconnect).
    """

    first_chunk: int
    reason: str
    jump_s: float | None = None


def rgb(frame: Any) -> np.ndarray:
    """A decoded frame as RGB uint8 ``(H, W, 3)`` (a PyAV frame, or an array as is)."""
    return frame if isinstance(frame, np.ndarray) else frame.to_ndarray(format="rgb24")


class ChunkCutter:
    """Frames in (time order, times relative to the segment's first frame), complete chunks out, by the rule
    of :mod:`oad.video.decode` (the same chunks :func:`oad.video.chunk_frames` cuts from a file).

    Args:
        rate: chunks per second.
        motion_pairs: ``K > 0``: ``K + 1`` motion frames per chunk.
        keep_frames: every frame of a chunk goes with it.
        first_chunk: the index of the segment's first chunk (its time origin is ``first_chunk / rate``).
    """

    def __init__(self, rate: float, motion_pairs: int = 0, keep_frames: bool = False, first_chunk: int = 0):
        self.rate = float(rate)
        self.count = int(motion_pairs) + 1 if motion_pairs > 0 else 0
        self.keep_frames = bool(keep_frames)
        self.first_chunk = int(first_chunk)
        self.next = 0  # the segment's next chunk (local index)
        self.num_frames = 0  # frames pushed
        self._base = 0  # index of the oldest frame still kept
        self._times: list[float] = []
        self._frames: list[Any] = []
        self._rgb: dict[int, np.ndarray] = {}

    @property
    def chunks(self) -> int:
        """Chunks cut so far in this segment."""
        return self.next

    def push(self, frame: Any, t: float, arrival: float) -> list[LiveChunk]:
        """A frame at ``t`` seconds (non-decreasing); returns the chunks it completes."""
        self._times.append(float(t))
        self._frames.append(frame)
        self.num_frames += 1
        out = []
        while t >= chunk_span(self.next, self.rate)[1]:
            c = self._cut(self.next, arrival, ended=False)
            if c is None:  # its last motion frame has not arrived
                break
            out.append(c)
        return out

    def finish(self, end: float, arrival: float) -> list[LiveChunk]:
        """The segment ended, its last frame ending at ``end`` seconds: its remaining chunks."""
        if not self.num_frames:
            return []
        out = [self._cut(i, arrival, ended=True) for i in range(self.next, num_chunks_for(end, self.rate))]
        return [c for c in out if c is not None]

    def _image(self, k: int) -> np.ndarray:
        if k not in self._rgb:
            self._rgb[k] = rgb(self._frames[k - self._base])
        return self._rgb[k]

    def _cut(self, i: int, arrival: float, ended: bool) -> LiveChunk | None:
        starts = np.asarray(self._times)
        mid = self._base + int(frame_shown_at(starts, middle_time(i, self.rate)))
        motion = None
        if self.count:
            window = motion_indices(mid, self.count, self.num_frames if ended else _NO_END)
            if window[-1] >= self.num_frames:
                return None
            motion = np.stack([self._image(int(k)) for k in window])
        start, end = chunk_span(i, self.rate)
        frames = times = None
        if self.keep_frames:
            inside = [k for k in range(bisect.bisect_left(self._times, start), bisect.bisect_left(self._times, end))]
            inside = inside or [mid - self._base]
            frames = np.stack([self._image(self._base + k) for k in inside])
            times = (np.array([self._times[k] for k in inside]) + self.first_chunk / self.rate)
        g = self.first_chunk + i
        chunk = Chunk(g, *chunk_span(g, self.rate), self._image(mid), motion)
        self.next = i + 1
        self._prune()
        return LiveChunk(chunk, arrival, frames, times)

    def _prune(self) -> None:
        """Forget the frames no later chunk needs: those before the next chunk's middle frame, its motion
        window (``count - 1`` frames back: a window is shifted back at the end of a segment) and, with
        ``keep_frames``, its first frame."""
        starts = np.asarray(self._times)
        keep = self._base + int(frame_shown_at(starts, middle_time(self.next, self.rate)))
        if self.count:
            keep -= self.count - 1
        if self.keep_frames:
            keep = min(keep, self._base + bisect.bisect_left(self._times, chunk_span(self.next, self.rate)[0]))
        drop = max(0, keep - self._base)
        if drop:
            del self._times[:drop], self._frames[:drop]
            self._rgb = {k: v for k, v in self._rgb.items() if k >= self._base + drop}
            self._base += drop


Emit = Callable[[LiveChunk | SegmentStart], None]


class LiveSource:
    """One source, decoded in the calling thread by :meth:`run` (the pipeline gives it a thread).

    Args:
        spec: the source (:func:`parse_source`).
        name: the stream's name.
        options: how it is read and cut.

    Attributes (read by the pipeline while it runs):
        state: ``opening``, ``reading``, ``waiting`` (to reconnect) or ``ended``.
        progress_at: ``time.monotonic()`` of the last frame or state change (the stall watchdog's clock).
        end_reason: ``ended`` (end of the data), ``stopped``, ``stalled`` or ``failed: <error>``; None while
            it runs.
        frames, reconnects, stalls: counts; ``segments``: one dict per segment (``first_chunk, reason,
            jump_s``); ``fps``: the stream's average frame rate where known; ``width``, ``height``.
    """

    def __init__(self, spec: SourceSpec, name: str, options: SourceOptions):
        self.spec, self.name, self.options = spec, name, options
        self.stop_event = threading.Event()
        self.state = "opening"
        self.progress_at = time.monotonic()
        self.end_reason: str | None = None
        self.frames = self.reconnects = self.stalls = 0
        self.segments: list[dict] = []
        self.fps: float | None = None
        self.width = self.height = None
        self.started_at = self.ended_at = None

    def stop(self) -> None:
        """Ask :meth:`run` to end (it checks between frames; a blocked read ends at its timeout)."""
        self.stop_event.set()

    def _set(self, state: str) -> None:
        self.state, self.progress_at = state, time.monotonic()

    def _open(self):
        import av

        o = self.options
        container = av.open(self.spec.url, format=self.spec.format, timeout=(o.open_timeout_s, o.stall_timeout_s))
        if not container.streams.video:
            container.close()
            raise ValueError(f"{self.spec.text}: no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else self.fps
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        return container, stream

    def run(self, emit: Emit) -> None:
        """Decode until the source ends, fails, stalls for good or is stopped; ``emit`` every segment start
        and complete chunk, in order. Never raises: the reason is :attr:`end_reason`."""
        self.started_at = time.monotonic()
        try:
            self._run(emit)
        except Exception as e:  # noqa: BLE001 - a source's failure ends that source only
            log.error("%s: %s", self.name, e)
            self.end_reason = f"failed: {e}"
        finally:
            self.end_reason = self.end_reason or "ended"
            self.ended_at = time.monotonic()
            self._set("ended")

    def _run(self, emit: Emit) -> None:
        o, spec = self.options, self.spec
        failures = 0
        next_chunk = 0
        reason = "start"
        while not self.stop_event.is_set():
            self._set("opening")
            error: BaseException | None = None
            container = None
            try:
                container, stream = self._open()
            except Exception as e:  # noqa: BLE001 - any failure to open is retried or ends the source
                error = e
            if container is not None:
                try:
                    next_chunk, got, error = self._read(container, stream, emit, next_chunk, reason)
                finally:
                    container.close()
                if got:
                    failures = 0
            if self.stop_event.is_set():
                self.end_reason = self.end_reason or "stopped"
                return
            if error is None:  # the end of the data
                self.end_reason = "ended"
                return
            if not spec.reconnects:
                raise error
            failures += 1
            if failures > o.reconnect.tries:
                self.end_reason = f"failed: {error} (after {o.reconnect.tries} reconnection tries)"
                log.error("%s: %s", self.name, self.end_reason)
                return
            delay = o.reconnect.delay(failures)
            log.warning("%s: %s; reconnecting in %.2f s (try %d of %d)", self.name, error, delay, failures,
                        o.reconnect.tries)
            self._set("waiting")
            if self.stop_event.wait(delay):
                self.end_reason = "stopped"
                return
            self.reconnects += 1
            reason = "reconnect"

    def _read(self, container, stream, emit: Emit, next_chunk: int, reason: str
              ) -> tuple[int, bool, BaseException | None]:
        """Read one connection: ``(next chunk index, whether a frame came, the error that ended it or None)``."""
        o = self.options
        cutter: ChunkCutter | None = None
        origin = prev = prev_dur = 0.0
        got = False
        paced_from = None
        default_dur = 1.0 / self.fps if self.fps else 1.0 / o.rate
        self._set("reading")
        error = None
        try:
            for frame in container.decode(stream):
                arrival = time.monotonic()
                if frame.pts is not None:
                    ts = float(frame.pts * frame.time_base)
                elif frame.time is not None:
                    ts = float(frame.time)
                else:
                    ts = prev + prev_dur if cutter is not None else 0.0
                dur = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else default_dur
                jump = ts - prev
                if cutter is not None and (jump < 0 or jump > o.gap_s):
                    for c in cutter.finish(prev - origin + prev_dur, arrival):
                        emit(c)
                    next_chunk = cutter.first_chunk + cutter.chunks
                    cutter = None
                    reason = "backwards" if jump < 0 else "gap"
                    log.warning("%s: timestamps jump by %+.3f s: new segment at chunk %d", self.name, jump, next_chunk)
                if cutter is None:
                    cutter = ChunkCutter(o.rate, o.motion_pairs, o.keep_frames, first_chunk=next_chunk)
                    origin = ts
                    seg = SegmentStart(next_chunk, reason, None if reason in ("start", "reconnect") else jump)
                    self.segments.append({"first_chunk": seg.first_chunk, "reason": seg.reason, "jump_s": seg.jump_s})
                    emit(seg)
                    paced_from = None
                prev, prev_dur = ts, dur
                got = True
                self.frames += 1
                self.progress_at = arrival
                if o.realtime and self.spec.kind == "file":
                    if paced_from is None:
                        paced_from = arrival - (ts - origin)
                    if self.stop_event.wait(max(0.0, paced_from + (ts - origin) - time.monotonic())):
                        break
                    arrival = time.monotonic()
                for c in cutter.push(frame, ts - origin, arrival):
                    emit(c)
                if self.stop_event.is_set():
                    break
        except Exception as e:  # noqa: BLE001 - a read error: reconnect (network) or end the source
            error = e
            if time.monotonic() - self.progress_at >= o.stall_timeout_s * 0.9:
                self.stalls += 1
                log.warning("%s: no frame for %.1f s: stalled", self.name, o.stall_timeout_s)
        if cutter is not None:
            for c in cutter.finish(prev - origin + prev_dur, time.monotonic()):
                emit(c)
            next_chunk = cutter.first_chunk + cutter.chunks
        return next_chunk, got, error
