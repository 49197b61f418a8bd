"""The live view (``view=<port>`` of ``tools/stream.py``): a page on localhost that shows every stream's
current top classes and a scrolling score timeline, updated as the chunks are scored.

:class:`ViewSink` serves, from a :class:`http.server.ThreadingHTTPServer` on its own daemon threads:

- ``/``: the page, self-contained (inline CSS and JS, no CDN, no request beyond this server);
- ``/events``: server-sent events, one JSON message per chunk record, event start/end and stream
  open/close; the first message of a connection is the whole state (``type: "state"``), so a page opened
  late starts filled and no message falls between the snapshot and the stream;
- ``/state``: that snapshot as JSON (every stream's latest chunk, recent history and events).

The pipeline never waits for a client: each client has a bounded queue; when it is full (a slow or gone
client) that client's messages are dropped and, once it reads again, it gets a ``gap`` message (the page
then reloads ``/state``).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import socket
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from oad.live.records import ChunkRecord, upcoming_action

__all__ = ["ViewSink", "chunk_message"]

log = logging.getLogger(__name__)

TOP_K = 5  # classes listed per chunk
HISTORY = 480  # chunks kept per stream for /state (2 minutes at 4 chunks per second)
EVENTS_KEPT = 50  # events kept per stream for /state
CLIENT_QUEUE = 512  # messages waiting per client before that client's messages are dropped
KEEPALIVE_S = 10.0  # an SSE comment after this long without a message (detects gone clients)
SEND_BUFFER = 64 * 1024  # kernel send buffer of an /events connection: a slow client's backlog stays small


def _finite(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), digits)


def chunk_message(record: ChunkRecord, class_names: list[str], rate: float, ignore_index: int | None,
                  background_index: int | None, top_k: int = TOP_K) -> dict[str, Any]:
    """The JSON message of one chunk record: its place, status, scores (``(C,)``, the ignored class at 0),
    top classes and the upcoming action (the highest non-background score of ``future_scores (Q, C)``,
    ``(q + 1) / rate`` seconds ahead); scores are None unless the chunk was scored."""
    msg: dict[str, Any] = {"type": "chunk", "stream": record.stream, "index": int(record.index),
                           "start_s": round(float(record.start_s), 4), "end_s": round(float(record.end_s), 4),
                           "status": record.status, "segment": int(record.segment),
                           "latency_s": _finite(record.latency_s), "scores": None, "top": [], "upcoming": None}
    if record.status != "scored" or record.scores is None:
        return msg
    scores = np.nan_to_num(np.asarray(record.scores, np.float64), nan=0.0)
    if ignore_index is not None and 0 <= ignore_index < len(scores):
        scores[ignore_index] = 0.0
    msg["scores"] = [round(float(s), 4) for s in scores]
    order = np.argsort(-scores, kind="stable")[:top_k]
    msg["top"] = [[int(k), class_names[k], round(float(scores[k]), 4)] for k in order]
    ahead = upcoming_action(record.future_scores, ignore_index, background_index)
    if ahead is not None:
        c, score, q = ahead
        msg["upcoming"] = {"class": c, "name": class_names[c], "score": round(score, 4), "ahead_s": round((q + 1) / rate, 4)}
    return msg


def _json(obj: Any) -> str:
    return json.dumps(obj, default=str, allow_nan=False, separators=(",", ":"))


def _plain(obj: Any) -> Any:
    """A JSON-able copy: containers and numpy values made plain, NaN/Inf as None, anything else as text."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, deque, np.ndarray)):
        return [_plain(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj if obj is None or isinstance(obj, str) else str(obj)


class _Client:
    """One /events connection: a bounded queue the pipeline never waits on."""

    def __init__(self) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue(CLIENT_QUEUE)
        self.dropped = 0  # dropped since the client last read (its next ``gap`` message says how many)
        self.dropped_total = 0  # dropped over the connection's life
        self.lock = threading.Lock()

    def put(self, text: str | None) -> None:
        try:
            self.queue.put_nowait(text)
        except queue.Full:
            with self.lock:
                self.dropped += 1
                self.dropped_total += 1

    def take_gap(self) -> int:
        with self.lock:
            n, self.dropped = self.dropped, 0
        return n


class ViewSink:
    """Serves the live page on ``host:port`` while the run goes on (``port`` 0: any free port).

    Args:
        port: TCP port (0: chosen by the system; :attr:`url` says which).
        class_names: the checkpoint's classes.
        rate: chunks per second.
        ignore_index: the class never shown (THUMOS' Ambiguous), or None.
        background_index: the class never shown as an upcoming action, or None.
        host: the interface (default: the loopback only).
    """

    wants_frames = False

    def __init__(self, port: int, class_names: list[str], rate: float, ignore_index: int | None,
                 background_index: int | None, host: str = "127.0.0.1"):
        self.class_names = list(class_names)
        self.rate = float(rate)
        self.ignore_index, self.background_index = ignore_index, background_index
        self._lock = threading.Lock()
        self._streams: dict[str, dict[str, Any]] = {}
        self._clients: set[_Client] = set()
        self._closed = False
        sink = self

        class Handler(_Handler):
            view = sink

        self._server = ThreadingHTTPServer((host, int(port)), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="oad-view", daemon=True)
        self._thread.start()
        log.info("live view at %s", self.url)

    @property
    def url(self) -> str:
        """The page's address."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    # -- state -----------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Every stream's latest chunk, recent history and events (what ``/state`` serves)."""
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        return {"type": "state", "class_names": self.class_names, "rate": self.rate,
                "ignore_index": self.ignore_index, "background_index": self.background_index,
                "streams": {name: {"meta": s["meta"], "latest": s["history"][-1] if s["history"] else None,
                                   "history": list(s["history"]), "events": list(s["events"]),
                                   "summary": s["summary"], "ended": s["ended"]}
                            for name, s in self._streams.items()}}

    def _stream(self, name: str) -> dict[str, Any]:
        if name not in self._streams:
            self._streams[name] = {"meta": {}, "history": deque(maxlen=HISTORY), "events": deque(maxlen=EVENTS_KEPT),
                                   "summary": None, "ended": False}
        return self._streams[name]

    def _publish(self, message: dict[str, Any]) -> None:
        """Record the message in the state and hand it to every client (never waiting); under the lock, so
        that a client connecting now gets either it in its snapshot or it in its queue, never both or none."""
        text = _json(message)
        kind, s = message["type"], self._stream(message["stream"])
        if kind == "chunk":
            s["history"].append(message)
        elif kind == "event":
            s["events"].append(message)
        elif kind == "open":
            s.update(meta=message["meta"], ended=False)
        elif kind == "close":
            s.update(summary=message["summary"], ended=True)
        for client in self._clients:
            client.put(text)

    def _connect(self) -> tuple[_Client, str]:
        client = _Client()
        with self._lock:
            self._clients.add(client)
            return client, _json(self._snapshot())

    def _disconnect(self, client: _Client) -> None:
        with self._lock:
            self._clients.discard(client)

    # -- the Sink interface ---------------------------------------------------------------------------
    def open_stream(self, stream: str, meta: dict[str, Any]) -> None:
        safe = _plain({k: v for k, v in meta.items() if k != "class_names"})
        with self._lock:
            self._publish({"type": "open", "stream": stream, "meta": safe})

    def chunk(self, record: ChunkRecord) -> None:
        msg = chunk_message(record, self.class_names, self.rate, self.ignore_index, self.background_index)
        with self._lock:
            self._publish(msg)

    def event(self, stream: str, event: dict[str, Any], what: str) -> None:
        safe = _plain(event)
        with self._lock:
            self._publish({"type": "event", "stream": stream, "what": what, "event": safe})

    def close_stream(self, stream: str, summary: dict[str, Any]) -> None:
        safe = _plain(summary)
        with self._lock:
            self._publish({"type": "close", "stream": stream, "summary": safe})

    def close(self) -> None:
        """Stop serving: every connection ends, the port is released."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for client in self._clients:
                client.put(None)  # ends its /events loop (dropped if its queue is full: the timeout ends it)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    view: ViewSink
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that sends nothing for this long is dropped

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("view %s: " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, PAGE.encode(), "text/html; charset=utf-8")
        elif path == "/state":
            self._send(200, _json(self.view.snapshot()).encode(), "application/json")
        elif path == "/events":
            self._events()
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _events(self) -> None:
        client, first = self.view._connect()
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(f"retry: 2000\ndata: {first}\n\n".encode())
            self.wfile.flush()
            while True:
                try:
                    text = client.queue.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                    continue
                if text is None:
                    return
                gap = client.take_gap()
                if gap:
                    self.wfile.write(f"data: {_json({'type': 'gap', 'dropped': gap})}\n\n".encode())
                self.wfile.write(f"data: {text}\n\n".encode())
                self.wfile.flush()
        except OSError:  # the client went away
            return
        finally:
            self.view._disconnect(client)


PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>oad live</title>
<style>
:root { color-scheme: dark; }
body { margin: 0; font: 14px/1.35 system-ui, sans-serif; background: #15171c; color: #e6e6e6; }
header { display: flex; gap: 16px; align-items: baseline; padding: 10px 16px; background: #1f232b; }
header h1 { font-size: 17px; margin: 0; }
#conn { font-size: 12px; color: #9aa0a6; }
#conn.live { color: #7bd88f; } #conn.lost { color: #ff7b72; }
#streams { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 12px; padding: 12px; }
.stream { background: #1f232b; border-radius: 8px; padding: 10px 12px; }
.stream h2 { font-size: 15px; margin: 0 0 6px; display: flex; justify-content: space-between; gap: 8px; }
.stream h2 .info { font-weight: normal; font-size: 12px; color: #9aa0a6; }
.stream.ended h2 .info { color: #ffb454; }
.top { list-style: none; margin: 0; padding: 0; }
.top li { display: grid; grid-template-columns: 140px 1fr 52px; gap: 8px; align-items: center; height: 20px; }
.top .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.top .bar { height: 10px; background: #2c313a; border-radius: 5px; overflow: hidden; }
.top .bar span { display: block; height: 100%; border-radius: 5px; }
.top .score { text-align: right; font-variant-numeric: tabular-nums; }
.status { height: 20px; font-size: 13px; color: #9aa0a6; }
.status.dropped, .status.skipped { color: #ff7b72; font-weight: 600; }
.upcoming { height: 20px; font-size: 13px; color: #ffd580; }
canvas { width: 100%; height: 150px; display: block; margin-top: 6px; background: #171a20; border-radius: 4px; }
.legend { font-size: 12px; color: #b0b6be; min-height: 16px; margin-top: 3px; }
.legend span { margin-right: 10px; white-space: nowrap; }
.legend i { display: inline-block; width: 10px; height: 3px; margin-right: 4px; vertical-align: middle; }
.events { font-size: 12px; color: #b0b6be; max-height: 54px; overflow: hidden; margin-top: 4px; }
#empty { padding: 24px; color: #9aa0a6; }
</style>
</head>
<body>
<header><h1>oad live</h1><span id="conn">connecting</span><span id="clock"></span></header>
<div id="streams"></div>
<div id="empty">waiting for streams</div>
<script>
"use strict";
const WINDOW_S = 60;  // seconds of the timeline
const LINE_MIN = 0.1, MAX_LINES = 6;  // which classes get a line in the timeline
const state = {classNames: [], rate: 4, ignore: null, background: null, streams: new Map()};
const palette = ["#4e9bff", "#ff9f43", "#7bd88f", "#ff6b8b", "#c792ea", "#ffd580", "#5ad4e6", "#f78c6c",
                 "#a3be8c", "#e06c75", "#56b6c2", "#d19a66"];
const color = k => palette[k % palette.length];
const fmt = x => (x === null || x === undefined) ? "-" : x.toFixed(3);

function streamView(name) {
  let s = state.streams.get(name);
  if (s) return s;
  const el = document.createElement("section");
  el.className = "stream";
  el.dataset.stream = name;
  el.innerHTML = `<h2><span class="title"></span><span class="info"></span></h2>
    <div class="status"></div><ul class="top"></ul><div class="upcoming"></div>
    <canvas width="900" height="150"></canvas><div class="legend"></div><div class="events"></div>`;
  el.querySelector(".title").textContent = name;
  document.getElementById("streams").appendChild(el);
  document.getElementById("empty").style.display = "none";
  s = {el, history: [], events: [], latest: null, ended: false, summary: null, meta: {}};
  state.streams.set(name, s);
  return s;
}

function applyState(msg) {
  state.classNames = msg.class_names; state.rate = msg.rate;
  state.ignore = msg.ignore_index; state.background = msg.background_index;
  for (const [name, st] of Object.entries(msg.streams)) {
    const s = streamView(name);
    s.meta = st.meta || {}; s.history = st.history.slice(); s.events = st.events.slice();
    s.ended = st.ended; s.summary = st.summary;
    s.latest = s.history.length ? s.history[s.history.length - 1] : null;
    render(s);
  }
}

function onChunk(msg) {
  const s = streamView(msg.stream);
  s.history.push(msg);
  const cutoff = msg.end_s - 2 * WINDOW_S;
  while (s.history.length && s.history[0].end_s < cutoff) s.history.shift();
  s.latest = msg;
  render(s);
}

function render(s) {
  const el = s.el, m = s.latest;
  const info = [];
  if (m) info.push(`chunk ${m.index}`, `${m.start_s.toFixed(2)} s`);
  if (m && m.latency_s !== null) info.push(`latency ${(1000 * m.latency_s).toFixed(0)} ms`);
  if (s.ended) info.push("ended");
  el.querySelector(".info").textContent = info.join(" · ");
  el.classList.toggle("ended", s.ended);
  if (m) { el.dataset.index = m.index; el.dataset.status = m.status; }
  const status = el.querySelector(".status");
  status.className = "status " + (m ? m.status : "");
  status.textContent = !m ? "waiting for the first chunk" : m.status === "dropped"
    ? "dropped: the model never saw this chunk" : m.status === "skipped" ? "skipped: non-finite features" : "scored";
  // the top classes: of the latest scored chunk (a dropped chunk leaves the last scores, said above)
  let scored = null;
  for (let i = s.history.length - 1; i >= 0; i--) if (s.history[i].scores) { scored = s.history[i]; break; }
  const ul = el.querySelector(".top");
  ul.replaceChildren();
  if (scored) {
    ul.dataset.index = scored.index;
    for (const [k, name, score] of scored.top) {
      const li = document.createElement("li");
      li.dataset.class = k; li.dataset.score = score;
      li.innerHTML = `<span class="name"></span><span class="bar"><span></span></span><span class="score"></span>`;
      li.querySelector(".name").textContent = name;
      const bar = li.querySelector(".bar span");
      bar.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`; bar.style.background = color(k);
      li.querySelector(".score").textContent = fmt(score);
      ul.appendChild(li);
    }
  }
  const up = scored && scored.upcoming;
  el.querySelector(".upcoming").textContent = up
    ? `next: ${up.name} in ${up.ahead_s.toFixed(2)} s (${fmt(up.score)})` : "";
  el.querySelector(".events").textContent = s.events.slice(-4).reverse().map(e => {
    const ev = e.event || {}, name = ev.class_name || state.classNames[ev.class_index] || "?";
    const t = e.what === "start" ? ev.start_s : ev.end_s;
    return `${e.what} ${name}${typeof t === "number" ? " at " + t.toFixed(2) + " s" : ""}`;
  }).join(" · ");
  drawTimeline(s);
}

function drawTimeline(s) {
  const c = s.el.querySelector("canvas"), g = c.getContext("2d");
  const box = c.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  if (box.width > 0 && c.width !== Math.round(box.width * dpr)) {  // draw at the canvas's own size: no stretching
    c.width = Math.round(box.width * dpr); c.height = Math.round(box.height * dpr);
  }
  const w = c.width, h = c.height, pad = 4 * dpr;
  g.clearRect(0, 0, w, h);
  if (!s.history.length) return;
  const t1 = Math.max(WINDOW_S, s.history[s.history.length - 1].end_s), t0 = t1 - WINDOW_S;
  const x = t => (t - t0) / WINDOW_S * w, y = p => h - pad - p * (h - 2 * pad);
  g.strokeStyle = "#2c313a"; g.lineWidth = 1;
  for (const p of [0.25, 0.5, 0.75]) { g.beginPath(); g.moveTo(0, y(p)); g.lineTo(w, y(p)); g.stroke(); }
  g.fillStyle = "#6b7280"; g.font = `${11 * dpr}px system-ui, sans-serif`;
  for (let t = Math.ceil(t0 / 10) * 10; t <= t1; t += 10) {  // the stream's time, every 10 s
    g.beginPath(); g.moveTo(x(t), 0); g.lineTo(x(t), h); g.stroke();
    g.fillText(`${t} s`, x(t) + 3 * dpr, 12 * dpr);
  }
  const shown = s.history.filter(m => m.end_s >= t0);
  // dropped and skipped chunks: red ticks at the bottom (the model never scored them)
  g.fillStyle = "rgba(255, 90, 80, 0.8)";
  for (const m of shown)
    if (!m.scores) g.fillRect(x(m.start_s), h - pad - 4 * dpr, Math.max(1, x(m.end_s) - x(m.start_s)), 4 * dpr);
  // one line per class that was among a chunk's top 3 at >= LINE_MIN in the window (background left out),
  // the MAX_LINES highest
  const peak = new Map();
  for (const m of shown) for (const [k, , p] of (m.top || []).slice(0, 3))
    if (k !== state.background && p >= LINE_MIN) peak.set(k, Math.max(p, peak.get(k) || 0));
  const classes = [...peak.keys()].sort((a, b) => peak.get(b) - peak.get(a)).slice(0, MAX_LINES);
  for (const k of classes) {
    g.strokeStyle = color(k); g.lineWidth = 1.5 * dpr; g.beginPath();
    let open = false;
    for (const m of shown) {
      if (!m.scores) { open = false; continue; }
      const px = x((m.start_s + m.end_s) / 2), py = y(m.scores[k]);
      if (open) g.lineTo(px, py); else g.moveTo(px, py);
      open = true;
    }
    g.stroke();
  }
  const legend = s.el.querySelector(".legend");
  legend.replaceChildren();
  for (const k of classes) {
    const span = document.createElement("span"), swatch = document.createElement("i");
    swatch.style.background = color(k);
    span.append(swatch, state.classNames[k] || String(k));
    legend.appendChild(span);
  }
}

function onMessage(msg) {
  switch (msg.type) {
    case "state": applyState(msg); break;
    case "chunk": onChunk(msg); break;
    case "event": { const s = streamView(msg.stream); s.events.push(msg); render(s); break; }
    case "open": { const s = streamView(msg.stream); s.meta = msg.meta; s.ended = false; render(s); break; }
    case "close": { const s = streamView(msg.stream); s.ended = true; s.summary = msg.summary; render(s); break; }
    case "gap": fetch("/state").then(r => r.json()).then(applyState); break;
  }
  window.__messages = (window.__messages || 0) + 1;
}

function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("/events");
  es.onopen = () => { conn.textContent = "live"; conn.className = "live"; };
  es.onmessage = e => onMessage(JSON.parse(e.data));
  es.onerror = () => { conn.textContent = "disconnected (retrying)"; conn.className = "lost"; };
}
connect();
</script>
</body>
</html>
"""
