"""The task behind ``tools/stream.py``: online detection on one video file (or a features file), or on
live sources (``source=``/``sources=``: cameras, network streams, pipes; :func:`stream_live` and
:mod:`oad.live`, which describes their outputs).

The video is read as a live stream would deliver it: chunk by chunk, each chunk's features computed
(:class:`oad.video.FeatureExtractor`) and scored (:class:`oad.online.OnlineDetector`) before the
next one is read, and action events decided online (:class:`oad.online.EventDetector`). Outputs in
``output_dir``:

- ``scores.csv``: one row per scored chunk: ``chunk, start_s, end_s`` and one column per class name
  (current probabilities); the first line is a ``#`` comment with the run id, the input, the checkpoint,
  backbone and weights.
- ``scores.json``: the same columns plus ``meta`` (run id, input, checkpoint, model, backbone, weights,
  random-weights flag, rate, skipped chunks, real-time factor, timings, dtype, device). Strict JSON (no
  NaN tokens).
- ``events.json``: ``meta``, the event rule and the events with the chunk at which their start and end
  were decided.
- ``timeline.png``: the scores over time with the events (no ground truth).
- ``report.html`` (``report=true``; :mod:`oad.report`): one self-contained page with the video (linked or
  copied beside it), the top classes' scores, the events and a cursor following playback. For a features
  file the page has no video (the timeline and the events table only).
- ``manifest.json``: the run id, the input, the checkpoint and every file of the set (size, SHA-256).

The outputs are one set (:func:`oad.io.output_set`): written into ``output_dir/.outputs/<run id>/`` and
published together by one rename, ``output_dir/<file>`` being links into the published set. A reader
never sees the files of two runs mixed, and a run that fails or is killed before publishing leaves the
previous set as it was. Each file names its run id (the ``#`` line of scores.csv, ``meta.run_id``,
``manifest.json``).

The input is checked before anything is written: a features file must be a ``(T, D)`` floating-point
``.npy`` array with ``T >= 1`` and no NaN/Inf (an integer array is refused, not converted: it is rarely a
feature file). A video's chunks are checked as the backbone produces them: a chunk whose features hold
NaN/Inf is logged and skipped, i.e. left out of the stream: the detector and the event detector never
see it (the next chunk follows the previous one in the model's window or state), it has no row in
scores.csv/scores.json, and ``meta.skipped_chunks`` lists it (``meta.num_skipped_chunks`` counts them).
Events keep the video's chunk numbers (a skipped chunk inside an event counts toward its length); the
timeline and the report draw the scored chunks one after another. A stream with no chunk left to score
is an error.

The real-time factor is video seconds / wall seconds of the streaming loop (decoding, features,
detection, events): above 1 the run keeps up with a live stream.

:func:`stream` runs the steps: :func:`stream_settings` (class names, rate, dtype), :func:`open_input`
(the video through the feature extractor, or the features file, as a :class:`ChunkSource`),
:func:`run_detection` (the loop: detector step and events per chunk, a :class:`StreamRun`),
:func:`run_meta` and :func:`write_outputs` (the files above).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from oad.checkpoint import load_network
from oad.data.readers import count_nonfinite
from oad.io import atomic_write_bytes, load_npy, output_set, scores_csv_bytes, write_json
from oad.online import EventDetector, OnlineDetector
from oad.tasks.common import resolve_ignore_index

log = logging.getLogger(__name__)

__all__ = ["OUTPUT_FILES", "ChunkSource", "StreamRun", "StreamSettings", "check_stream_dims", "new_run_id", "open_input",
           "run_detection", "run_meta", "stream", "stream_live", "stream_settings", "summary_lines", "write_outputs"]

# every file a stream's output set may hold (manifest.json is added by oad.io.output_set)
OUTPUT_FILES = ("scores.csv", "scores.json", "events.json", "timeline.png", "report.html", "manifest.json")


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
    def input(self) -> dict[str, str]:
        """``{'video': path}`` or ``{'features': path}``."""
        key = "video" if self.video else "features"
        return {key: self.meta[key]}

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
    """What the streaming loop produced: per scored chunk its index, times and scores, the detector's and
    the loop's seconds, the events (closed at the end of the stream) and the chunks skipped for
    non-finite features (``{'chunk', 'start_s', 'end_s', 'reason'}``)."""

    index: list[int]
    starts: list[float]
    ends: list[float]
    rows: list[np.ndarray]
    detect_s: float
    wall_s: float
    events: list[dict]
    skipped: list[dict]

    def scores(self) -> np.ndarray:
        """The ``(T, C)`` scores of the scored chunks."""
        return np.stack(self.rows)


def stream(cfg: DictConfig) -> dict[str, Any]:
    """Run online detection on ``cfg.video`` or ``cfg.features`` with ``cfg.ckpt_path``; write the outputs.

    Returns:
        ``{'output_dir', 'scores_csv', 'scores_json', 'events_json', 'timeline', 'num_chunks',
        'real_time_factor', 'events', 'meta', 'report_html'}`` (``report_html``: None without ``report``).

    Raises:
        ValueError: neither or both inputs, a feature size that does not fit the checkpoint (raised before
            any decoding), a features file that is not a non-empty float array without NaN/Inf, no chunk
            left to score, random backbone weights without ``backbone.allow_random``; in every case the
            output folder is left as it was.
        oad.video.VideoError: the video cannot be opened or decoded (a ValueError).
        FileNotFoundError: a missing checkpoint, features file, video or backbone weights.
    """
    given = [key for key in ("video", "features", "source", "sources") if cfg.get(key)]
    if len(given) != 1:
        raise ValueError("give exactly one input: video=<file>, features=<(T, D) .npy>, source=<live source> or "
                         f"sources=[<live source>, ...] (given: {', '.join(given) or 'none'})")
    if given[0] in ("source", "sources"):
        return stream_live(cfg)
    ckpt = str(cfg.ckpt_path)
    net, info = load_network(ckpt)
    data_info = info.get("data_info") or {}
    settings = stream_settings(cfg, ckpt, net, data_info)
    source = open_input(cfg, settings, int(net.in_dim), data_info.get("stream_dims"))
    detector = OnlineDetector(net, dtype=settings.dtype, device=cfg.get("device") or "cpu",
                              ignore_index=settings.ignore_index)
    events = event_detector(cfg, settings)
    run = run_detection(source, detector, events, progress=cfg.get("progress", True))
    meta = run_meta(settings, net, info, source, run, detector, run_id=new_run_id())
    files = write_outputs(cfg, settings, source, run, meta, events, model_name=type(net).__name__)
    if source.random_weights:
        log.warning("backbone weights are RANDOM: scores and events are meaningless (recorded in every output)")
    return {**files, "num_chunks": meta["num_chunks"], "real_time_factor": meta["real_time_factor"],
            "events": run.events, "meta": meta}


def event_detector(cfg: DictConfig, settings: StreamSettings) -> EventDetector:
    """The event detector of ``cfg.events`` for one stream."""
    return EventDetector(
        settings.class_names,
        on_threshold=cfg.events.on_threshold,
        off_threshold=cfg.events.off_threshold,
        min_length=cfg.events.min_length,
        rate=settings.rate,
        background_index=cfg.events.get("background_index", 0),
        ignore_index=settings.ignore_index,
    )


def stream_live(cfg: DictConfig) -> dict[str, Any]:
    """Run online detection on the live source ``cfg.source`` or the sources ``cfg.sources`` (one process,
    one model, one output folder per stream: :mod:`oad.live.pipeline`, :mod:`oad.live.outputs`), until
    every source ends or the run is stopped (SIGINT/SIGTERM). Also writes ``<output_dir>/summary.json``
    (every stream's summary, the overall figures, the meta).

    Returns:
        ``{'live': True, 'output_dir', 'streams': {name: summary}, 'overall', 'meta'}``.

    Raises:
        ValueError: an unknown source, a missing file, bad live settings, a feature size that does not fit
            the checkpoint (all before any source is opened).
        FileNotFoundError: a missing checkpoint or backbone weights.
    """
    from oad.live.outputs import FileSink
    from oad.live.pipeline import LivePipeline
    from oad.live.source import LiveSource, Reconnect, SourceOptions, parse_source, stream_names
    from oad.online.pool import StreamPool

    texts = [cfg.source] if cfg.get("source") else list(cfg.sources)
    specs = [parse_source(str(t), cfg.get("input_format")) for t in texts]
    names = stream_names(specs)
    ckpt = str(cfg.ckpt_path)
    net, info = load_network(ckpt)
    data_info = info.get("data_info") or {}
    settings = stream_settings(cfg, ckpt, net, data_info)
    extractor = _extractor(cfg, settings, int(net.in_dim), data_info.get("stream_dims"))
    out = Path(cfg.output_dir)
    background = cfg.events.get("background_index", 0)
    common = (settings.class_names, settings.rate, settings.ignore_index, background)
    sinks = [FileSink(out, *common, plot=cfg.get("plot", True))]
    if cfg.get("render", False):
        from oad.live.render import RenderSink

        sinks.append(RenderSink(out, *common))
    if cfg.get("view") is not None:
        from oad.live.view import ViewSink

        view = ViewSink(int(cfg.view), *common)
        sinks.append(view)
        log.warning("live page: %s", view.url)
    r = cfg.get("reconnect") or {}
    options = SourceOptions(
        rate=settings.rate, motion_pairs=extractor.flow_pairs, keep_frames=any(s.wants_frames for s in sinks),
        realtime=bool(cfg.get("realtime", False)), open_timeout_s=float(cfg.get("open_timeout_s", 10.0)),
        stall_timeout_s=float(cfg.get("stall_timeout_s", 5.0)), gap_s=float(cfg.get("gap_s", 2.0)),
        reconnect=Reconnect(int(r.get("tries", 5)), float(r.get("initial_delay_s", 0.5)),
                            float(r.get("max_delay_s", 10.0))))
    pool = StreamPool(net, dtype=settings.dtype, device=cfg.get("device") or "cpu", ignore_index=settings.ignore_index)
    described = extractor.describe()
    meta = {
        "run_id": new_run_id(),
        "checkpoint": ckpt,
        "model": type(net).__name__,
        "epoch": info.get("epoch"),
        "backbone": described["backbone"],
        "weights": described["weights"],
        "random_weights": described["random_weights"],
        "extractor": described,
        "rate": settings.rate,
        "class_names": settings.class_names,
        "ignore_index": settings.ignore_index,
        "precision": str(cfg.get("precision") or ("bf16" if cfg.get("bf16") else "fp32")),
        "device": str(cfg.get("device") or "cpu"),
        "realtime": options.realtime,
        "queue_chunks": int(cfg.get("queue_chunks", 8)),
        "drop": str(cfg.get("drop", "oldest")),
        "event_rule": {**event_detector(cfg, settings).describe(), "description": EVENT_RULE},
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    pipeline = LivePipeline([LiveSource(s, n, options) for s, n in zip(specs, names)], extractor, pool,
                            lambda: event_detector(cfg, settings), sinks, queue_chunks=meta["queue_chunks"],
                            drop=meta["drop"], meta=meta)
    result = pipeline.run()
    write_json(out / "summary.json", {"overall": result["overall"], "streams": result["streams"], "meta": meta},
               strict=True)
    if meta["random_weights"]:
        log.warning("backbone weights are RANDOM: scores and events are meaningless (recorded in every output)")
    return {"live": True, "output_dir": str(out), **result, "meta": meta}


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


def _extractor(cfg: DictConfig, settings: StreamSettings, in_dim: int, stream_dims: list[int] | None):
    """The feature extractor of ``cfg``, checked against the checkpoint's feature streams."""
    from oad.video import FeatureExtractor

    extractor = FeatureExtractor.from_config(cfg, rate=settings.rate)
    dims = [extractor.rgb.dim] + ([extractor.flow.dim] if extractor.flow is not None else [])
    what = f"{extractor.rgb.name} rgb" + (f" + {extractor.flow.name} flow" if extractor.flow is not None else "")
    check_stream_dims(settings.ckpt, in_dim, stream_dims, dims, what)
    return extractor


def _open_video(cfg: DictConfig, settings: StreamSettings, in_dim: int, stream_dims: list[int] | None) -> ChunkSource:
    from oad.video import VideoReader

    video = cfg.video
    extractor = _extractor(cfg, settings, in_dim, stream_dims)
    reader = VideoReader(video)  # VideoError (clear, names the file) for a missing or corrupt video
    return ChunkSource(
        chunks=((c.index, c.start, c.end, c.vector) for c in extractor.iter_chunks(reader)),
        total=reader.num_chunks(settings.rate), duration=reader.duration, name=Path(video).name,
        meta={"video": str(video), "fps": reader.fps, "num_frames": reader.num_frames},
        extractor=extractor.describe(),
    )


def _open_features(path: Path, settings: StreamSettings, in_dim: int) -> ChunkSource:
    """The features file, checked whole before any chunk is scored (see the module docstring)."""
    feats = load_npy(path, "features")
    if feats.ndim != 2 or feats.shape[1] != in_dim:
        raise ValueError(f"features {path}: expected (T, {in_dim}) for checkpoint {settings.ckpt}, got {feats.shape}")
    if not np.issubdtype(feats.dtype, np.floating):
        raise ValueError(f"features {path}: dtype {feats.dtype}, expected floating-point features (float16, float32 "
                         "or float64); an integer array is refused, not converted (save it as float32 if it is "
                         "features)")
    total, rate = int(feats.shape[0]), settings.rate
    if total == 0:
        raise ValueError(f"features {path}: no chunks (shape {feats.shape}); at least one is needed")
    nan, inf = count_nonfinite(feats)
    if nan or inf:
        rows = np.flatnonzero(~np.isfinite(np.asarray(feats)).all(axis=1))
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise ValueError(f"features {path}: {nan} NaN and {inf} infinite values in {len(rows)} of {total} rows "
                         f"(rows {shown}); the model cannot score them: fix or drop those rows")
    return ChunkSource(chunks=((i, i / rate, (i + 1) / rate, feats[i]) for i in range(total)), total=total,
                       duration=total / rate, name=path.name, meta={"features": str(path)})


# -- the loop ----------------------------------------------------------------------------------------------
def run_detection(source: ChunkSource, detector: OnlineDetector, events: EventDetector,
                  progress: bool = True) -> StreamRun:
    """Score every chunk of ``source`` as it arrives (``detector.step``) and decide the events online.

    A chunk whose features hold NaN/Inf (a backbone's failure on a live source) is logged and skipped:
    neither the detector nor the event detector sees it (see the module docstring).

    Raises:
        ValueError: no chunk left to score; or the detector's scores are not finite for finite features
            (the checkpoint's weights are broken).
    """
    from tqdm import tqdm

    index, starts, ends, rows, skipped = [], [], [], [], []
    detect_s = 0.0
    t_start = time.perf_counter()
    with tqdm(total=source.total, unit="chunk", disable=not progress, delay=2.0, dynamic_ncols=True) as bar:
        for i, start, end, vec in source.chunks:
            vec = np.asarray(vec)
            bar.update(1)
            if not np.isfinite(vec).all():
                reason = f"{int((~np.isfinite(vec)).sum())} of {vec.size} feature values are NaN/Inf"
                log.error("%s: chunk %d (%.2f-%.2f s) skipped: %s (not fed to the model)", source.name, i, start, end,
                          reason)
                skipped.append({"chunk": i, "start_s": start, "end_s": end, "reason": reason})
                continue
            t0 = time.perf_counter()
            scores = detector.step(vec).scores.cpu().numpy()
            detect_s += time.perf_counter() - t0
            if not np.isfinite(scores).all():
                raise ValueError(f"{source.name}: chunk {i}: the model's scores are NaN/Inf for finite features "
                                 f"(the checkpoint's weights are broken?)")
            events.t = i  # events keep the video's chunk numbers across a skipped chunk
            for d in events.update(scores):
                log.debug("chunk %d: %s of %s (event from chunk %d)", i, d["decision"], d["class_name"], d["start_chunk"])
            index.append(i)
            starts.append(start)
            ends.append(end)
            rows.append(scores)
    wall = time.perf_counter() - t_start
    if not rows:
        why = f"all {len(skipped)} chunks were skipped (NaN/Inf features)" if skipped else "it has no chunks"
        raise ValueError(f"{source.video or source.meta.get('features') or source.name}: nothing to score: {why}")
    if skipped:
        log.warning("%s: %d of %d chunks skipped for NaN/Inf features (meta.skipped_chunks)", source.name,
                    len(skipped), len(skipped) + len(rows))
    return StreamRun(index, starts, ends, rows, detect_s, wall, events.finish(), skipped)


def run_meta(settings: StreamSettings, net: torch.nn.Module, info: dict, source: ChunkSource, run: StreamRun,
             detector: OnlineDetector, run_id: str) -> dict[str, Any]:
    """The facts of a run recorded in every output: run id, checkpoint, model, input, extractor, skipped
    chunks, timings, detector."""
    n = len(run.rows)
    return {
        "run_id": run_id,
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
        "num_skipped_chunks": len(run.skipped),
        "skipped_chunks": run.skipped,
        "duration_s": source.duration,
        "wall_s": run.wall_s,
        "real_time_factor": source.duration / max(run.wall_s, 1e-9),
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


def new_run_id() -> str:
    """A run's id: its start time and a random suffix (``20250101-120000-1a2b3c4d``)."""
    return f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"


# -- the outputs -------------------------------------------------------------------------------------------
EVENT_RULE = (
    "per action class: a score >= on_threshold starts a candidate; it becomes an event once the score "
    "has stayed >= off_threshold for min_length chunks (start decided then, start = the first chunk); "
    "the first chunk with score < off_threshold ends it (end decided at that chunk); open events are "
    "closed at the end of the stream; background and the ignore class never form events")


def write_outputs(cfg: DictConfig, settings: StreamSettings, source: ChunkSource, run: StreamRun,
                  meta: dict[str, Any], events: EventDetector, model_name: str) -> dict[str, Any]:
    """``scores.csv``, ``scores.json``, ``events.json``, with ``plot`` the timeline and with ``report`` the
    HTML page, published in ``cfg.output_dir`` as one set (:func:`oad.io.output_set`, with its
    ``manifest.json``); their paths (``timeline``, ``report_html``: None when not drawn).

    Raises:
        ValueError: a value that strict JSON cannot hold (nothing is published).
        OSError: the output folder cannot be written, naming it (nothing is published).
    """
    out = Path(cfg.output_dir)
    scores = run.scores()
    about = {"input": source.input, "checkpoint": settings.ckpt, "model": model_name}
    try:
        with output_set(out, meta["run_id"], about, owns=OUTPUT_FILES) as staged:
            _write_set(cfg, staged, settings, source, run, meta, events, model_name, scores)
    except OSError as e:
        if not str(e.filename or "").startswith(str(out)):
            raise
        raise OSError(e.errno, f"the output folder cannot be written ({e.strerror or e}: {e.filename})",
                      str(out)) from e
    timeline = out / "timeline.png"
    report_html = out / "report.html"
    return {
        "output_dir": str(out),
        "scores_csv": str(out / "scores.csv"),
        "scores_json": str(out / "scores.json"),
        "events_json": str(out / "events.json"),
        "timeline": str(timeline) if timeline.exists() else None,
        "report_html": str(report_html) if cfg.get("report", False) else None,
    }


def _write_set(cfg: DictConfig, staged: Path, settings: StreamSettings, source: ChunkSource, run: StreamRun,
               meta: dict[str, Any], events: EventDetector, model_name: str, scores: np.ndarray) -> None:
    """The files of one set, into ``staged``."""
    class_names, rate = settings.class_names, settings.rate
    comment = (f"oad stream: checkpoint={settings.ckpt} backbone={source.backbone or 'unknown (features file)'} "
               f"weights={source.weights or 'unknown (features file)'}"
               + (" RANDOM BACKBONE WEIGHTS" if source.random_weights else "")
               + "".join(f" {k}={v}" for k, v in source.input.items()) + f" run_id={meta['run_id']}")
    atomic_write_bytes(staged / "scores.csv", scores_csv_bytes(
        comment, class_names, zip(run.index, run.starts, run.ends, run.rows)))
    write_json(staged / "scores.json", {
        "meta": meta,
        "class_names": class_names,
        "chunk": run.index,
        "start_s": run.starts,
        "end_s": run.ends,
        "scores": np.round(scores.astype(np.float64), 6).tolist(),
    }, strict=True)
    write_json(staged / "events.json", {
        "meta": meta,
        "rule": {**events.describe(), "description": EVENT_RULE},
        "events": run.events,
    }, strict=True)
    if cfg.get("plot", True):
        from oad.plots import plot_timeline

        title = f"{source.name}: {model_name}, {len(run.rows)} chunks at {rate:g}/s"
        if source.backbone:
            title += f", {source.backbone} ({'RANDOM weights' if source.random_weights else source.weights})"
        if run.skipped:
            title += f", {len(run.skipped)} skipped (NaN/Inf features)"
        plot_timeline(scores, None, class_names, staged / "timeline.png", fps=rate, title=title,
                      ignore_index=settings.ignore_index, events=run.events)
    if cfg.get("report", False):
        from oad.report import write_report

        write_report(staged, video_path=source.video, scores=scores, class_names=class_names, rate=rate,
                     events=run.events, meta={**meta, "event_rule": events.describe()},
                     ignore_index=settings.ignore_index, background_index=cfg.events.get("background_index", 0))


RANDOM_WEIGHTS_LINE = "WARNING: RANDOM backbone weights (backbone.weights=random): outputs are for testing only"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What ``tools/stream.py`` prints."""
    if result.get("live"):
        from oad.live.pipeline import summary_lines as live_lines

        lines = live_lines(result)
        if result["meta"]["random_weights"]:
            lines.insert(-1, RANDOM_WEIGHTS_LINE)
        return lines
    m = result["meta"]
    lines = [
        f"{m['num_chunks']} chunks ({m['duration_s']:.2f} s at {m['rate']:g} chunks/s) in {m['wall_s']:.2f} s; "
        f"detector {m['detector_ms_per_chunk']:.1f} ms/chunk ({m['model']}, {m['precision']}, {m['device']})",
        f"{len(result['events'])} events -> {result['events_json']}",
        f"scores -> {result['scores_csv']}, {result['scores_json']}" + (
            f"; timeline -> {result['timeline']}" if result["timeline"] else ""),
    ]
    if m["random_weights"]:
        lines.append(RANDOM_WEIGHTS_LINE)
    if m["num_skipped_chunks"]:
        lines.append(f"WARNING: {m['num_skipped_chunks']} chunks skipped for NaN/Inf features (meta.skipped_chunks)")
    lines.append(f"real-time factor: {m['real_time_factor']:.2f} (video seconds / wall seconds)")
    if result.get("report_html"):
        lines.append(f"report -> {result['report_html']}")
    return lines
