"""``report.html``: one self-contained page for a streamed video (``tools/stream.py ... report=true``).

The page holds everything inline (CSS, JS, the scores as JSON; no external URL, no server): the video
in a ``<video>`` element playing the file beside the page (copied or hard-linked into the output folder
when it is elsewhere, referenced by its relative name), under it an SVG timeline drawn by the inline JS
with the ``top_k`` action classes' scores, the detected events as bands and a cursor following
``video.currentTime`` (``timeupdate``/``seeked`` events, and every animation frame while playing),
then a table of the events. Clicking the timeline seeks the video to that time; clicking an event row
seeks to the event's start. Without a video (a features file streamed) the page has no ``<video>``
and the clicks move the cursor alone.

DOM hooks (used by ``tests/test_report.py``): ``#timeline`` (``data-duration`` in seconds; ``data-x0``,
``data-x1``: the plot's left and right edges in px from the SVG's left edge, set when drawn),
``#cursor`` (``data-time`` in seconds, updated whenever it moves), ``tr.event`` rows (``data-start``,
``data-end`` in seconds), ``#video``.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from oad.io import atomic_path, atomic_write_bytes

__all__ = ["REPORT_NAME", "top_classes", "write_report"]

REPORT_NAME = "report.html"
# matplotlib's tab10: the classes' colours, in order of peak score
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
# files of the stream task's output folder a copied video must not replace
_RESERVED = {REPORT_NAME, "scores.csv", "scores.json", "events.json", "timeline.png"}


def top_classes(scores: np.ndarray, k: int, background_index: int | None = 0,
                ignore_index: int | None = None) -> list[int]:
    """The ``k`` action classes (not background, not the ignore class) with the highest peak score."""
    scores = np.asarray(scores)
    skip = {background_index, ignore_index}
    cand = [c for c in range(scores.shape[1]) if c not in skip]
    if not len(scores) or k <= 0:
        return []
    peak = scores[:, cand].max(0)
    order = np.argsort(-peak, kind="stable")[:k]
    return [cand[i] for i in order]


def _place_video(video: str | os.PathLike, out: Path) -> str:
    """The video's file name in ``out``: hard-linked (or copied) there unless it is there already."""
    src = Path(video)
    if not src.is_file():
        raise FileNotFoundError(f"report: video {src}: no such file")
    name = src.name if src.name not in _RESERVED else f"video-{src.name}"
    dst = out / name
    if dst.exists() and os.path.samefile(src, dst):
        return name
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(src, tmp)
    return name


def _num(x: Any, fmt: str = ".2f") -> str:
    return "–" if x is None else f"{x:{fmt}}"


def _facts(meta: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(label, text, title)`` of the header, from the stream's ``meta``."""
    m = meta.get
    ckpt = str(m("checkpoint") or "?")
    facts = [("model", f"{m('model') or '?'}" + (f" (epoch {m('epoch')})" if m("epoch") is not None else ""), ""),
             ("checkpoint", Path(ckpt).name, ckpt)]
    if m("backbone"):
        weights = "RANDOM weights" if m("random_weights") else str(m("weights"))
        facts.append(("backbone", f"{m('backbone')} ({weights})", ""))
    src = m("video") or m("features")
    if src:
        facts.append(("input", Path(str(src)).name, str(src)))
    facts += [
        ("chunks", f"{m('num_chunks', '?')} at {m('rate', 0):g}/s ({_num(m('duration_s'))} s)", ""),
        ("real-time factor", _num(m("real_time_factor")), "video seconds / wall seconds of the streaming loop"),
        ("detector", f"{_num(m('detector_ms_per_chunk'), '.1f')} ms/chunk, {m('dtype', '?')}, {m('device', '?')}", ""),
    ]
    rule = m("event_rule")
    if rule:
        text = f"on {rule['on_threshold']:g}, off {rule['off_threshold']:g}, min {rule['min_length']} chunks"
        facts.append(("events", text, "the online event rule (oad.online.EventDetector)"))
    return facts


def _event_rows(events: Sequence[Mapping[str, Any]], colors: Mapping[str, str]) -> str:
    if not events:
        return '<tr><td colspan="8" class="none">no events detected</td></tr>'
    rows = []
    for i, e in enumerate(events, 1):
        start, end = float(e["start_s"]), e.get("end_s")
        delay = None if e.get("start_decided_s") is None else float(e["start_decided_s"]) - start
        name = str(e["class_name"])
        end_txt = _num(end) + (' <span class="dim" title="closed at the end of the stream">(end)</span>'
                               if e.get("end_by_stream_end") else "")
        rows.append(
            f'<tr class="event" tabindex="0" data-start="{start:.6g}" data-end="{_num(end, ".6g")}">'
            f'<td>{i}</td><td><span class="swatch" style="background:{colors.get(name, "#999")}"></span>'
            f'{html.escape(name)}</td><td>{start:.2f}</td><td>{end_txt}</td>'
            f'<td>{_num(None if end is None else float(end) - start)}</td>'
            f'<td>{_num(e.get("peak_score"), ".3f")}</td><td>{_num(delay)}</td>'
            f'<td>{e.get("start_delay_chunks", "–")}</td></tr>')
    return "\n".join(rows)


def write_report(
    output_dir: str | os.PathLike,
    *,
    video_path: str | os.PathLike | None,
    scores: np.ndarray,
    class_names: Sequence[str],
    rate: float,
    events: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    ignore_index: int | None,
    background_index: int | None = 0,
    top_k: int = 5,
) -> Path:
    """Write ``output_dir/report.html`` (and the video beside it); returns the page's path.

    Args:
        output_dir: the folder of the page (created).
        video_path: the streamed video (hard-linked or copied into ``output_dir`` unless there already),
            or None: a page without ``<video>`` (features input).
        scores: ``(T, C)`` per-chunk probabilities; chunk ``t`` covers ``[t / rate, (t + 1) / rate)``.
        class_names: the ``C`` class names.
        rate: chunks per second.
        events: the event dicts of :class:`oad.online.EventDetector` (``class_name, start_s, end_s,
            peak_score, start_decided_s, start_delay_chunks, end_by_stream_end``).
        meta: the stream's facts for the header (``checkpoint, model, epoch, backbone, weights,
            random_weights, video | features, num_chunks, rate, duration_s, real_time_factor,
            detector_ms_per_chunk, dtype, device``; optional ``event_rule``); missing ones are shown as ``?``.
        ignore_index: the ignore class (no line), or None.
        background_index: the background class (no line), or None.
        top_k: number of action classes drawn (highest peak score first).

    Raises:
        ValueError: ``scores`` is not ``(T, len(class_names))``.
        FileNotFoundError: ``video_path`` is given and missing.
    """
    scores = np.asarray(scores, dtype=np.float64)
    names = [str(c) for c in class_names]
    if scores.ndim != 2 or scores.shape[1] != len(names):
        raise ValueError(f"report: scores must be (T, {len(names)}), got {scores.shape}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    video_name = _place_video(video_path, out) if video_path else None

    top = top_classes(scores, top_k, background_index, ignore_index)
    colors: dict[str, str] = {}
    for c in [names[i] for i in top] + [str(e["class_name"]) for e in events]:
        colors.setdefault(c, PALETTE[len(colors) % len(PALETTE)])
    duration = float(meta.get("duration_s") or len(scores) / rate) or 1.0  # (an empty stream: any axis)
    rule = meta.get("event_rule") or {}
    data = {
        "duration": duration,
        "rate": float(rate),
        "on_threshold": rule.get("on_threshold"),
        "classes": [{"name": names[c], "color": colors[names[c]], "peak": round(float(scores[:, c].max()), 4),
                     "scores": np.round(scores[:, c], 4).tolist()} for c in top],
        "events": [{"name": str(e["class_name"]), "color": colors[str(e["class_name"])], "start": float(e["start_s"]),
                    "end": float(e["end_s"] if e.get("end_s") is not None else duration)} for e in events],
    }
    # inside <script>: no "</script>" or "<!--" can appear once every "<" is escaped
    data_json = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")

    title = f"oad stream: {video_name or Path(str(meta.get('features') or 'features')).name}"
    facts = "".join(
        f'<div><dt>{html.escape(k)}</dt><dd title="{html.escape(t)}"{" class=warn" if "RANDOM" in v else ""}>'
        f'{html.escape(v)}</dd></div>' for k, v, t in _facts(meta))
    links = " · ".join(f'<a href="{quote(n)}">{n}</a>' for n in sorted(_RESERVED - {REPORT_NAME})
                       if (out / n).is_file())
    video_html = (
        f'<video id="video" src="{html.escape(quote(video_name))}" controls muted preload="auto" playsinline></video>'
        '<p id="video-error" class="warn" hidden>This browser cannot play the video (its codec); the timeline '
        'and the events still work. Convert it, e.g. <code>ffmpeg -i in -c:v libx264 -pix_fmt yuv420p out.mp4</code>.</p>'
        if video_name else '<p class="dim">Features input: no video (click the timeline or an event to move the '
                           'cursor).</p>')
    page = _TEMPLATE.format(
        title=html.escape(title), css=_CSS, js=_JS, data=data_json, facts=facts, video=video_html,
        duration=f"{duration:.6g}", rows=_event_rows(events, colors), links=links,
        random='<p class="warn banner">RANDOM backbone weights: scores and events are meaningless.</p>'
        if meta.get("random_weights") else "")
    path = out / REPORT_NAME
    atomic_write_bytes(path, page.encode())
    return path


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<dl class="facts">{facts}</dl>
{random}
</header>
<main>
{video}
<div class="bar"><span id="clock">0.00 s</span><span id="legend"></span></div>
<svg id="timeline" data-duration="{duration}" role="img" aria-label="class scores over time"></svg>
<h2>Events</h2>
<table id="events">
<thead><tr><th>#</th><th>class</th><th>start (s)</th><th>end (s)</th><th>length (s)</th><th>peak score</th>
<th title="time from the event's start until its start was decided online">delay (s)</th>
<th title="chunks from the event's first chunk to the chunk that decided its start">delay (chunks)</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
<p class="dim">Click the timeline or an event to seek. Outputs: {links}</p>
</main>
<script type="application/json" id="report-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #fff; color: #222; }
header { padding: 12px 24px; border-bottom: 1px solid #ddd; background: #f4f6f8; }
h1 { font-size: 18px; margin: 0 0 6px; } h2 { font-size: 16px; margin: 20px 0 6px; }
main { max-width: 1000px; margin: 0 auto; padding: 16px 24px; }
.facts { display: flex; flex-wrap: wrap; gap: 4px 20px; margin: 0; }
.facts dt { display: inline; color: #666; } .facts dt::after { content: ": "; }
.facts dd { display: inline; margin: 0; font-weight: 600; }
.warn { color: #b00020; } .banner { font-weight: 600; margin: 6px 0 0; } .dim { color: #777; }
video { display: block; width: 100%; max-height: 60vh; background: #000; }
.bar { display: flex; gap: 16px; align-items: baseline; margin: 8px 0 2px; flex-wrap: wrap; }
#clock { font-variant-numeric: tabular-nums; font-weight: 600; min-width: 6em; }
#legend span { margin-right: 14px; white-space: nowrap; font-variant-numeric: tabular-nums; }
#timeline { display: block; width: 100%; height: 220px; cursor: pointer; user-select: none; }
#timeline text { font-size: 11px; fill: #555; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e4e4e4; }
th { color: #555; font-weight: 600; } td.none { color: #777; }
tr.event { cursor: pointer; } tr.event:hover { background: #eef3fb; } tr.event.active { background: #fff3c4; }
"""

# The timeline is drawn in CSS px (redrawn on resize); x0..x1 is the plot's time axis.
_JS = """
(() => {
  const D = JSON.parse(document.getElementById('report-data').textContent);
  const svg = document.getElementById('timeline');
  const video = document.getElementById('video');
  const clock = document.getElementById('clock');
  const legend = document.getElementById('legend');
  const rows = [...document.querySelectorAll('tr.event')];
  const M = {left: 36, right: 10, top: 20, bottom: 20};
  let x0 = 0, x1 = 1, cursor = null, now = 0;

  const clamp = (v, lo, hi) => Math.min(Math.max(v, lo), hi);
  const xOf = t => x0 + (x1 - x0) * clamp(t / D.duration, 0, 1);
  const tOf = x => D.duration * clamp((x - x0) / (x1 - x0), 0, 1);
  const add = (name, attrs, text) => {
    const e = document.createElementNS(svg.namespaceURI, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return svg.appendChild(e);
  };

  function draw() {
    const w = svg.clientWidth, h = svg.clientHeight, y0 = M.top, y1 = h - M.bottom;
    const yOf = p => y1 - (y1 - y0) * p;
    x0 = M.left; x1 = Math.max(w - M.right, x0 + 1);
    svg.dataset.x0 = x0; svg.dataset.x1 = x1;
    svg.replaceChildren();
    for (const p of [0, 0.5, 1]) {
      add('line', {x1: x0, x2: x1, y1: yOf(p), y2: yOf(p), stroke: '#e2e2e2'});
      add('text', {x: x0 - 6, y: yOf(p) + 4, 'text-anchor': 'end'}, p);
    }
    const step = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600]
      .find(s => D.duration / s <= (x1 - x0) / 70) || 7200;
    for (let t = 0; t <= D.duration + 1e-9; t += step) {
      add('line', {x1: xOf(t), x2: xOf(t), y1: y1, y2: y1 + 4, stroke: '#999'});
      add('text', {x: xOf(t), y: h - 4, 'text-anchor': 'middle'}, t >= 60 ?
        `${Math.floor(t / 60)}:${String(Math.round(t % 60)).padStart(2, '0')}` : `${t}s`);
    }
    for (const e of D.events) {
      add('rect', {x: xOf(e.start), y: y0, width: Math.max(xOf(e.end) - xOf(e.start), 1), height: y1 - y0,
                   fill: e.color, 'fill-opacity': 0.15});
      add('rect', {x: xOf(e.start), y: 4, width: Math.max(xOf(e.end) - xOf(e.start), 1), height: 12, fill: e.color});
      add('text', {x: xOf(e.start) + 3, y: 14, style: 'fill: #fff'}, e.name);
    }
    if (D.on_threshold != null)
      add('line', {x1: x0, x2: x1, y1: yOf(D.on_threshold), y2: yOf(D.on_threshold), stroke: '#888',
                   'stroke-dasharray': '4 3'});
    for (const c of D.classes) {
      const pts = c.scores.map((p, i) => `${xOf((i + 0.5) / D.rate).toFixed(1)},${yOf(p).toFixed(1)}`);
      add('polyline', {points: pts.join(' '), fill: 'none', stroke: c.color, 'stroke-width': 2});
    }
    cursor = add('line', {id: 'cursor', y1: y0 - 4, y2: y1, stroke: '#d00', 'stroke-width': 2});
    setCursor(now);
  }

  function setCursor(t) {
    now = clamp(t, 0, D.duration);
    const x = xOf(now);
    cursor.setAttribute('x1', x); cursor.setAttribute('x2', x);
    cursor.dataset.time = now.toFixed(3);
    clock.textContent = `${now.toFixed(2)} s`;
    const i = clamp(Math.floor(now * D.rate), 0, Math.max((D.classes[0] || {scores: [0]}).scores.length - 1, 0));
    legend.replaceChildren(...D.classes.map(c => {
      const s = document.createElement('span');
      s.innerHTML = `<span class="swatch" style="background:${c.color}"></span>`;
      s.append(`${c.name} ${(c.scores[i] ?? 0).toFixed(2)}`);
      return s;
    }));
    for (const r of rows) r.classList.toggle('active', +r.dataset.start <= now && now < +r.dataset.end);
  }

  function seek(t) {
    if (video) video.currentTime = clamp(t, 0, video.duration || D.duration);
    else setCursor(t);
  }

  svg.addEventListener('click', e => seek(tOf(e.clientX - svg.getBoundingClientRect().left)));
  for (const r of rows) {
    r.addEventListener('click', () => seek(+r.dataset.start));
    r.addEventListener('keydown', e => { if (e.key === 'Enter') seek(+r.dataset.start); });
  }
  if (video) {
    let raf = 0;
    const follow = () => {
      setCursor(video.currentTime);
      raf = video.paused || video.ended ? 0 : requestAnimationFrame(follow);
    };
    for (const name of ['timeupdate', 'seeking', 'seeked', 'loadedmetadata'])
      video.addEventListener(name, () => setCursor(video.currentTime));
    video.addEventListener('play', () => { if (!raf) raf = requestAnimationFrame(follow); });
    video.addEventListener('error', () => { document.getElementById('video-error').hidden = false; });
  }
  window.addEventListener('resize', draw);
  draw();
})();
"""
