"""The live page (oad/live/view.py): its messages, /state, /events, a client that never reads, and the page
in headless Chromium (the DevTools-protocol client of tests/test_report.py): it shows the scores of chunks
fed after it opened, with no console error and no request beyond its own server."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request

import numpy as np
import pytest

from oad.live import view as view_module
from oad.live.records import ChunkRecord
from oad.live.view import ViewSink, chunk_message
from tests.test_report import browser_page, chromium  # noqa: F401 - chromium is a fixture used here

NAMES = ["Background", "Jump", "Throw", "Run", "Sit", "Stand", "Ambiguous"]
IGNORE, BACKGROUND, RATE = 6, 0, 4.0
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def record(stream: str, i: int, seed: int = 0, status: str = "scored") -> ChunkRecord:
    """A chunk record with random scores (seeded by stream, index and ``seed``) and anticipation outputs."""
    rng = np.random.default_rng([seed, i, len(stream), ord(stream[-1])])
    scores = rng.dirichlet(np.ones(len(NAMES))).astype(np.float32)
    future = rng.dirichlet(np.ones(len(NAMES)), size=3).astype(np.float32)  # (Q, C)
    if status != "scored":
        return ChunkRecord(stream, i, i / RATE, (i + 1) / RATE, status)
    return ChunkRecord(stream, i, i / RATE, (i + 1) / RATE, "scored", scores, future, 0.02)


@pytest.fixture
def sink():
    s = ViewSink(0, NAMES, RATE, IGNORE, BACKGROUND)
    yield s
    s.close()


def get_json(url: str) -> dict:
    return json.loads(NO_PROXY.open(url, timeout=10).read())


def test_chunk_message_top_classes_and_upcoming():
    r = record("cam", 3)
    r.scores[IGNORE] = 0.99  # the ignored class is never listed
    r.future_scores[:] = 0.01
    r.future_scores[:, BACKGROUND] = 0.9  # background is never an upcoming action
    r.future_scores[1, 4] = 0.5
    m = chunk_message(r, NAMES, RATE, IGNORE, BACKGROUND)
    assert m["scores"][IGNORE] == 0 and IGNORE not in [k for k, _, _ in m["top"]]
    expected = [k for k in np.argsort(-r.scores) if k != IGNORE][:5]
    assert [k for k, _, _ in m["top"]] == expected
    assert [s for _, _, s in m["top"]] == pytest.approx([float(r.scores[k]) for k in expected], abs=1e-4)
    assert m["upcoming"] == {"class": 4, "name": "Sit", "score": 0.5, "ahead_s": 0.5}
    d = chunk_message(record("cam", 4, status="dropped"), NAMES, RATE, IGNORE, BACKGROUND)
    assert d["status"] == "dropped" and d["scores"] is None and d["top"] == [] and d["upcoming"] is None
    json.dumps(m, allow_nan=False)


def test_state_holds_every_streams_latest_and_history(sink):
    assert sink.url.startswith("http://127.0.0.1:")
    for name in ("a", "b"):
        sink.open_stream(name, {"source": f"rtsp://{name}", "rate": RATE})
    for i in range(6):
        sink.chunk(record("a", i))
        if i < 3:
            sink.chunk(record("b", i, status="dropped" if i == 2 else "scored"))
    sink.event("a", {"class_index": 1, "class_name": "Jump", "start_s": 0.25, "end_s": None}, "start")
    sink.close_stream("b", {"reason": "ended", "chunks": 3, "latency_p95_s": float("nan"), "n": np.int64(2)})
    st = get_json(sink.url + "state")
    assert st["class_names"] == NAMES and set(st["streams"]) == {"a", "b"}
    a, b = st["streams"]["a"], st["streams"]["b"]
    assert [m["index"] for m in a["history"]] == list(range(6)) and a["latest"]["index"] == 5
    expected = record("a", 5).scores
    expected[IGNORE] = 0  # the ignored class: probability 0
    assert a["latest"]["scores"] == pytest.approx(expected.tolist(), abs=1e-4)
    assert a["events"][0]["event"]["class_name"] == "Jump" and a["meta"]["source"] == "rtsp://a"
    assert b["ended"] and b["summary"]["chunks"] == 3 and b["latest"]["status"] == "dropped"
    assert b["summary"]["latency_p95_s"] is None and b["summary"]["n"] == 2  # NaN and numpy values made plain
    page = NO_PROXY.open(sink.url, timeout=10).read().decode()
    assert "EventSource" in page and "://" not in page  # self-contained: no address of anything elsewhere


def read_sse(resp, n: int) -> list[dict]:
    """The next ``n`` data messages of a server-sent-event response."""
    out, data = [], []
    while len(out) < n:
        line = resp.readline().decode().rstrip("\n")
        if line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            out.append(json.loads("\n".join(data)))
            data = []
    return out


def test_events_stream_starts_with_the_state_then_every_message(sink):
    sink.open_stream("a", {})
    sink.chunk(record("a", 0))
    conn = http.client.HTTPConnection("127.0.0.1", int(sink.url.rsplit(":", 1)[1].strip("/")), timeout=10)
    conn.request("GET", "/events")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
    first = read_sse(resp, 1)[0]
    assert first["type"] == "state" and first["streams"]["a"]["latest"]["index"] == 0
    sink.chunk(record("a", 1))
    sink.event("a", {"class_index": 2, "class_name": "Throw", "start_s": 0.0, "end_s": 0.5}, "end")
    sink.close_stream("a", {"chunks": 2})
    msgs = read_sse(resp, 3)
    assert [m["type"] for m in msgs] == ["chunk", "event", "close"] and msgs[0]["index"] == 1
    conn.close()


def test_a_client_that_never_reads_does_not_block_the_pipeline(sink, monkeypatch):
    monkeypatch.setattr(view_module, "CLIENT_QUEUE", 8)
    import socket

    sock = socket.create_connection(("127.0.0.1", int(sink.url.rsplit(":", 1)[1].strip("/"))), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
    deadline = time.monotonic() + 10
    while not sink._clients:
        assert time.monotonic() < deadline, "the /events client never connected"
        time.sleep(0.01)
    done = threading.Event()

    def feed():
        for i in range(3000):  # ~3 MB of messages: far beyond the socket buffers and the queue
            sink.chunk(record("a", i))
        done.set()

    threading.Thread(target=feed, daemon=True).start()
    assert done.wait(60), "feeding the sink blocked on a client that does not read"
    client = next(iter(sink._clients))
    # the client's backlog stayed bounded and the rest was dropped (counted over the connection's life: the
    # writer may already have drained the queue into the socket, which resets the count of the next gap)
    assert client.queue.qsize() <= 8 and client.dropped_total > 0
    assert get_json(sink.url + "state")["streams"]["a"]["latest"]["index"] == 2999  # others are served
    # once the client reads again, it is told how many messages it missed
    sock.settimeout(10)
    seen, gaps, deadline = b"", [], time.monotonic() + 20
    while not gaps:
        assert time.monotonic() < deadline, "the client was never told of the dropped messages"
        seen += sock.recv(1 << 16)
        gaps = [json.loads(line[6:]) for line in seen.split(b"\n")[:-1] if line.startswith(b'data: {"type":"gap"')]
    assert gaps[0]["dropped"] > 0 and sum(g["dropped"] for g in gaps) <= client.dropped_total
    sock.close()


def test_page_shows_chunks_fed_after_it_opened(chromium, sink, tmp_path):  # noqa: F811 - the fixture
    sink.open_stream("cam1", {"source": "rtsp://cam1"})
    sink.chunk(record("cam1", 0, seed=1))  # before the page: in its first state
    with browser_page(chromium, tmp_path / "profile") as cdp:
        cdp.call("Page.navigate", url=sink.url)
        cdp.wait_event("Page.loadEventFired")
        assert cdp.js("""new Promise((done, fail) => { const t0 = Date.now(); (function poll() {
            if (document.getElementById('conn').className === 'live' && window.__messages >= 1) done(true);
            else if (Date.now() - t0 > 10000) fail('no connection'); else setTimeout(poll, 20); })(); })""")
        assert cdp.js("document.querySelector('[data-stream=cam1]').dataset.index") == "0"
        sink.open_stream("cam2", {"source": "rtsp://cam2"})
        for i in range(1, 9):
            sink.chunk(record("cam1", i, seed=1))
            sink.chunk(record("cam2", i - 1, seed=2, status="dropped" if i == 8 else "scored"))
        sink.event("cam1", {"class_index": 1, "class_name": "Jump", "start_s": 0.5, "end_s": None}, "start")
        shown = cdp.js("""new Promise((done, fail) => { const t0 = Date.now(); (function poll() {
            const a = document.querySelector('[data-stream=cam1]'), b = document.querySelector('[data-stream=cam2]');
            if (a && b && a.dataset.index === '8' && b.dataset.index === '7' && /Jump/.test(a.textContent)) done(
                [a, b].map(el => ({index: el.querySelector('.top').dataset.index, status: el.dataset.status,
                    text: el.querySelector('.status').textContent, upcoming: el.querySelector('.upcoming').textContent,
                    top: [...el.querySelectorAll('.top li')].map(li => [+li.dataset.class,
                        li.querySelector('.name').textContent, +li.querySelector('.score').textContent])})));
            else if (Date.now() - t0 > 10000) fail('the page did not update'); else setTimeout(poll, 20); })(); })""")
        for got, (stream, last_scored) in zip(shown, (("cam1", 8), ("cam2", 6))):
            m = chunk_message(record(stream, last_scored, seed=1 if stream == "cam1" else 2), NAMES, RATE,
                              IGNORE, BACKGROUND)
            assert int(got["index"]) == last_scored
            assert [(k, n) for k, n, _ in got["top"]] == [(k, n) for k, n, _ in m["top"]]
            assert [s for _, _, s in got["top"]] == pytest.approx([s for _, _, s in m["top"]], abs=5e-4)
            up = m["upcoming"]
            assert got["upcoming"] == f"next: {up['name']} in {up['ahead_s']:.2f} s ({up['score']:.3f})"
        assert shown[1]["status"] == "dropped" and "dropped" in shown[1]["text"]
        # the timeline was drawn: the canvas has coloured pixels
        assert cdp.js("""(() => { const c = document.querySelector('[data-stream=cam1] canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; })()""") > 200
        assert cdp.errors() == []
        urls = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
        assert urls and all(u.startswith(sink.url) or u.startswith("data:") for u in urls), urls
