"""The rendered video of a live run (oad/live/render.py): the overlay drawn alone, and the MP4 written from
chunk records decoded back with PyAV (frame count, duration, the overlay visible in the pixels)."""

from __future__ import annotations

import numpy as np
import pytest

from oad.live import render
from oad.live.records import ChunkRecord
from oad.live.render import OverlayState, RenderSink, banner_height, draw_overlay, overlay_state

NAMES = ["Background", "Jump", "Throw", "Ambiguous"]
IGNORE, BACKGROUND = 3, 0
FPS, RATE, W, H = 25, 4.0, 160, 120


def frames_at(times: np.ndarray) -> np.ndarray:
    """``(K, H, W, 3)`` frames: a grey gradient with a white square moving along the bottom half."""
    yy, xx = np.mgrid[0:H, 0:W]
    out = []
    for t in times:
        img = np.empty((H, W, 3), np.uint8)
        img[..., 0] = 90 + xx // 4
        img[..., 1] = 90 + yy // 4
        img[..., 2] = 110
        x = int(40 * t) % (W - 20)
        img[80:100, x : x + 20] = 255
        out.append(img)
    return np.stack(out)


def records(seconds: float, dropped: set[int] = frozenset()) -> list[ChunkRecord]:
    """Chunk records of a ``seconds`` stream at FPS, with frames; chunk i's top class is ``1 + i % 2``."""
    times = np.arange(int(round(seconds * FPS))) / FPS
    out = []
    for i in range(int(np.ceil(seconds * RATE))):
        a, b = i / RATE, (i + 1) / RATE
        sel = times[(times >= a - 1e-9) & (times < b - 1e-9)]
        scores = np.array([0.1, 0.1, 0.1, 0.7], np.float32)  # the ignored class is never shown
        scores[1 + i % 2] = 0.6
        future = np.full((3, 4), 0.05, np.float32)
        future[:, 0] = 0.9  # background is never an upcoming action
        future[2, 2] = 0.4
        status = "dropped" if i in dropped else "scored"
        out.append(ChunkRecord("cam", i, a, b, status, scores if status == "scored" else None,
                               future if status == "scored" else None, 0.01 if status == "scored" else None,
                               frames_at(sel), sel))
    return out


def test_overlay_state_top_upcoming_and_dropped():
    recs = records(1.0, dropped={2})
    s0 = overlay_state(recs[0], None, NAMES, RATE, IGNORE, BACKGROUND)
    assert s0.top == ("Jump", pytest.approx(0.6)) and s0.highlight == 1
    assert s0.upcoming == ("Throw", pytest.approx(0.4), pytest.approx(0.75))  # future step 2: 3 / 4 s ahead
    assert s0.bars[IGNORE] == 0
    s2 = overlay_state(recs[2], s0, NAMES, RATE, IGNORE, BACKGROUND)
    assert s2.status == "dropped" and s2.top == s0.top and s2.upcoming is None  # stale scores, said so
    none = overlay_state(recs[0], None, NAMES, RATE, IGNORE, None)
    assert none.upcoming[0] == "Background"  # without a background class every class can come next


def test_draw_overlay_touches_the_banner_only():
    frame = frames_at(np.array([0.5]))[0]
    before = frame.copy()
    state = OverlayState("scored", 0.5, ("Jump", 0.6), ("Throw", 0.4, 0.75), np.array([0.1, 0.6, 0.1, 0.0]), 1)
    out = draw_overlay(frame, state)
    bh = banner_height(H)
    assert np.array_equal(frame, before)  # pure: the input is not modified
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.array_equal(out[bh:], frame[bh:])
    assert np.abs(out[:bh].astype(int) - frame[:bh]).mean() > 20
    dropped = draw_overlay(frame, OverlayState("dropped", 0.5, ("Jump", 0.6), None, state.bars, 1))
    assert not np.array_equal(dropped[:bh], out[:bh])  # "dropped" is drawn instead of the scores
    # the red badge of the "dropped" line is in the banner
    red = (dropped[:bh, :, 0] > 180) & (dropped[:bh, :, 1] < 80)
    assert red.sum() > 5 * W


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])  # H.264 where FFmpeg has it, else MPEG-4 part 2
def test_render_sink_writes_a_playable_mp4(tmp_path, monkeypatch, codec):
    av = pytest.importorskip("av")
    monkeypatch.setattr(render, "video_codec", lambda: codec)
    seconds = 3.0
    recs = records(seconds, dropped={5})
    sink = RenderSink(tmp_path, NAMES, RATE, IGNORE, BACKGROUND)
    assert sink.wants_frames
    sink.open_stream("cam", {"source": "test"})
    for r in recs:
        sink.chunk(r)
    assert sink.path("cam").is_file()  # written as the chunks come
    sink.close_stream("cam", {"chunks": len(recs)})
    sink.close()

    fed = np.concatenate([r.frames for r in recs])
    with av.open(str(tmp_path / "cam" / "render.mp4")) as c:
        vs = c.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(vs)]
        duration = float(c.duration / av.time_base) if c.duration else float(vs.duration * vs.time_base)
        assert vs.codec_context.name == {"libx264": "h264", "mpeg4": "mpeg4"}[codec]
        assert abs(float(vs.average_rate) - FPS) < 0.5
    assert len(decoded) == len(fed) == int(seconds * FPS)
    assert abs(duration - seconds) <= 1.0 / FPS + 1e-6
    bh = banner_height(H)
    for i in (0, 40, len(fed) - 1):
        out, inp = decoded[i].astype(int), fed[i].astype(int)
        assert np.abs(out[:bh] - inp[:bh]).mean() > 20, i  # the overlay is in the pixels
        assert np.abs(out[bh + 8 :] - inp[bh + 8 :]).mean() < 4, i  # and nowhere else (codec noise only)
    # the dropped chunk's frames (chunk 5: frames 32..37) show the red "dropped" badge, the others do not
    def red(img):
        return int(((img[:bh, :, 0] > 180) & (img[:bh, :, 1] < 120) & (img[:bh, :, 2] < 120)).sum())

    assert red(decoded[34]) > 5 * W and red(decoded[10]) == 0


def test_close_finalises_every_open_stream(tmp_path):
    av = pytest.importorskip("av")
    sink = RenderSink(tmp_path, NAMES, RATE, IGNORE, BACKGROUND)
    for name in ("a", "b"):
        sink.open_stream(name, {})
    for r in records(1.0):
        for name in ("a", "b"):
            r.stream = name
            sink.chunk(r)
    sink.close()  # no close_stream: the run was interrupted
    for name in ("a", "b"):
        with av.open(str(tmp_path / name / "render.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == FPS
