"""Tests of ``oad/report.py`` (``tools/stream.py ... report=true``): the page's files, then the page itself
in headless Chromium driven through the DevTools protocol (a minimal WebSocket client below, no
browser-automation package): no console error, the cursor follows ``video.currentTime``, clicking an
event row or the timeline seeks the video, and a screenshot shows the video and the score lines.

The model is a linear classifier fitted (ridge regression, closed form) on the test video's own features
(resnet18 with fixed, seeded weights saved as a state dict), so two classes score high exactly where the
video shows a red and a blue segment: the stream gives two known events.

Chromium: ``chromium`` on PATH, else installed with apt-get (root only, as ``run.sh`` does); the browser
tests are skipped, with the reason, only where neither works.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from fractions import Fraction

import numpy as np
import pytest
import torch

from oad.checkpoint import save_network
from oad.models.linear import ChunkLinear
from tests.test_streaming import NAMES, stream_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FPS, SECONDS, W, H = 25, 8, 128, 96
# (first, last) seconds of the coloured segments and the class that must fire there
SEGMENTS = {3: (2.0, 4.0, (200, 40, 40)), 7: (5.0, 6.5, (40, 70, 210))}
BACKGROUND = (255, 255, 255)  # the page's background (body { background: #fff })


# ---------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------


def write_h264(path) -> None:
    """An H.264 clip (Chromium plays it; MPEG-4 part 2 it does not): grey with a moving white square,
    red over SEGMENTS[3], blue over SEGMENTS[7]."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(FPS))
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(FPS * SECONDS):
            t = i / FPS
            img = np.full((H, W, 3), 60, np.uint8)
            for a, b, rgb in SEGMENTS.values():
                if a <= t < b:
                    img[:] = rgb
            x = (3 * i) % (W - 24)
            img[36:60, x : x + 24] = 255
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def fitted_checkpoint(tmp_path, video, weights) -> None:
    """A ChunkLinear whose classes 3 and 7 fire over their SEGMENTS, fitted on the video's features."""
    from oad.video import FeatureExtractor, VideoReader

    cfg = stream_cfg(tmp_path, **{"backbone.weights": weights, "backbone.allow_random": "false"})
    feats = np.stack([c.vector for c in FeatureExtractor.from_config(cfg, rate=4.0).iter_chunks(VideoReader(video))])
    centre = (np.arange(len(feats)) + 0.5) / 4.0
    y = np.stack([np.where((a <= centre) & (centre < b), 6.0, -6.0) for a, b, _ in SEGMENTS.values()], 1)
    mu = feats.mean(0)
    xc = (feats - mu).astype(np.float64)
    gram = xc @ xc.T
    w = xc.T @ np.linalg.solve(gram + 1e-4 * np.trace(gram) / len(xc) * np.eye(len(xc)), y)  # ridge, dual form
    assert (np.sign(xc @ w) == np.sign(y)).all(), "the linear fit does not separate the segments"
    net = ChunkLinear(in_dim=feats.shape[1], num_classes=22, window=1, num_queries=1)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.classifier.bias[1:21] = -8.0  # the other action classes stay near 0
        for j, c in enumerate(SEGMENTS):
            net.classifier.weight[c] = torch.from_numpy(w[:, j]).float()
            net.classifier.bias[c] = float(-mu @ w[:, j])
    save_network(tmp_path / "fitted.ckpt", net,
                 {"_target_": "oad.models.linear.ChunkLinear", "in_dim": int(feats.shape[1]), "num_classes": 22,
                  "window": 1, "num_queries": 1},
                 {"class_names": NAMES, "ignore_index": 21, "fps": 4.0, "stream_dims": [int(feats.shape[1])]})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """``stream(... report=true)`` on the generated clip: ``(result, output_dir, video)``."""
    from oad.tasks.streaming import stream

    tmp = tmp_path_factory.mktemp("report")
    video = tmp / "clip.mp4"
    write_h264(video)
    torch.manual_seed(0)
    from torchvision.models import resnet18

    torch.save(resnet18(weights=None).state_dict(), tmp / "r18.pth")  # fixed weights: calibration == stream
    fitted_checkpoint(tmp, video, tmp / "r18.pth")
    res = stream(stream_cfg(tmp, video=video, ckpt_path=tmp / "fitted.ckpt", report="true",
                            **{"backbone.weights": tmp / "r18.pth", "backbone.allow_random": "false"}))
    return res, tmp / "out", video


def test_report_files(report):
    from oad.tasks.streaming import summary_lines

    res, out, video = report
    page = out / "report.html"
    assert res["report_html"] == str(page) and page.is_file()
    assert summary_lines(res)[-1] == f"report -> {page}"
    # the two segments are the two events, with their classes and times
    got = [(e["class_name"], e["start_s"], e["end_s"]) for e in res["events"]]
    assert got == [(NAMES[c], a, b) for c, (a, b, _) in SEGMENTS.items()]
    # the video is beside the page (hard-linked, or copied across file systems), referenced by its name
    assert (out / "clip.mp4").read_bytes() == video.read_bytes()
    text = page.read_text()
    assert '<video id="video" src="clip.mp4"' in text
    assert not re.search(r"https?://|//cdn|<link[^>]+stylesheet|<script[^>]+src=", text), "not self-contained"
    assert text.count('<tr class="event"') == 2 and 'data-start="2"' in text and 'data-start="5"' in text
    for fact in ("ChunkLinear", "fitted.ckpt", "resnet18", "r18.pth"):
        assert fact in text, fact


def test_report_without_video_and_the_default(tmp_path, report):
    from oad.report import write_report

    res, out, _ = report
    scores = np.asarray(json.loads((out / "scores.json").read_text())["scores"])
    page = write_report(tmp_path, video_path=None, scores=scores, class_names=NAMES, rate=4.0, events=res["events"],
                        meta={**res["meta"], "video": None, "features": "f.npy"}, ignore_index=21)
    text = page.read_text()
    assert "<video" not in text and 'id="timeline"' in text and text.count('<tr class="event"') == 2
    assert list(tmp_path.iterdir()) == [page]
    with pytest.raises(ValueError, match=r"\(T, 22\)"):
        write_report(tmp_path, video_path=None, scores=scores[:, :5], class_names=NAMES, rate=4.0, events=[],
                     meta={}, ignore_index=21)
    assert stream_cfg(tmp_path).report is False  # off unless asked for


# ---------------------------------------------------------------------------------------------------
# Chromium through the DevTools protocol
# ---------------------------------------------------------------------------------------------------


class DevTools:
    """One DevTools page session over a minimal WebSocket client (RFC 6455 text frames, client-masked)."""

    def __init__(self, ws_url: str, timeout: float = 30.0):
        u = urllib.parse.urlsplit(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # byte by byte: nothing of the first frame is read here
            head += self._exact(1)
        assert head.split(b"\r\n")[0].split()[1] == b"101", head
        self.next_id, self.events = 0, []

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            part = self.sock.recv(n - len(buf))
            if not part:
                raise ConnectionError("DevTools closed the connection")
            buf += part
        return bytes(buf)

    def _send_frame(self, opcode: int, data: bytes) -> None:
        n, mask = len(data), os.urandom(4)
        size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        if n >= 1 << 16:
            size = bytes([0x80 | 127]) + n.to_bytes(8, "big")
        masked = (np.frombuffer(data, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        self.sock.sendall(bytes([0x80 | opcode]) + size + mask + masked)

    def _receive(self) -> dict:
        message = bytearray()
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n >= 126:
                n = int.from_bytes(self._exact(2 if n == 126 else 8), "big")
            payload = self._exact(n)  # server frames are not masked
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode == 0x9:
                self._send_frame(0xA, payload)  # ping -> pong
                continue
            message += payload
            if b0 & 0x80:  # final fragment
                return json.loads(message)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self._send_frame(0x1, json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            msg = self._receive()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def wait_event(self, method: str) -> dict:
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._receive())

    def js(self, expression: str):
        """The value of a JS expression (promises awaited); a JS exception fails the test."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"JS error in {expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self) -> list[dict]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        self.call("Runtime.evaluate", expression="0")  # drain what arrived before now
        return [e for e in self.events if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]

    def click(self, x: float, y: float) -> None:
        """A real left click at viewport coordinates (CSS px)."""
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


@pytest.fixture(scope="session")
def chromium():
    """The Chromium executable: on PATH, else installed with apt-get when running as root."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and getattr(os, "geteuid", lambda: 1)() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600, check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True,
                           timeout=1200, check=True)
        except (OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"chromium is not on PATH and `apt-get install chromium` failed: {e}")
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not on PATH and cannot be installed here (needs root and apt-get)")
    return found


@contextlib.contextmanager
def browser_page(chromium: str, udd, width: int = 1100, height: int = 1000):
    """Headless Chromium (profile folder ``udd``) and a DevTools session on its blank page, with the
    Runtime, Log, Page and Network events on, in a ``width`` x ``height`` viewport; the browser is ended after."""
    proc = subprocess.Popen(
        [chromium, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={udd}", "--no-sandbox",
         "--disable-gpu", "--autoplay-policy=no-user-gesture-required", "--no-first-run",
         "--no-default-browser-check", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file, deadline = udd / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            assert time.monotonic() < deadline, "chromium wrote no DevToolsActivePort in 60 s"
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        targets = json.loads(no_proxy.open(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
        cdp = DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        for domain in ("Runtime", "Log", "Page", "Network"):
            cdp.call(f"{domain}.enable")
        cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        try:
            yield cdp
        finally:
            cdp.sock.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the browser and its helper processes (its own session)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def page(chromium, report, tmp_path_factory):
    """A DevTools session on report.html, loaded in a 1100x1000 viewport with the video's metadata."""
    with browser_page(chromium, tmp_path_factory.mktemp("chromium-profile")) as cdp:
        cdp.call("Page.navigate", url=(report[1] / "report.html").as_uri())
        cdp.wait_event("Page.loadEventFired")
        ok = cdp.js("""new Promise(done => { const v = document.getElementById('video');
            if (v.readyState >= 2) done(true);
            v.addEventListener('loadeddata', () => done(true)); v.addEventListener('error', () => done(false)); })""")
        assert ok, f"Chromium cannot load the video: {cdp.js('document.getElementById(`video`).error?.message')}"
        yield cdp


def seek_and_wait(page, action_js: str = "", click: tuple[float, float] | None = None) -> dict:
    """Run ``action_js`` or a real click, wait for the video's ``seeked`` and a frame; returns the state."""
    page.js("window.__seeked = new Promise(done => document.getElementById('video')"
            ".addEventListener('seeked', () => requestAnimationFrame(() => done(true)), {once: true})); 0")
    if action_js:
        page.js(action_js)
    if click:
        page.click(*click)
    return page.js("""window.__seeked.then(() => {
        const v = document.getElementById('video'), c = document.getElementById('cursor');
        const svg = document.getElementById('timeline'), r = svg.getBoundingClientRect(), cr = c.getBoundingClientRect();
        return {currentTime: v.currentTime, time: +c.dataset.time, cursorX: cr.left + cr.width / 2,
                left: r.left, x0: +svg.dataset.x0, x1: +svg.dataset.x1, duration: +svg.dataset.duration,
                active: [...document.querySelectorAll('tr.event.active')].map(e => +e.dataset.start)};
    })""")


def expected_x(s: dict, t: float) -> float:
    return s["left"] + s["x0"] + (s["x1"] - s["x0"]) * t / s["duration"]


def test_page_loads_without_console_errors(page, report):
    assert page.errors() == []
    assert page.js("document.querySelectorAll('#timeline polyline').length") == 5  # top_k classes
    assert page.js("document.getElementById('timeline').dataset.duration") == "8"
    assert page.js("document.querySelectorAll('tr.event').length") == 2
    # every request of the page is a local file (the video) or inline data: nothing from the network
    urls = [e["params"]["request"]["url"] for e in page.events if e.get("method") == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls


def test_cursor_follows_the_video_time(page):
    for t in (3.3, 6.0):
        s = seek_and_wait(page, f"document.getElementById('video').currentTime = {t}; 0")
        assert abs(s["currentTime"] - t) < 1e-6
        assert abs(s["time"] - t) <= 0.05, s  # data-time within a frame
        assert abs(s["cursorX"] - expected_x(s, t)) <= 1.0, s  # drawn where t is on the axis
    assert s["active"] == [5.0]  # 6.0 s is inside the second event: its row is highlighted
    assert page.errors() == []


def test_cursor_follows_playback(page):
    seek_and_wait(page, "document.getElementById('video').currentTime = 1.0; 0")
    # sampled in an animation frame after 0.6 s of playback: the page's own frame callback ran first
    now, shown = page.js("""new Promise(done => { const v = document.getElementById('video');
        v.play().then(() => setTimeout(() => requestAnimationFrame(() => {
            const r = [v.currentTime, +document.getElementById('cursor').dataset.time]; v.pause(); done(r); }), 600)); })""")
    assert now > 1.2 and abs(shown - now) <= 0.05, (now, shown)
    assert page.errors() == []


def test_clicking_an_event_row_seeks_to_its_start(page):
    seek_and_wait(page, "document.getElementById('video').currentTime = 7.5; 0")
    for start in (2.0, 5.0):
        r = page.js(f"(() => {{ const r = document.querySelector('tr.event[data-start=\"{start:g}\"]');"
                    "r.scrollIntoView({block: 'center'}); const b = r.getBoundingClientRect();"
                    "return [b.left + b.width / 2, b.top + b.height / 2]; })()")
        s = seek_and_wait(page, click=tuple(r))
        assert abs(s["currentTime"] - start) < 1e-6 and abs(s["time"] - start) <= 0.05, s
    assert page.errors() == []


def test_clicking_the_timeline_seeks_there(page):
    page.js("document.getElementById('timeline').scrollIntoView({block: 'center'}); 0")
    geo = page.js("(() => { const s = document.getElementById('timeline'), r = s.getBoundingClientRect();"
                  "return {left: r.left, top: r.top, height: r.height, x0: +s.dataset.x0, x1: +s.dataset.x1,"
                  "duration: +s.dataset.duration}; })()")
    for t in (1.0, 4.5):
        x = expected_x(geo, t)
        s = seek_and_wait(page, click=(x, geo["top"] + geo["height"] / 2))
        # a click lands on a whole CSS pixel: within one pixel's worth of seconds (and a frame)
        tol = max(geo["duration"] / (geo["x1"] - geo["x0"]), 1 / FPS)
        assert abs(s["currentTime"] - t) <= tol and abs(s["time"] - s["currentTime"]) <= 0.05, s
    assert page.errors() == []


def test_screenshot_shows_the_video_and_the_scores(page, report, tmp_path):
    from PIL import Image

    page.js("window.scrollTo(0, 0); 0")
    seek_and_wait(page, "document.getElementById('video').currentTime = 3.0; 0")  # a red frame
    shot = page.call("Page.captureScreenshot", format="png")
    path = tmp_path / "report.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    img = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB")).astype(np.int16)
    assert img.shape == (1000, 1100, 3)
    # The video box (black letterbox + the red frame) and the score lines are what differs from the white
    # page; text and table rules are a few percent at most. The video alone covers a third of the viewport
    # at least (960 px wide, 4:3, capped at 60% of the height).
    v = page.js("(() => { const r = document.getElementById('video').getBoundingClientRect();"
                "return [r.left, r.top, r.width, r.height]; })()")
    non_bg = (np.abs(img - np.array(BACKGROUND)).max(-1) > 24)
    assert v[2] * v[3] >= 0.3 * img.shape[0] * img.shape[1]
    assert non_bg.mean() >= 0.3, non_bg.mean()
    # inside the video box, the frame itself: most of it red (the segment shown at 3.0 s)
    box = img[int(v[1]) : int(v[1] + v[3]), int(v[0]) : int(v[0] + v[2])]
    red = (box[..., 0] > 150) & (box[..., 1] < 90) & (box[..., 2] < 90)
    assert red.mean() >= 0.3, red.mean()
    # the timeline: coloured (saturated) pixels of the score lines, at least one plot width of them
    geo = page.js("(() => { const s = document.getElementById('timeline'), r = s.getBoundingClientRect();"
                  "return [r.left, r.top, r.width, r.height, +s.dataset.x1 - +s.dataset.x0]; })()")
    if geo[1] + geo[3] <= img.shape[0]:
        strip = img[int(geo[1]) : int(geo[1] + geo[3]), int(geo[0]) : int(geo[0] + geo[2])]
        saturated = (strip.max(-1) - strip.min(-1)) > 80
        assert saturated.sum() >= geo[4], (saturated.sum(), geo[4])
    assert page.errors() == []
