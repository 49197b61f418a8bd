"""The task behind ``tools/stream.py``: online detection on one video file (or a features file).

The video is read as a live stream would deliver it: chunk by chunk, each chunk's features computed
(:class:`oad.video.FeatureExtractor`) and scored (:class:`oad.online.OnlineDetector`) before the
next one is read, and action events decided online (:class:`oad.online.EventDetector`). Outputs in
``output_dir``:

- ``scores.csv``: one row per chunk: ``chunk, start_s, end_s`` and one column per class name (current
  probabilities); the first line is a ``#`` comment with the checkpoint, backbone and weights.
- ``scores.json``: the same columns plus ``meta`` (checkpoint, model, backbone, weights, random-weights
  flag, rate, real-time factor, timings, dtype, device).
- ``events.json``: ``meta``, the event rule and the events with the chunk at which their start and end
  were decided.
- ``timeline.png``: the scores over time with the events (no ground truth).
- ``report.html`` (``report=true``; :mod:`oad.report`): one self-contained page with the video (linked or
  copied beside it), the top classes' scores, the events and a cursor following playback. For a features
  file the page has no video (the timeline and the events table only).

The real-time factor is video seconds / wall seconds of the streaming loop (decoding, features,
detection, events): above 1 the run keeps up with a live stream.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from oad.io import atomic_write_bytes, write_json
from oad.tasks.common import resolve_ignore_index
from oad.checkpoint import load_network
from oad.online import EventDetector, OnlineDetector

log = logging.getLogger(__name__)

__all__ = ["check_stream_dims", "stream", "summary_lines"]


def _build_extractor(cfg: DictConfig, rate: float):
    from oad.video import FeatureExtractor

    return FeatureExtractor.from_config(cfg, rate=rate)


def check_stream_dims(ckpt: str, in_dim: int, expected: list[int] | None, got: list[int], what: str) -> None:
    """The checkpoint's feature streams must be the extractor's (same sizes, same order).

    Raises:
        ValueError: naming both layouts.
    """
    fmt = "+".join(map(str, got))
    if expected:
        if [int(d) for d in expected] != [int(d) for d in got]:
            raise ValueError(
                f"checkpoint {ckpt}: the model was trained on {'+'.join(map(str, expected))} feature streams "
                f"({in_dim}-d), the extractor gives {fmt} ({what}); use the backbone(s) the checkpoint was "
                "trained with (backbone.name=..., flow=true for a motion stream)"
            )
    elif sum(got) != in_dim:
        raise ValueError(f"checkpoint {ckpt}: the model takes {in_dim}-d features, the extractor gives {fmt} ({what})")


def _csv_bytes(comment: str, columns: list[str], rows: Iterator[list]) -> bytes:
    buf = io.StringIO()
    buf.write(f"# {comment}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue().encode()


def stream(cfg: DictConfig) -> dict[str, Any]:
    """Run online detection on ``cfg.video`` or ``cfg.features`` with ``cfg.ckpt_path``; write the outputs.

    Returns:
        ``{'output_dir', 'scores_csv', 'scores_json', 'events_json', 'timeline', 'num_chunks',
        'real_time_factor', 'events', 'meta', 'report_html'}`` (``report_html``: None without ``report``).

    Raises:
        ValueError: neither or both inputs, a feature size that does not fit the checkpoint (raised before
            any decoding), random backbone weights without ``backbone.allow_random``.
        oad.video.VideoError: the video cannot be opened or decoded (a ValueError).
        FileNotFoundError: a missing checkpoint, features file, video or backbone weights.
    """
    video, features = cfg.get("video"), cfg.get("features")
    if bool(video) == bool(features):
        raise ValueError("give exactly one input: video=<file> or features=<(T, D) .npy>")
    ckpt = str(cfg.ckpt_path)
    net, info = load_network(ckpt)
    data_info = info.get("data_info") or {}
    num_classes = int(net.num_classes)
    class_names = [str(c) for c in (data_info.get("class_names") or [f"class_{i}" for i in range(num_classes)])]
    if len(class_names) != num_classes:
        raise ValueError(f"checkpoint {ckpt}: {len(class_names)} class names for {num_classes} classes")
    ignore_index = resolve_ignore_index(cfg.get("ignore_index", "auto"), data_info.get("ignore_index"))
    rate = float(cfg.rate) if cfg.get("rate") is not None else float(data_info.get("fps") or 4.0)
    precision = cfg.get("precision") or ("bf16" if cfg.get("bf16") else "fp32")
    if precision not in ("fp32", "bf16", "int8"):
        raise ValueError(f"precision must be fp32, bf16 or int8, got {precision!r}")
    if precision == "int8" and torch.device(cfg.get("device") or "cpu").type != "cpu":
        raise ValueError(f"precision=int8 runs on the CPU only, not device={cfg.get('device')}")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": "int8"}[precision]
    in_dim = int(net.in_dim)

    source: dict[str, Any]
    if video:
        from oad.video import VideoReader

        extractor = _build_extractor(cfg, rate)
        dims = [extractor.rgb.dim] + ([extractor.flow.dim] if extractor.flow is not None else [])
        what = f"{extractor.rgb.name} rgb" + (f" + {extractor.flow.name} flow" if extractor.flow is not None else "")
        check_stream_dims(ckpt, in_dim, data_info.get("stream_dims"), dims, what)
        reader = VideoReader(video)  # VideoError (clear, names the file) for a missing or corrupt video
        total = reader.num_chunks(rate)
        duration = reader.duration
        chunks = ((c.index, c.start, c.end, c.vector) for c in extractor.iter_chunks(reader))
        ext = extractor.describe()
        source = {"video": str(video), "fps": reader.fps, "num_frames": reader.num_frames}
        backbone, weights, random_weights = ext["backbone"], ext["weights"], bool(ext["random_weights"])
    else:
        path = Path(features)
        if not path.is_file():
            raise FileNotFoundError(f"features {path}: no such file")
        feats = np.load(path, mmap_mode="r")
        if feats.ndim != 2 or feats.shape[1] != in_dim:
            raise ValueError(f"features {path}: expected (T, {in_dim}) for checkpoint {ckpt}, got {feats.shape}")
        total = int(feats.shape[0])
        duration = total / rate
        chunks = ((i, i / rate, (i + 1) / rate, feats[i]) for i in range(total))
        ext = None
        source = {"features": str(path)}
        backbone, weights, random_weights = None, None, False

    detector = OnlineDetector(net, dtype=dtype, device=cfg.get("device") or "cpu", ignore_index=ignore_index)
    ev_cfg = cfg.events
    events = EventDetector(
        class_names,
        on_threshold=ev_cfg.on_threshold,
        off_threshold=ev_cfg.off_threshold,
        min_length=ev_cfg.min_length,
        rate=rate,
        background_index=ev_cfg.get("background_index", 0),
        ignore_index=ignore_index,
    )

    from tqdm import tqdm

    index, starts, ends, rows = [], [], [], []
    detect_s = 0.0
    t_start = time.perf_counter()
    with tqdm(total=total, unit="chunk", disable=not cfg.get("progress", True), delay=2.0, dynamic_ncols=True) as bar:
        for i, start, end, vec in chunks:
            t0 = time.perf_counter()
            scores = detector.step(np.asarray(vec)).scores.cpu().numpy()
            detect_s += time.perf_counter() - t0
            for d in events.update(scores):
                log.debug("chunk %d: %s of %s (event from chunk %d)", i, d["decision"], d["class_name"], d["start_chunk"])
            index.append(i)
            starts.append(start)
            ends.append(end)
            rows.append(scores)
            bar.update(1)
    wall = time.perf_counter() - t_start
    event_list = events.finish()
    n = len(rows)
    scores_arr = np.stack(rows) if rows else np.zeros((0, num_classes), np.float32)
    rtf = duration / wall if wall > 0 else float("inf")

    meta = {
        "checkpoint": ckpt,
        "model": type(net).__name__,
        "epoch": info.get("epoch"),
        **source,
        "backbone": backbone,
        "weights": weights,
        "random_weights": random_weights,
        "extractor": ext,
        "rate": rate,
        "num_chunks": n,
        "duration_s": duration,
        "wall_s": wall,
        "real_time_factor": rtf,
        "detector_ms_per_chunk": 1e3 * detect_s / max(n, 1),
        "dtype": str(detector.dtype).removeprefix("torch."),
        "precision": detector.precision,
        "implementation": detector.implementation,
        "device": str(detector.device),
        "prepacked": detector.prepack,
        "ignore_index": ignore_index,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = ["chunk", "start_s", "end_s", *class_names]
    comment = (f"oad stream: checkpoint={ckpt} backbone={backbone or 'unknown (features file)'} "
               f"weights={weights or 'unknown (features file)'}" + (" RANDOM BACKBONE WEIGHTS" if random_weights else ""))
    atomic_write_bytes(out / "scores.csv", _csv_bytes(
        comment, columns,
        ([i, f"{s:.6g}", f"{e:.6g}", *(f"{p:.6f}" for p in r)] for i, s, e, r in zip(index, starts, ends, rows))))
    write_json(out / "scores.json", {
        "meta": meta,
        "class_names": class_names,
        "chunk": index,
        "start_s": starts,
        "end_s": ends,
        "scores": np.round(scores_arr.astype(np.float64), 6).tolist(),
    })
    write_json(out / "events.json", {
        "meta": meta,
        "rule": {**events.describe(), "description": (
            "per action class: a score >= on_threshold starts a candidate; it becomes an event once the score "
            "has stayed >= off_threshold for min_length chunks (start decided then, start = the first chunk); "
            "the first chunk with score < off_threshold ends it (end decided at that chunk); open events are "
            "closed at the end of the stream; background and the ignore class never form events")},
        "events": event_list,
    })
    timeline = None
    if cfg.get("plot", True) and n:
        from oad.plots import plot_timeline

        name = Path(video).name if video else Path(features).name
        title = f"{name}: {type(net).__name__}, {n} chunks at {rate:g}/s"
        if backbone:
            title += f", {backbone} ({'RANDOM weights' if random_weights else weights})"
        timeline = str(plot_timeline(scores_arr, None, class_names, out / "timeline.png", fps=rate, title=title,
                                     ignore_index=ignore_index, events=event_list))
    report_html = None
    if cfg.get("report", False):
        from oad.report import write_report

        report_html = str(write_report(
            out, video_path=video or None, scores=scores_arr, class_names=class_names, rate=rate,
            events=event_list, meta={**meta, "event_rule": events.describe()}, ignore_index=ignore_index,
            background_index=ev_cfg.get("background_index", 0)))
    if random_weights:
        log.warning("backbone weights are RANDOM: scores and events are meaningless (recorded in every output)")
    return {
        "output_dir": str(out),
        "scores_csv": str(out / "scores.csv"),
        "scores_json": str(out / "scores.json"),
        "events_json": str(out / "events.json"),
        "timeline": timeline,
        "num_chunks": n,
        "real_time_factor": rtf,
        "events": event_list,
        "meta": meta,
        "report_html": report_html,
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What ``tools/stream.py`` prints."""
    m = result["meta"]
    lines = [
        f"{m['num_chunks']} chunks ({m['duration_s']:.2f} s at {m['rate']:g} chunks/s) in {m['wall_s']:.2f} s; "
        f"detector {m['detector_ms_per_chunk']:.1f} ms/chunk ({m['model']}, {m['precision']}, {m['device']})",
        f"{len(result['events'])} events -> {result['events_json']}",
        f"scores -> {result['scores_csv']}, {result['scores_json']}" + (
            f"; timeline -> {result['timeline']}" if result["timeline"] else ""),
    ]
    if m["random_weights"]:
        lines.append("WARNING: RANDOM backbone weights (backbone.weights=random): outputs are for testing only")
    lines.append(f"real-time factor: {m['real_time_factor']:.2f} (video seconds / wall seconds)")
    if result.get("report_html"):
        lines.append(f"report -> {result['report_html']}")
    return lines
