"""Tests of live video (``oad/live/``: sources, pipeline, incremental outputs; ``tools/stream.py source=``).

Videos are made here with PyAV (moving shapes, MPEG-4 in MPEG-TS or MP4) and served as live streams by a
Python HTTP server on 127.0.0.1 that sends the bytes at the video's own pace; the server can be killed
mid-stream. Backbones are resnet18 with random weights on 56 px crops and the checkpoint is a tiny OadTR, so
a run takes seconds. Every wait is bounded (timeouts everywhere, daemon threads).
"""

from __future__ import annotations

import http.server
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from oad.live.pipeline import ChunkQueue
from oad.live.source import (ChunkCutter, LiveChunk, LiveSource, SegmentStart, SourceOptions, parse_source,
                             stream_names)
from oad.video import Chunk, frame_shown_at, middle_time, motion_indices, num_chunks_for
from tests.conftest import REPO, compose_cfg
from tests.test_streaming import save_small_checkpoint

av = pytest.importorskip("av")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

W, H, FPS, RATE = 96, 64, 25, 4.0


def picture(i: int) -> np.ndarray:
    """Frame ``i`` of a scene with moving shapes: a gradient, a red box sliding right, a blue disc
    circling, a bar growing."""
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([40 + x * 0.8, 60 + y * 1.2, np.full_like(x, 90.0)], -1)
    bx = (3 * i) % (W - 20)
    img[10:28, bx:bx + 20] = (230, 40, 30)
    cx, cy = W / 2 + 25 * np.cos(i / 8), H / 2 + 15 * np.sin(i / 8)
    img[(x - cx) ** 2 + (y - cy) ** 2 < 64] = (30, 60, 230)
    img[H - 6:, : (i * 2) % W] = 250
    return img.clip(0, 255).astype(np.uint8)


def encode(n: int, fmt: str = "mpegts", pts: list[int] | None = None) -> bytes:
    """``n`` frames at 25 fps as MPEG-4 video in ``fmt`` (frame ``i`` at ``pts[i] / 25`` s)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream("mpeg4", rate=FPS)
        s.width, s.height, s.pix_fmt, s.bit_rate = W, H, "yuv420p", 1_500_000
        tb = Fraction(1, FPS)
        s.codec_context.time_base = tb
        for i in range(n):
            f = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            f.pts, f.time_base = (i if pts is None else pts[i]), tb
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


class LiveServer:
    """Serves ``data`` over HTTP on 127.0.0.1 at the pace of a ``duration``-second live stream (every
    path, every connection from the start); :meth:`kill` drops the connections and refuses new ones."""

    def __init__(self, data: bytes, duration: float, pieces: int = 25):
        self.killed = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                t0 = time.monotonic()
                for k in range(pieces):
                    if server.killed.wait(max(0.0, t0 + k * duration / pieces - time.monotonic())):
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    try:
                        self.wfile.write(data[k * len(data) // pieces:(k + 1) * len(data) // pieces])
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name: str = "live.ts") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def kill(self) -> None:
        self.killed.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny OadTR on 512-d features, and beside it ``resnet18.pth``: resnet18 weights drawn once (seeded),
    so that every run has the same backbone (``weights=random`` would draw new ones at every run)."""
    import torch
    from torchvision.models import get_model

    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    torch.save(get_model("resnet18", weights=None).state_dict(), folder / "resnet18.pth")
    save_small_checkpoint(folder / "r18.ckpt", 512, [512])
    return folder / "r18.ckpt"


def live_cfg(ckpt: Path, out: Path, **over):
    args = {"backbone.name": "resnet18", "backbone.weights": ckpt.parent / "resnet18.pth", "resize": 64, "crop": 56, "progress": "false", "plot": "false", "ckpt_path": ckpt,
            "open_timeout_s": 5, "stall_timeout_s": 3, "reconnect.tries": 2, "reconnect.initial_delay_s": 0.1,
            "reconnect.max_delay_s": 0.2, **over}
    return compose_cfg("stream", [f"{k}={v}" for k, v in args.items()], out)


def read_jsonl(path: Path) -> list[dict]:
    """Every line of a JSONL file, each parsed strictly (no NaN tokens): a torn line fails."""
    def refuse(token):
        raise ValueError(f"{path}: {token} in a line")

    text = path.read_text()
    assert text == "" or text.endswith("\n"), f"{path}: its last line is torn"
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def stream_files(folder: Path) -> tuple[list[dict], list[dict], dict]:
    """scores.jsonl, events.jsonl and summary.json of one stream, all parsed."""
    return (read_jsonl(folder / "scores.jsonl"), read_jsonl(folder / "events.jsonl"),
            json.loads((folder / "summary.json").read_text()))


def scores_of(lines: list[dict]) -> np.ndarray:
    return np.array([line["scores"] for line in lines if line["status"] == "scored"])


# ---------------------------------------------------------------------------------------------------
# Sources and chunking (no model)
# ---------------------------------------------------------------------------------------------------


def test_source_kinds_and_unique_names(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    assert parse_source("-").url == "pipe:0" and parse_source("-").kind == "stdin"
    cam = parse_source("/dev/video2")
    assert (cam.kind, cam.format, cam.name) == ("device", "v4l2", "video2")
    for url, name in [("rtsp://user:pw@10.0.0.5:554/cam1?tcp", "cam1"), ("http://h/live/feed.m3u8", "feed"),
                      ("udp://239.0.0.1:1234", "239.0.0.1_1234"), ("srt://host:9000", "host_9000")]:
        spec = parse_source(url)
        assert spec.kind == "network" and spec.reconnects and spec.name == name, url
    assert parse_source(str(clip)).kind == "file" and not parse_source(str(clip)).reconnects
    with pytest.raises(ValueError, match="no such file"):
        parse_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(ValueError, match="unknown scheme"):
        parse_source("gopher://x/y")
    specs = [parse_source(str(clip)), parse_source(str(clip)), parse_source("-")]
    assert stream_names(specs) == ["clip", "clip-2", "stdin"]


def test_cutter_cuts_the_chunks_of_the_file_rule():
    """Frames pushed one by one (variable frame rate, a pause, motion windows, all frames kept) give the
    chunks the whole-file rule of oad.video.decode gives: the same middle frames and motion windows."""
    rng = np.random.default_rng(0)
    starts = np.cumsum(np.r_[0.0, rng.uniform(0.02, 0.09, 60), 0.7, rng.uniform(0.02, 0.05, 30)])
    n, pairs = len(starts), 2
    end = starts[-1] + 0.04
    total = num_chunks_for(end, RATE)
    mids = frame_shown_at(starts, middle_time(np.arange(total), RATE))
    cut = ChunkCutter(RATE, motion_pairs=pairs, keep_frames=True, first_chunk=5)
    frames = [np.full((2, 2, 3), k, np.uint8) for k in range(n)]  # a frame's pixels say which it is
    got: list[LiveChunk] = []
    for k, t in enumerate(starts):
        new = cut.push(frames[k], t, arrival=float(k))
        for c in new:  # complete only once a frame at or after its end and its motion frames are there
            assert t >= c.chunk.end - 5 / RATE and c.arrival == k
        got += new
    got += cut.finish(end, arrival=-1.0)
    assert [c.chunk.index for c in got] == list(range(5, 5 + total))
    for i, c in enumerate(got):
        assert c.chunk.start == (5 + i) / RATE and c.chunk.end == (6 + i) / RATE
        assert c.chunk.frame[0, 0, 0] == mids[i]
        assert c.chunk.motion[:, 0, 0, 0].tolist() == motion_indices(mids[i], pairs + 1, n).tolist()
        inside = np.flatnonzero((starts >= i / RATE) & (starts < (i + 1) / RATE))
        assert c.frames[:, 0, 0, 0].tolist() == (inside.tolist() or [int(mids[i])])
    assert len(cut._frames) < 20  # only what later chunks need is kept


def test_queue_drops_by_policy_and_stays_bounded():
    def chunk(i: int) -> LiveChunk:
        return LiveChunk(Chunk(i, i / RATE, (i + 1) / RATE, np.zeros((2, 2, 3), np.uint8)), arrival=0.0)

    for drop, kept in [("oldest", [7, 8, 9]), ("newest", [0, 1, 2])]:
        q = ChunkQueue(3, drop, block=False, wake=threading.Event(), stop=threading.Event())
        q.put(SegmentStart(0, "start"))
        for i in range(10):
            q.put(chunk(i))
            assert q.pending <= 3
        items = q.take()
        assert isinstance(items[0], SegmentStart) and [c.chunk.index for c in items[1:]] == list(range(10))
        assert [c.chunk.index for c in items[1:] if not c.dropped] == kept and q.dropped == 7 and q.max_pending == 3
    with pytest.raises(ValueError, match="drop must be"):
        ChunkQueue(3, "random", False, threading.Event(), threading.Event())


def run_source(source: LiveSource, timeout: float = 30.0) -> list:
    items: list = []
    t = threading.Thread(target=source.run, args=(items.append,), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the source did not end in time"
    return items


def test_a_jump_or_a_step_back_in_the_timestamps_starts_a_segment(tmp_path):
    """Frames 0-29 at 25 fps, then a 10 s jump, then a step back: three segments, chunk indices going on
    without a hole (each segment starts at the next index), every chunk on the gap-free timeline."""
    pts = list(range(30)) + [250 + k for k in range(20)] + [100 + k for k in range(25)]
    path = tmp_path / "jumps.ts"  # two MPEG-TS streams back to back: the second one's clock is behind
    path.write_bytes(encode(50, pts=pts[:50]) + encode(25, pts=pts[50:]))
    src = LiveSource(parse_source(str(path)), "jumps", SourceOptions(rate=RATE, gap_s=2.0))
    items = run_source(src)
    segs = [it for it in items if isinstance(it, SegmentStart)]
    chunks = [it.chunk for it in items if isinstance(it, LiveChunk)]
    assert [(s.reason, s.first_chunk) for s in segs] == [("start", 0), ("gap", 5), ("backwards", 9)]
    assert segs[1].jump_s == pytest.approx(221 / FPS) and segs[2].jump_s == pytest.approx(-169 / FPS)
    assert [c.index for c in chunks] == list(range(len(chunks))) and len(chunks) == 9 + 4
    assert all(c.start == c.index / RATE for c in chunks)
    assert src.end_reason == "ended" and src.frames == len(pts) and len(src.segments) == 3


# ---------------------------------------------------------------------------------------------------
# The pipeline end to end (in process)
# ---------------------------------------------------------------------------------------------------


def test_http_live_stream_equals_the_same_bytes_from_a_file(tmp_path, ckpt):
    """Acceptance 1a: a 3 s video served live over HTTP at its own pace: 12 chunks (within 1 of 3 s x 4/s),
    scores equal to streaming the same MPEG-TS bytes from a file, latency figures in the outputs."""
    from oad.tasks.streaming import stream, summary_lines

    n = 3 * FPS
    data = encode(n)
    (tmp_path / "clip.ts").write_bytes(data)
    server = LiveServer(data, duration=n / FPS)
    t0 = time.monotonic()
    live = stream(live_cfg(ckpt, tmp_path / "http", source=server.url("clip.ts"), queue_chunks=64))
    took = time.monotonic() - t0
    server.kill()
    assert took >= 2.0, "the server paces the stream: it cannot be read faster than about real time"
    stream(live_cfg(ckpt, tmp_path / "file", source=tmp_path / "clip.ts", queue_chunks=64))

    lines, events, summary = stream_files(tmp_path / "http" / "clip")
    flines, _, fsummary = stream_files(tmp_path / "file" / "clip")
    assert abs(len(lines) - n / FPS * RATE) <= 1 and [x["chunk"] for x in lines] == list(range(len(lines)))
    assert {x["status"] for x in lines} == {"scored"} and len(flines) == len(lines)
    np.testing.assert_allclose(scores_of(lines), scores_of(flines), atol=1e-5, rtol=0)
    assert scores_of(lines).std(0).max() > 1e-3  # the scores move: the comparison is not between constants
    for x in lines:
        assert 0 < x["latency_s"] < 10 and x["top"] == live["meta"]["class_names"][int(np.argmax(x["scores"]))]
    lat = summary["latency_s"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["max"] == pytest.approx(max(x["latency_s"] for x in lines), abs=1e-6)
    assert summary["end_reason"] == "ended" and summary["kind"] == "network" and fsummary["kind"] == "file"
    assert summary["scored_chunks"] == len(lines) and summary["dropped_chunks"] == 0
    assert summary["meta"]["source"] == server.url("clip.ts") and summary["meta"]["random_weights"] is False
    assert 0.3 < summary["real_time_factor"] < 1.5 and fsummary["real_time_factor"] > summary["real_time_factor"]
    overall = json.loads((tmp_path / "http" / "summary.json").read_text())["overall"]
    assert overall["scored_chunks"] == len(lines) and overall["latency_s"]["max"] == lat["max"]
    assert summary_lines(live)[-1].startswith("real-time factor: ")
    for e in events:
        assert e["what"] in ("start", "end") and e["class_name"] not in ("Background", "Ambiguous")


def test_live_file_equals_the_decord_video_path(tmp_path, ckpt):
    """The same MP4 through PyAV (source=) and decord (video=): the same frames, so the same scores; with
    the flow stream too (the same motion windows, also those shifted back at the end of the video)."""
    from oad.tasks.streaming import stream

    (tmp_path / "clip.mp4").write_bytes(encode(2 * FPS + 7, fmt="mp4"))
    save_small_checkpoint(tmp_path / "two.ckpt", 1024, [512, 512])
    flow = {"ckpt_path": tmp_path / "two.ckpt", "flow": "true", "flow_backbone.pairs": 3}
    for name, over in [("rgb", {}), ("flow", flow)]:
        stream(live_cfg(ckpt, tmp_path / name / "live", source=tmp_path / "clip.mp4", **over))
        stream(live_cfg(ckpt, tmp_path / name / "decord", video=tmp_path / "clip.mp4", **over))
        lines, _, _ = stream_files(tmp_path / name / "live" / "clip")
        offline = json.loads((tmp_path / name / "decord" / "scores.json").read_text())
        assert [x["chunk"] for x in lines] == offline["chunk"] and len(lines) == 10
        np.testing.assert_allclose(scores_of(lines), np.array(offline["scores"]), atol=1e-5, rtol=0)


def test_a_slow_model_drops_chunks_counts_them_and_keeps_the_queue_bounded(tmp_path, ckpt, monkeypatch):
    """Acceptance 1b: each online step made 0.5 s long against a source paced at 4 chunks/s: chunks are
    dropped (oldest first), each written as a dropped line and counted, the queue never holds more than
    queue_chunks, and the run ends soon after the source."""
    from oad.online.pool import StreamPool
    from oad.tasks.streaming import stream

    step = StreamPool.step

    def slow(self, chunks):
        time.sleep(0.5)
        return step(self, chunks)

    monkeypatch.setattr(StreamPool, "step", slow)
    (tmp_path / "clip.ts").write_bytes(encode(3 * FPS))
    t0 = time.monotonic()
    res = stream(live_cfg(ckpt, tmp_path / "out", source=tmp_path / "clip.ts", realtime="true", queue_chunks=2))
    assert time.monotonic() - t0 < 3 + 3 * 0.5 + 10
    lines, _, summary = stream_files(tmp_path / "out" / "clip")
    assert [x["chunk"] for x in lines] == list(range(12))  # every chunk once, in order, scored or dropped
    dropped = [x for x in lines if x["status"] == "dropped"]
    assert dropped and summary["dropped_chunks"] == len(dropped) == res["overall"]["dropped_chunks"]
    assert all(x["scores"] is None and x["latency_s"] is None for x in dropped)
    assert summary["scored_chunks"] + summary["dropped_chunks"] == summary["chunks"] == 12
    assert summary["queue"] == {"bound": 2, "max_pending": 2, "drop": "oldest", "blocking": False}
    assert lines[-1]["status"] == "scored"  # the newest chunks are the ones kept


def test_a_killed_server_ends_the_stream_cleanly_with_valid_files(tmp_path, ckpt):
    """Acceptance 1c: the server dies 1.5 s into a 4 s stream; the client tries to reconnect (back-off,
    2 tries), gives up and ends the stream: its files are complete and parse."""
    from oad.tasks.streaming import stream

    server = LiveServer(encode(4 * FPS), duration=4.0)
    threading.Timer(1.5, server.kill).start()
    t0 = time.monotonic()
    res = stream(live_cfg(ckpt, tmp_path / "out", source=server.url("cam.ts")))
    assert time.monotonic() - t0 < 20
    lines, events, summary = stream_files(tmp_path / "out" / "cam")
    assert 0 < len(lines) < 16 and [x["chunk"] for x in lines] == list(range(len(lines)))
    assert summary["end_reason"] == res["streams"]["cam"]["end_reason"]
    # the connection broke before its Content-Length (an I/O error, not an end): 2 reconnections refused
    assert summary["end_reason"].startswith("failed") and "Connection refused" in summary["end_reason"]
    assert summary["reconnects"] == 2 and summary["chunks"] == len(lines) and summary["meta"]["source"]
    assert all(e["what"] in ("start", "end") for e in events)


def test_four_sources_one_failing_the_others_complete(tmp_path, ckpt):
    """Acceptance 2: four live HTTP sources in one process, one killed mid-way: the other three finish
    with complete outputs (every chunk scored)."""
    from oad.tasks.streaming import stream

    data = encode(2 * FPS + 10)  # 2.4 s: 10 chunks
    servers = [LiveServer(data, duration=2.4) for _ in range(4)]
    urls = [s.url(f"{name}.ts") for s, name in zip(servers, "abcd")]
    threading.Timer(1.0, servers[3].kill).start()
    res = stream(live_cfg(ckpt, tmp_path / "out", sources="[" + ",".join(f"'{u}'" for u in urls) + "]",
                          queue_chunks=64))
    for s in servers[:3]:
        s.kill()
    assert list(res["streams"]) == ["a", "b", "c", "d"]
    first = None
    for name in "abc":
        lines, _, summary = stream_files(tmp_path / "out" / name)
        assert summary["end_reason"] == "ended" and summary["scored_chunks"] == len(lines) == 10
        assert (tmp_path / "out" / name / "scores.csv").is_file()
        first = scores_of(lines) if first is None else first
        np.testing.assert_allclose(scores_of(lines), first, atol=1e-5, rtol=0)  # same video, own state each
    lines, _, summary = stream_files(tmp_path / "out" / "d")
    assert len(lines) < 10 and summary["chunks"] == len(lines)
    assert res["overall"]["streams"] == 4 and res["overall"]["end_reasons"]["a"] == "ended"


# ---------------------------------------------------------------------------------------------------
# tools/stream.py as a process: kill -9 and SIGINT
# ---------------------------------------------------------------------------------------------------


def start_tool(tmp_path: Path, ckpt: Path, seconds: int) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "clip.ts").write_bytes(encode(seconds * FPS))
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "tools" / "stream.py"), f"source={tmp_path / 'clip.ts'}", "realtime=true",
           f"ckpt_path={ckpt}", f"output_dir={out}", "backbone.name=resnet18",
           f"backbone.weights={ckpt.parent / 'resnet18.pth'}", "resize=64", "crop=56", "plot=false", "events.on_threshold=0.05",
           "events.off_threshold=0.01", "events.min_length=1", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, out / "clip"


def wait_for_lines(proc: subprocess.Popen, path: Path, n: int, timeout: float = 90.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.is_file() and path.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the tool ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {n} lines in {path} after {timeout} s")


@pytest.mark.slow  # a tools/stream.py process: about 15-20 s on a loaded 2-core machine
def test_kill_9_leaves_every_line_valid(tmp_path, ckpt):
    proc, folder = start_tool(tmp_path, ckpt, seconds=30)
    try:
        wait_for_lines(proc, folder / "scores.jsonl", 4)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -9
    finally:
        proc.kill()
    lines = read_jsonl(folder / "scores.jsonl")
    assert len(lines) >= 4 and [x["chunk"] for x in lines] == list(range(len(lines)))
    read_jsonl(folder / "events.jsonl")
    assert not (folder / "summary.json").exists()


@pytest.mark.slow  # a tools/stream.py process: about 15-20 s on a loaded 2-core machine
def test_sigint_finishes_cleanly(tmp_path, ckpt):
    proc, folder = start_tool(tmp_path, ckpt, seconds=30)
    try:
        wait_for_lines(proc, folder / "scores.jsonl", 3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1].startswith("real-time factor: ")
    lines, events, summary = stream_files(folder)
    assert summary["end_reason"] == "stopped" and summary["chunks"] == len(lines) < 120
    assert summary["scored_chunks"] + summary["dropped_chunks"] == len(lines)
    assert sum(e["what"] == "start" for e in events) == sum(e["what"] == "end" for e in events)  # all closed
    assert json.loads((folder.parent / "summary.json").read_text())["streams"]["clip"]["end_reason"] == "stopped"


@pytest.mark.slow  # a tools/stream.py process: about 15-20 s on a loaded 2-core machine
def test_standard_input_is_a_source(tmp_path, ckpt):
    """``source=-``: MPEG-TS bytes piped into the tool give the chunks the same bytes give from a file."""
    from oad.tasks.streaming import stream

    data = encode(2 * FPS)
    (tmp_path / "clip.ts").write_bytes(data)
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "tools" / "stream.py"), "source=-", f"ckpt_path={ckpt}", f"output_dir={out}",
           "backbone.name=resnet18", f"backbone.weights={ckpt.parent / 'resnet18.pth'}", "resize=64", "crop=56",
           "plot=false", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, input=data, capture_output=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    lines, _, summary = stream_files(out / "stdin")
    assert summary["kind"] == "stdin" and summary["end_reason"] == "ended" and len(lines) == 8
    stream(live_cfg(ckpt, tmp_path / "file", source=tmp_path / "clip.ts"))
    np.testing.assert_allclose(scores_of(lines), scores_of(stream_files(tmp_path / "file" / "clip")[0]), atol=1e-5,
                               rtol=0)


def test_render_and_view_follow_a_live_run(tmp_path, ckpt):
    """render=true and view=<port> in the live pipeline: render.mp4 holds every frame of the stream (decoded
    back: count and duration), its banner differs from the input frames; the live page's /state, read while
    the run goes on, holds the chunks scored so far and, at the end, all of them."""
    import urllib.request

    from oad.tasks.streaming import stream

    n = 2 * FPS + 5
    (tmp_path / "clip.mp4").write_bytes(encode(n, fmt="mp4"))
    import oad.live.view as view_module

    urls, seen = [], []
    real_init = view_module.ViewSink.__init__

    def remember(self, *a, **k):
        real_init(self, *a, **k)
        urls.append(self.url)

    real_chunk = view_module.ViewSink.chunk

    def chunk_then_read(self, record):  # the page's state, read over HTTP while the run goes on
        real_chunk(self, record)
        with urllib.request.urlopen(urls[0].rstrip("/") + "/state", timeout=5) as r:
            seen.append(json.loads(r.read()))

    view_module.ViewSink.__init__, view_module.ViewSink.chunk = remember, chunk_then_read
    try:
        stream(live_cfg(ckpt, tmp_path / "out", source=tmp_path / "clip.mp4", render="true", view=0))
    finally:
        view_module.ViewSink.__init__, view_module.ViewSink.chunk = real_init, real_chunk
    lines, _, _ = stream_files(tmp_path / "out" / "clip")
    assert len(seen) == len(lines) == math.ceil(n / FPS * RATE) and urls[0].startswith("http://127.0.0.1:")
    for i, state in enumerate(seen):  # after chunk i was handed over, the page's state holds chunks 0..i
        history = state["streams"]["clip"]["history"]
        assert [h["index"] for h in history] == list(range(i + 1))
    with av.open(str(tmp_path / "out" / "clip" / "render.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        duration = float(c.streams.video[0].duration * c.streams.video[0].time_base)
    assert len(frames) == n and duration == pytest.approx(n / FPS, abs=1.5 / FPS)
    # the banner (top rows) is drawn over; far below it the picture is the input's (up to coding noise)
    first = picture(0).astype(float)
    assert np.abs(frames[0][:10].astype(float) - first[:10]).mean() > 20
    assert np.abs(frames[0][-12:-8].astype(float) - first[-12:-8]).mean() < 12
