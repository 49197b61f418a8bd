"""A video people can watch: every frame of a live stream with the detector's answer drawn over it.

:class:`RenderSink` (``render=true`` of ``tools/stream.py``) writes ``<output_dir>/<stream>/render.mp4`` per
stream, frame by frame as the chunks come (no whole video is held in memory); the file is finalised when the
stream ends. Over each frame, in a banner at its top: the current top class and its score, the upcoming
action from the anticipation outputs (the most likely non-background class over the next chunks and how far
ahead), a strip of every class's score, and ``dropped`` on the chunks the model never saw. Drawing is the
pure function :func:`draw_overlay`; the encoder is H.264 where PyAV's FFmpeg has one, else MPEG-4 part 2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from oad.live.records import ChunkRecord, upcoming_action

__all__ = ["OverlayState", "RenderSink", "draw_overlay", "overlay_state", "video_codec"]

log = logging.getLogger(__name__)

# presentation timestamps of the written frames: the 90 kHz MPEG clock; MPEG-4 part 2 allows time bases only
# up to 1/65535, so milliseconds there
TIME_BASES = {"libx264": Fraction(1, 90000), "mpeg4": Fraction(1, 1000)}
BANNER = 0.24  # banner height, as a fraction of the frame height (at least MIN_BANNER pixels)
MIN_BANNER = 30
STATUS_TEXT = {"dropped": "dropped: the model never saw this chunk", "skipped": "skipped: non-finite features"}


@dataclass
class OverlayState:
    """What :func:`draw_overlay` draws over a frame.

    Attributes:
        status: the chunk's status (``scored``, ``dropped``, ``skipped``).
        time_s: the frame's time on the stream's timeline (seconds).
        top: ``(class name, score)`` of the current top class (None before the first scored chunk).
        upcoming: ``(class name, score, seconds ahead)`` of the most likely upcoming action (None without
            anticipation outputs).
        bars: ``(C,)`` scores of the strip (ignored class at 0); None draws no strip.
        highlight: the class whose bar is highlighted (the top class), or None.
    """

    status: str = "scored"
    time_s: float = 0.0
    top: tuple[str, float] | None = None
    upcoming: tuple[str, float, float] | None = None
    bars: np.ndarray | None = field(default=None, repr=False)
    highlight: int | None = None


def banner_height(height: int) -> int:
    """Rows of the banner drawn at the top of a ``height``-row frame (nothing is drawn below it)."""
    return min(height, max(MIN_BANNER, int(round(BANNER * height))))


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only."""
    return text.encode("ascii", "replace").decode()


def draw_overlay(frame: np.ndarray, state: OverlayState) -> np.ndarray:
    """The frame with the state drawn in a banner over its top rows (the rest of the frame untouched).

    Args:
        frame: ``(H, W, 3)`` RGB uint8 (not modified).
        state: what to draw.

    Returns:
        A new ``(H, W, 3)`` RGB uint8 frame.
    """
    import cv2

    out = np.array(frame, dtype=np.uint8, copy=True, order="C")
    h, w = out.shape[:2]
    bh = banner_height(h)
    band = out[:bh].astype(np.float32)
    out[:bh] = (0.35 * band + 0.65 * np.array([16, 16, 24], np.float32)).astype(np.uint8)  # darkened banner
    strip_w = max(8, w // 4) if state.bars is not None else 0
    text_w = w - strip_w
    scale = max(0.3, bh / 110.0)
    thick = 1 if bh < 80 else 2
    line = bh / 3.0
    font = cv2.FONT_HERSHEY_SIMPLEX

    def put(text: str, row: int, color: tuple[int, int, int]) -> None:
        y = int(round(line * (row + 0.78)))
        cv2.putText(out, _ascii(text), (max(2, w // 100), y), font, scale, color, thick, cv2.LINE_AA)

    if state.status in STATUS_TEXT:
        # a red badge behind the line: a chunk the model never saw must not pass for a scored one
        cv2.rectangle(out, (0, 0), (text_w - 1, int(round(line)) + 1), (200, 30, 30), -1)
        put(STATUS_TEXT[state.status], 0, (255, 255, 255))
        if state.top is not None:
            put(f"last scores: {state.top[0]}  {state.top[1]:.2f}", 1, (160, 160, 160))
    elif state.top is not None:
        put(f"{state.top[0]}  {state.top[1]:.2f}", 0, (255, 255, 255))
    else:
        put("waiting for the first scores", 0, (200, 200, 200))
    if state.upcoming is not None and state.status == "scored":
        name, score, ahead = state.upcoming
        put(f"next: {name} in {ahead:.2f} s ({score:.2f})", 1, (255, 210, 90))
    put(f"t {state.time_s:.2f} s", 2, (170, 170, 170))
    if text_w < w and state.bars is not None and len(state.bars):
        # the strip: one bar per class, height = score, at the banner's right
        c = len(state.bars)
        x0, x1, y0, y1 = text_w + 2, w - 2, 3, bh - 3
        cv2.rectangle(out, (x0, y0), (x1, y1), (90, 90, 100), 1)
        step = (x1 - x0 - 2) / c
        for k, s in enumerate(np.clip(np.asarray(state.bars, np.float32), 0.0, 1.0)):
            top_y = int(round(y1 - 1 - s * (y1 - y0 - 2)))
            a, b = int(round(x0 + 1 + k * step)), int(round(x0 + 1 + (k + 1) * step)) - 1
            color = (255, 210, 90) if k == state.highlight else (120, 190, 255)
            if state.status != "scored":
                color = (110, 110, 110)  # stale: the last scores the model gave
            if top_y < y1 - 1:
                cv2.rectangle(out, (a, top_y), (max(a, b), y1 - 1), color, -1)
    return out


def overlay_state(record: ChunkRecord, previous: OverlayState | None, class_names: list[str], rate: float,
                  ignore_index: int | None, background_index: int | None) -> OverlayState:
    """The overlay of a chunk: from its scores when scored; a dropped or skipped chunk keeps the last scores
    (shown stale) and says why it has none.

    The top class is the highest score of every class but the ignored one (background included: it is the
    model's answer); the upcoming action is the highest non-background, non-ignored score over every future
    step ``q`` of ``future_scores (Q, C)``, ``(q + 1) / rate`` seconds ahead.
    """
    if record.status != "scored" or record.scores is None:
        prev = previous or OverlayState()
        return OverlayState(record.status, record.start_s, prev.top, None, prev.bars, prev.highlight)
    scores = np.asarray(record.scores, np.float32).copy()
    if ignore_index is not None and 0 <= ignore_index < len(scores):
        scores[ignore_index] = 0.0
    k = int(np.argmax(scores))
    ahead = upcoming_action(record.future_scores, ignore_index, background_index)
    upcoming = None if ahead is None else (class_names[ahead[0]], ahead[1], (ahead[2] + 1) / rate)
    return OverlayState("scored", record.start_s, (class_names[k], float(scores[k])), upcoming, scores, k)


def video_codec() -> str:
    """The encoder: H.264 (``libx264``) where PyAV's FFmpeg has it, else MPEG-4 part 2."""
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 - FFmpeg builds without libx264 raise UnknownCodecError or similar
        return "mpeg4"


class _Writer:
    """One stream's MP4, opened at its first frames (their size and rate), frames encoded as they come."""

    def __init__(self, path: Path, first_times: np.ndarray, size: tuple[int, int], chunk_s: float):
        import av

        self.path = path
        times = np.asarray(first_times, np.float64)
        gaps = np.diff(times)
        gaps = gaps[gaps > 0]
        period = float(np.median(gaps)) if len(gaps) else chunk_s / max(len(times), 1)
        self.fps = Fraction(1.0 / period).limit_denominator(1001) if period > 0 else Fraction(25)
        self.period = period if period > 0 else 1 / 25
        w, h = size
        self.size = (w - w % 2, h - h % 2)  # yuv420p needs even sides
        self.container = av.open(str(path), "w")
        codec = video_codec()
        self.time_base = TIME_BASES[codec]
        self.stream = self.container.add_stream(codec, rate=self.fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = *self.size, "yuv420p"
        self.stream.codec_context.time_base = self.time_base
        if self.stream.codec_context.name == "mpeg4":
            self.stream.bit_rate = 4_000_000
        self.t0 = float(times[0])
        self.last_pts = -1
        self.frames = 0

    def write(self, frame: np.ndarray, t: float) -> None:
        import av

        h, w = frame.shape[:2]
        if (w, h) != self.size:  # an odd side, or a stream whose size changed (a reconnection)
            import cv2

            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        pts = max(int(round((t - self.t0) / self.time_base)), self.last_pts + 1)  # the stream's times, increasing
        vf.pts, vf.time_base = pts, self.time_base
        self.last_pts = pts
        for packet in self.stream.encode(vf):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()


class RenderSink:
    """Writes ``<output_dir>/<stream>/render.mp4`` for each stream: its frames with the overlay drawn.

    Args:
        output_dir: the run's folder (one subfolder per stream).
        class_names: the checkpoint's classes.
        rate: chunks per second (how far ahead the anticipation outputs look).
        ignore_index: the class never shown (THUMOS' Ambiguous), or None.
        background_index: the class never shown as an upcoming action, or None.
    """

    wants_frames = True

    def __init__(self, output_dir: Path, class_names: list[str], rate: float, ignore_index: int | None,
                 background_index: int | None):
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.rate = float(rate)
        self.ignore_index, self.background_index = ignore_index, background_index
        self._writers: dict[str, _Writer | None] = {}
        self._state: dict[str, OverlayState | None] = {}

    def path(self, stream: str) -> Path:
        """Where the stream's video is written."""
        return self.output_dir / stream / "render.mp4"

    def open_stream(self, stream: str, meta: dict[str, Any]) -> None:
        self.path(stream).parent.mkdir(parents=True, exist_ok=True)
        self._writers[stream] = None  # opened at the first frames: their size and rate
        self._state[stream] = None

    def chunk(self, record: ChunkRecord) -> None:
        state = overlay_state(record, self._state.get(record.stream), self.class_names, self.rate,
                              self.ignore_index, self.background_index)
        self._state[record.stream] = state
        if record.frames is None or not len(record.frames):
            return
        times = (record.frame_times if record.frame_times is not None
                 else np.linspace(record.start_s, record.end_s, len(record.frames), endpoint=False))
        writer = self._writers.get(record.stream)
        if writer is None:
            self.path(record.stream).parent.mkdir(parents=True, exist_ok=True)
            h, w = record.frames.shape[1:3]
            writer = _Writer(self.path(record.stream), times, (w, h), record.end_s - record.start_s)
            self._writers[record.stream] = writer
        for frame, t in zip(record.frames, times):
            state.time_s = float(t)
            writer.write(draw_overlay(frame, state), float(t))

    def event(self, stream: str, event: dict[str, Any], what: str) -> None:
        """Events are not drawn: the overlay shows the scores they come from."""

    def close_stream(self, stream: str, summary: dict[str, Any]) -> None:
        writer = self._writers.pop(stream, None)
        self._state.pop(stream, None)
        if writer is not None:
            writer.close()
            log.info("%s: %d frames rendered to %s", stream, writer.frames, writer.path)

    def close(self) -> None:
        for stream in list(self._writers):
            self.close_stream(stream, {})
