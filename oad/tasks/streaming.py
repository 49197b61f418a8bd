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

:func:`stream` runs three steps: :func:`open_input` (the video through the feature extractor, or the
features file, as a :class:`ChunkSource`), :func:`run_detection` (the loop: detector step and events per
chunk, a :class:`StreamRun`) and :func:`write_outputs` (the files above).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from oad.checkpoint import load_network
from oad.io import atomic_write_bytes, write_json
from oad.online import EventDetector, OnlineDetector
from oad.tasks.common import resolve_ignore_index

log = logging.getLogger(__name__)

__all__ = ["ChunkSource", "StreamRun", "StreamSettings", "check_stream_dims", "open_input", "run_detection", "stream",
           "stream_settings", "summary_lines", "write_outputs"]


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


@dataclass(frozen=True)
class StreamSettings:
    """What the checkpoint and the config fix for a run: the class names, the ignore class, the chunk rate
    and the detector's dtype (``torch.float32``, ``torch.bfloat16`` or ``'int8'``)."""

    ckpt: str
    class_names: list[str]
    ignore_index: int | None
    rate: float
    dtype: torch.dtype | str


@dataclass
class ChunkSource:
    """An opened input: its chunks ``(index, start_s, end_s, feature vector)``, read lazily in order, and
    what it is (``meta``: ``{'video', 'fps', 'num_frames'}`` or ``{'features'}``; ``extractor``: the
    feature extractor's settings, None for a features file)."""

    chunks: Iterator[tuple[int, float, float, np.ndarray]]
    total: int  # chunks expected (the progress bar's length)
    duration: float  # seconds
    name: str  # the input file's name (the timeline's title)
    meta: dict[str, Any]
    extractor: dict[str, Any] | None = None

    @property
    def video(self) -> str | None:
        return self.meta.get("video")

    @property
    def backbone(self) -> str | None:
        return self.extractor["backbone"] if self.extractor else None

    @property
    def weights(self) -> str | None:
        return self.extractor["weights"] if self.extractor else None

    @property
    def random_weights(self) -> bool:
        return bool(self.extractor["random_weights"]) if self.extractor else False


@dataclass
class StreamRun:
    """What the streaming loop produced: per chunk its index, times and scores, the detector's and the
    loop's seconds, and the events (closed at the end of the stream)."""

    index: list[int]
    starts: list[float]
    ends: list[float]
    rows: list[np.ndarray]
    detect_s: float
    wall_s: float
    events: list[dict]

    def scores(self, num_classes: int) -> np.ndarray:
        """The ``(T, C)`` scores (``(0, C)`` for an empty stream)."""
        return np.stack(self.rows) if self.rows else np.zeros((0, num_classes), np.float32)


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
    if bool(cfg.get("video")) == bool(cfg.get("features")):
        raise ValueError("give exactly one input: video=<file> or features=<(T, D) .npy>")
    ckpt = str(cfg.ckpt_path)
    net, info = load_network(ckpt)
    data_info = info.get("data_info") or {}
    settings = stream_settings(cfg, ckpt, net, data_info)
    source = open_input(cfg, settings, int(net.in_dim), data_info.get("stream_dims"))
    detector = OnlineDetector(net, dtype=settings.dtype, device=cfg.get("device") or "cpu",
                              ignore_index=settings.ignore_index)
    events = EventDetector(
        settings.class_names,
        on_threshold=cfg.events.on_threshold,
        off_threshold=cfg.events.off_threshold,
        min_length=cfg.events.min_length,
        rate=settings.rate,
        background_index=cfg.events.get("background_index", 0),
        ignore_index=settings.ignore_index,
    )
    run = run_detection(source, detector, events, progress=cfg.get("progress", True))
    meta = run_meta(settings, net, info, source, run, detector)
    files = write_outputs(cfg, settings, source, run, meta, events, model_name=type(net).__name__)
    if source.random_weights:
        log.warning("backbone weights are RANDOM: scores and events are meaningless (recorded in every output)")
    return {**files, "num_chunks": meta["num_chunks"], "real_time_factor": meta["real_time_factor"],
            "events": run.events, "meta": meta}


def stream_settings(cfg: DictConfig, ckpt: str, net: torch.nn.Module, data_info: dict) -> StreamSettings:
    """The class names (the checkpoint's, one per class), ignore class, rate and detector dtype of a run.

    Raises:
        ValueError: class names that do not fit the model, an unknown precision, int8 off the CPU.
    """
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
    return StreamSettings(ckpt, class_names, ignore_index, rate, dtype)


# -- the input ---------------------------------------------------------------------------------------------
def open_input(cfg: DictConfig, settings: StreamSettings, in_dim: int, stream_dims: list[int] | None) -> ChunkSource:
    """``cfg.video`` (through the feature extractor) or ``cfg.features`` as a chunk source, checked against
    the model's input (``in_dim`` and the checkpoint's ``stream_dims``) before any chunk is read."""
    if cfg.get("video"):
        return _open_video(cfg, settings, in_dim, stream_dims)
    return _open_features(Path(cfg.features), settings, in_dim)


def _open_video(cfg: DictConfig, settings: StreamSettings, in_dim: int, stream_dims: list[int] | None) -> ChunkSource:
    from oad.video import FeatureExtractor, VideoReader

    video = cfg.video
    extractor = FeatureExtractor.from_config(cfg, rate=settings.rate)
    dims = [extractor.rgb.dim] + ([extractor.flow.dim] if extractor.flow is not None else [])
    what = f"{extractor.rgb.name} rgb" + (f" + {extractor.flow.name} flow" if extractor.flow is not None else "")
    check_stream_dims(settings.ckpt, in_dim, stream_dims, dims, what)
    reader = VideoReader(video)  # VideoError (clear, names the file) for a missing or corrupt video
    return ChunkSource(
        chunks=((c.index, c.start, c.end, c.vector) for c in extractor.iter_chunks(reader)),
        total=reader.num_chunks(settings.rate), duration=reader.duration, name=Path(video).name,
        meta={"video": str(video), "fps": reader.fps, "num_frames": reader.num_frames},
        extractor=extractor.describe(),
    )


def _open_features(path: Path, settings: StreamSettings, in_dim: int) -> ChunkSource:
    if not path.is_file():
        raise FileNotFoundError(f"features {path}: no such file")
    feats = np.load(path, mmap_mode="r")
    if feats.ndim != 2 or feats.shape[1] != in_dim:
        raise ValueError(f"features {path}: expected (T, {in_dim}) for checkpoint {settings.ckpt}, got {feats.shape}")
    total, rate = int(feats.shape[0]), settings.rate
    return ChunkSource(chunks=((i, i / rate, (i + 1) / rate, feats[i]) for i in range(total)), total=total,
                       duration=total / rate, name=path.name, meta={"features": str(path)})


# -- the loop ----------------------------------------------------------------------------------------------
def run_detection(source: ChunkSource, detector: OnlineDetector, events: EventDetector,
                  progress: bool = True) -> StreamRun:
    """Score every chunk of ``source`` as it arrives (``detector.step``) and decide the events online."""
    from tqdm import tqdm

    index, starts, ends, rows = [], [], [], []
    detect_s = 0.0
    t_start = time.perf_counter()
    with tqdm(total=source.total, unit="chunk", disable=not progress, delay=2.0, dynamic_ncols=True) as bar:
        for i, start, end, vec in source.chunks:
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
    return StreamRun(index, starts, ends, rows, detect_s, wall, events.finish())


def run_meta(settings: StreamSettings, net: torch.nn.Module, info: dict, source: ChunkSource, run: StreamRun,
             detector: OnlineDetector) -> dict[str, Any]:
    """The facts of a run recorded in every output: checkpoint, model, input, extractor, timings, detector."""
    n = len(run.rows)
    return {
        "checkpoint": settings.ckpt,
        "model": type(net).__name__,
        "epoch": info.get("epoch"),
        **source.meta,
        "backbone": source.backbone,
        "weights": source.weights,
        "random_weights": source.random_weights,
        "extractor": source.extractor,
        "rate": settings.rate,
        "num_chunks": n,
        "duration_s": source.duration,
        "wall_s": run.wall_s,
        "real_time_factor": source.duration / run.wall_s if run.wall_s > 0 else float("inf"),
        "detector_ms_per_chunk": 1e3 * run.detect_s / max(n, 1),
        "dtype": str(detector.dtype).removeprefix("torch."),
        "precision": detector.precision,
        "implementation": detector.implementation,
        "device": str(detector.device),
        "prepacked": detector.prepack,
        "ignore_index": settings.ignore_index,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# -- the outputs -------------------------------------------------------------------------------------------
EVENT_RULE = (
    "per action class: a score >= on_threshold starts a candidate; it becomes an event once the score "
    "has stayed >= off_threshold for min_length chunks (start decided then, start = the first chunk); "
    "the first chunk with score < off_threshold ends it (end decided at that chunk); open events are "
    "closed at the end of the stream; background and the ignore class never form events")


def write_outputs(cfg: DictConfig, settings: StreamSettings, source: ChunkSource, run: StreamRun,
                  meta: dict[str, Any], events: EventDetector, model_name: str) -> dict[str, Any]:
    """``scores.csv``, ``scores.json``, ``events.json`` in ``cfg.output_dir``, with ``plot`` the timeline
    and with ``report`` the HTML page; their paths (``timeline``, ``report_html``: None when not drawn)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names, rate = settings.class_names, settings.rate
    scores = run.scores(len(class_names))
    columns = ["chunk", "start_s", "end_s", *class_names]
    comment = (f"oad stream: checkpoint={settings.ckpt} backbone={source.backbone or 'unknown (features file)'} "
               f"weights={source.weights or 'unknown (features file)'}"
               + (" RANDOM BACKBONE WEIGHTS" if source.random_weights else ""))
    atomic_write_bytes(out / "scores.csv", _csv_bytes(
        comment, columns, ([i, f"{s:.6g}", f"{e:.6g}", *(f"{p:.6f}" for p in r)]
                           for i, s, e, r in zip(run.index, run.starts, run.ends, run.rows))))
    write_json(out / "scores.json", {
        "meta": meta,
        "class_names": class_names,
        "chunk": run.index,
        "start_s": run.starts,
        "end_s": run.ends,
        "scores": np.round(scores.astype(np.float64), 6).tolist(),
    })
    write_json(out / "events.json", {
        "meta": meta,
        "rule": {**events.describe(), "description": EVENT_RULE},
        "events": run.events,
    })
    timeline = None
    if cfg.get("plot", True) and run.rows:
        from oad.plots import plot_timeline

        title = f"{source.name}: {model_name}, {len(run.rows)} chunks at {rate:g}/s"
        if source.backbone:
            title += f", {source.backbone} ({'RANDOM weights' if source.random_weights else source.weights})"
        timeline = str(plot_timeline(scores, None, class_names, out / "timeline.png", fps=rate, title=title,
                                     ignore_index=settings.ignore_index, events=run.events))
    report_html = None
    if cfg.get("report", False):
        from oad.report import write_report

        report_html = str(write_report(
            out, video_path=source.video, scores=scores, class_names=class_names, rate=rate,
            events=run.events, meta={**meta, "event_rule": events.describe()}, ignore_index=settings.ignore_index,
            background_index=cfg.events.get("background_index", 0)))
    return {
        "output_dir": str(out),
        "scores_csv": str(out / "scores.csv"),
        "scores_json": str(out / "scores.json"),
        "events_json": str(out / "events.json"),
        "timeline": timeline,
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
