"""Preparation of public feature releases: conversions, and per-chunk targets from temporal annotations.

Nothing here is needed to train on a release as downloaded (``oad.data.readers`` reads the three public
layouts directly); these tools make the files other code expects:

- ``oadtr_to_lstr``: the OadTR pickles -> the LSTR layout (one ``.npy`` per session and stream,
  ``target_perframe/``, ``data_info.json`` with the stream folders it wrote), so the features can be
  memory-mapped instead of unpickled whole. The input is checked by ``OadTRSource`` first. Resumable:
  files already written with the right shape are kept; every file is written to a temporary name and
  renamed, so an interrupted run never leaves a torn file.
- ``pool_maps``: per-chunk feature maps ``(T, C, H, W)`` (TRN's HDD camera features: InceptionResNetV2's
  last block, ``(T, 1536, 8, 8)``) -> ``(T, C)`` vectors by global average (or max) pooling, one file per
  video, resumable, read in blocks (a session's maps need not fit in memory). The average is exactly
  the pooled feature the network itself would output.
- ``build_targets``: ``target_perframe/<video>.npy`` ``(T, C)`` one-hot arrays from one text file per
  class of ``video start_seconds end_seconds`` lines (THUMOS'14 ships ``<ClassName>_test.txt`` and
  ``Ambiguous_test.txt``), given each video's length.

The chunk rule (LSTR's; ``docs/protocol.md``): chunk ``i`` covers ``[i / fps, (i + 1) / fps)``
seconds, and an action ``[s, e]`` labels chunks ``floor(s * fps) .. ceil(e * fps) - 1`` (clipped to the
video; a 1e-6 slack absorbs float error, so ``s = 2.5`` at 4 fps starts exactly at chunk 10). One label
per chunk, by precedence:

1. actions: where action segments overlap, the one that starts later wins (same start: the higher
   class index), i.e. a chunk carries the most recent action onset;
2. ``Ambiguous`` (the ignore class) only where no action covers the chunk;
3. background (column 0) where nothing does.

A video's chunk count ``T`` is taken from the feature files when given (``lengths_from``: the exact
count the targets must match), else from its duration: ``T = floor(duration * fps)`` (whole chunks only,
as feature extractors cut them), or given directly as an integer count.

Command line: ``tools/prepare_data.py`` (``main`` here parses ``command key=value ...``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from oad.data.readers import NO_IGNORE, DataError, OadTRSource, packaged_info
from oad.io import save_npy, write_json

log = logging.getLogger(__name__)

_EPS = 1e-6


# -- files ---------------------------------------------------------------------------------------------
def npy_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """Shape of a readable ``.npy`` file (header only), or None when absent or unreadable."""
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except Exception:  # noqa: BLE001 - absent, torn or not an array: all mean "write it again"
        return None


# -- OadTR -> LSTR --------------------------------------------------------------------------------------
def oadtr_to_lstr(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    dataset: str = "THUMOS",
    stream_dirs: Mapping[str, str] | None = None,
    target_dir: str = "target_perframe",
    overwrite: bool = False,
    **oadtr_kwargs: Any,
) -> dict[str, Any]:
    """Convert the OadTR release in ``src`` to the LSTR layout in ``dst``.

    Args:
        src: folder of the OadTR pickles and data_info_new.json.
        dst: output folder (created).
        dataset: dataset section (``THUMOS``, ``TVSERIES``, ``HDD``).
        stream_dirs: stream name -> output folder; default ``<stream>_oadtr`` (the features are TSN
            ActivityNet features, not the Kinetics ones the LSTR folder names stand for). The mapping is
            recorded in ``dst/data_info.json`` (``streams``), where ``LSTRSource`` finds it.
        target_dir: output folder of the targets.
        overwrite: rewrite files that already exist with the right shape (default: keep them).
        oadtr_kwargs: passed to ``OadTRSource`` (``feature_file``, ``anno_file``, ``split_names``,
            ``streams``, ``skip_bad_videos``, ...).
    Returns:
        ``{'splits': {split: {'videos', 'chunks', 'written', 'kept'}}, 'data_info': path}``.
    """
    source = OadTRSource(src, dataset=dataset, **oadtr_kwargs)
    dst = Path(dst)
    dirs = {n: (stream_dirs or {}).get(n, f"{n}_oadtr") for n in source.streams}
    summary: dict[str, Any] = {"splits": {}}
    sessions: dict[str, list[str]] = {}
    for split, names in source.split_sessions.items():
        outputs = [[dst / d / f"{s}.npy" for d in dirs.values()] + [dst / target_dir / f"{s}.npy"] for s in names]
        if not overwrite and all(npy_shape(p) is not None for files in outputs for p in files):
            log.info("%s: all %d videos already converted, kept", split, len(names))
            summary["splits"][split] = {"videos": len(names), "written": 0, "kept": len(names)}
            sessions[split] = list(names)
            continue
        source.check([split])
        videos = source.load(split)
        written = kept = 0
        for v in videos:
            arrays = [np.asarray(s, dtype=np.float32) for s in v.streams] + [v.targets]
            files = [dst / d / f"{v.name}.npy" for d in dirs.values()] + [dst / target_dir / f"{v.name}.npy"]
            for path, a in zip(files, arrays):
                if not overwrite and npy_shape(path) == a.shape:
                    kept += 1
                    continue
                save_npy(path, a)
                written += 1
        summary["splits"][split] = {"videos": len(videos), "chunks": int(sum(v.num_chunks for v in videos)),
                                    "written": written, "kept": kept}
        sessions[split] = [v.name for v in videos]
        source.forget(split)  # the pickles of one split at a time in memory
        log.info("%s: %d videos, %d files written, %d kept", split, len(videos), written, kept)

    info_path = dst / "data_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    section = {
        "class_names": source.class_names,
        "num_classes": source.num_classes,
        "ignore_index": NO_IGNORE if source.ignore_index is None else source.ignore_index,
        "metrics": source.metric,
        "fps": source.fps,
        **{f"{split}_session_set": names for split, names in sessions.items()},
        "streams": dirs,
        "converted_from": f"OadTR release ({source.root})",
    }
    info[dataset] = section
    write_json(info_path, info)  # last: a data_info.json means the conversion finished
    summary["data_info"] = str(info_path)
    return summary


def write_synthetic(
    dst: str | os.PathLike,
    num_videos: Mapping[str, int],
    dataset: str = "THUMOS",
    stream_dirs: Mapping[str, str] | None = None,
    target_dir: str = "target_perframe",
    **generator: Any,
) -> dict[str, Any]:
    """Write the synthetic generator's videos (:func:`oad.data.synthetic.make_synthetic_split`) in the LSTR
    layout, so that every tool reads them as a real release (``data=thumos14 data.root=<dst>``).

    Args:
        dst: output folder (created; existing files are rewritten).
        num_videos: videos per split, e.g. ``{train: 60, test: 40}`` (``val`` too for a validation split).
        dataset: the data_info section to write (``THUMOS``: the class names and facts of THUMOS'14).
        stream_dirs: stream name -> folder (default ``{rgb: rgb_synthetic, flow: flow_synthetic}``; recorded
            in ``data_info.json`` where ``LSTRSource`` finds it).
        target_dir: folder of the one-hot targets.
        **generator: the generator's arguments (``seed``, ``rgb_dim``, ``flow_dim``, ``length_scale``,
            ``evidence``, ``noise``, ``noise_ar``, ``drift``, ``dim_scale``, ``video_offset``, ``shift``,
            ``relu``), recorded in ``data_info.json``.
    Returns:
        ``{'splits': {split: {'videos', 'chunks'}}, 'data_info': path}``.
    """
    from oad.data.synthetic import AMBIGUOUS, FPS, NUM_CLASSES, THUMOS_CLASS_NAMES, make_synthetic_split

    dst = Path(dst)
    dirs = dict(stream_dirs or {"rgb": "rgb_synthetic", "flow": "flow_synthetic"})
    if len(dirs) != 2:
        raise ValueError(f"stream_dirs: the generator writes two streams (rgb, flow), got {dirs}")
    summary: dict[str, Any] = {"splits": {}}
    sessions: dict[str, list[str]] = {}
    for split, n in num_videos.items():
        videos = make_synthetic_split(split, int(n), **generator)
        for v in videos:
            for d, a in zip(dirs.values(), v.streams):
                save_npy(dst / d / f"{v.name}.npy", np.asarray(a, dtype=np.float32))
            save_npy(dst / target_dir / f"{v.name}.npy", v.targets)
        sessions[split] = [v.name for v in videos]
        summary["splits"][split] = {"videos": len(videos), "chunks": int(sum(v.num_chunks for v in videos))}
    info = {dataset: {
        "class_names": list(THUMOS_CLASS_NAMES),
        "num_classes": NUM_CLASSES,
        "ignore_index": AMBIGUOUS,
        "metrics": "AP",
        "fps": float(FPS),
        **{f"{split}_session_set": names for split, names in sessions.items()},
        "streams": dirs,
        "generated_by": {"generator": "oad.data.synthetic.make_synthetic_split", **generator},
    }}
    write_json(dst / "data_info.json", info)  # last: a data_info.json means the folder is complete
    summary["data_info"] = str(dst / "data_info.json")
    return summary


# -- targets from temporal annotations -------------------------------------------------------------------
class Segment(NamedTuple):
    video: str
    label: int  # class index
    start: float  # seconds
    end: float
    where: str = ""  # file:line, for messages


def read_segments(
    annotations: str | os.PathLike, class_names: Sequence[str], suffix: str = "_test", background: int = 0
) -> list[Segment]:
    """Segments from ``<annotations>/<ClassName><suffix>.txt`` files (``video start end`` per line).

    Every class except ``background`` is looked for; a class without a file is logged and has no segments.
    """
    folder = Path(annotations)
    if not folder.is_dir():
        raise DataError(f"{folder}: annotation folder does not exist")
    segments: list[Segment] = []
    problems: list[str] = []
    for c, name in enumerate(class_names):
        if c == background:
            continue
        path = folder / f"{name.replace('/', '_')}{suffix}.txt"
        if not path.is_file():
            log.warning("no annotation file %s for class %d %r", path, c, name)
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                video, s, e = parts[0], float(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                problems.append(f"{path}:{n}: expected 'video start end', got {line!r}")
                continue
            if not (math.isfinite(s) and math.isfinite(e)) or e < s:
                problems.append(f"{path}:{n}: bad segment [{s}, {e}]")
                continue
            segments.append(Segment(video, c, s, e, f"{path}:{n}"))
    if problems:
        raise DataError(f"{len(problems)} bad annotation line(s):\n" + "\n".join(f"  - {p}" for p in problems[:20]),
                        problems)
    return segments


def read_durations(path: str | os.PathLike) -> dict[str, float]:
    """``video -> duration`` (seconds) from a JSON object or a CSV of ``video,duration`` rows (header ok)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: durations file does not exist")
    if path.suffix.lower() == ".json":
        raw = json.loads(path.read_text())
        return {str(k): float(v) for k, v in raw.items()}
    out: dict[str, float] = {}
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or not row[0].strip():
                continue
            try:
                out[row[0].strip()] = float(row[1])
            except (IndexError, ValueError):
                if n == 1:  # a header
                    continue
                raise DataError(f"{path}:{n}: expected 'video,duration_seconds', got {row}") from None
    return out


def chunk_counts_from_durations(durations: Mapping[str, float], fps: float) -> dict[str, int]:
    """``T = floor(duration * fps)``: whole chunks only."""
    return {v: int(math.floor(d * fps + _EPS)) for v, d in durations.items()}


def chunk_counts_from_features(folder: str | os.PathLike) -> dict[str, int]:
    """``video -> T`` from the headers of ``<folder>/<video>.npy`` feature files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: feature folder does not exist")
    counts = {}
    for p in sorted(folder.glob("*.npy")):
        shape = npy_shape(p)
        if shape is None:
            raise DataError(f"{p}: cannot be read as a .npy array")
        counts[p.stem] = int(shape[0])
    return counts


def chunk_span(start: float, end: float, fps: float, num_chunks: int) -> tuple[int, int]:
    """Chunks ``[first, last + 1)`` labelled by an action ``[start, end]`` seconds, clipped to the video."""
    first = max(0, math.floor(start * fps + _EPS))
    stop = min(num_chunks, math.ceil(end * fps - _EPS))
    return first, max(first, stop)


def targets_from_segments(
    segments: Sequence[Segment],
    num_chunks: Mapping[str, int],
    num_classes: int,
    fps: float = 4.0,
    ambiguous: int | None = None,
    background: int = 0,
) -> dict[str, np.ndarray]:
    """One-hot ``(T, C)`` float32 targets per video of ``num_chunks`` (the module docstring's rule and
    precedence). Segments of videos not in ``num_chunks`` are ignored (logged)."""
    labels = {v: np.full(int(T), background, dtype=np.int64) for v, T in num_chunks.items()}
    amb = {v: np.zeros(int(T), dtype=bool) for v, T in num_chunks.items()}
    unknown = sorted({s.video for s in segments if s.video not in labels})
    if unknown:
        log.warning("%d annotated video(s) have no length and are left out: %s", len(unknown),
                    ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else ""))
    actions = sorted((s for s in segments if s.video in labels and s.label != ambiguous),
                     key=lambda s: (s.start, s.label))
    for s in actions:  # later onsets overwrite earlier ones
        a, b = chunk_span(s.start, s.end, fps, len(labels[s.video]))
        labels[s.video][a:b] = s.label
    for s in segments:
        if s.video in labels and s.label == ambiguous:
            a, b = chunk_span(s.start, s.end, fps, len(labels[s.video]))
            amb[s.video][a:b] = True
    out = {}
    for v, lab in labels.items():
        is_action = lab != background
        if ambiguous is not None:
            lab = np.where(amb[v] & ~is_action, ambiguous, lab)
        out[v] = np.eye(num_classes, dtype=np.float32)[lab]
    return out


def build_targets(
    annotations: str | os.PathLike,
    out: str | os.PathLike,
    dataset: str = "THUMOS",
    class_names: Sequence[str] | None = None,
    durations: str | os.PathLike | Mapping[str, float] | None = None,
    num_chunks: str | os.PathLike | Mapping[str, int] | None = None,
    lengths_from: str | os.PathLike | None = None,
    fps: float | None = None,
    suffix: str = "_test",
    ambiguous: str | None = "Ambiguous",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``<out>/<video>.npy`` one-hot targets built from per-class annotation files.

    Args:
        annotations: folder of ``<ClassName><suffix>.txt`` files.
        out: output folder, e.g. ``<root>/target_perframe``.
        dataset: packaged facts for the class names and fps (``THUMOS``, ``TVSeries``, ``HDD``).
        class_names: override the class names (column order; column 0 is background).
        durations: ``video -> seconds`` (mapping, or a JSON/CSV file).
        num_chunks: ``video -> T`` (mapping, or a JSON file); wins over ``durations``.
        lengths_from: a feature folder whose ``.npy`` headers give ``T``; wins over both.
        fps: chunks per second (default: the dataset's, 4 for THUMOS).
        suffix: annotation file suffix.
        ambiguous: the class name labelled only where no action is (None: no such class).
        overwrite: rewrite existing target files (default: keep those with the right shape).
    Returns:
        ``{'videos', 'chunks', 'written', 'kept', 'counts': {class name: chunks}}``.
    """
    facts = packaged_info(dataset) or {}
    names = list(class_names) if class_names is not None else facts.get("class_names")
    if not names:
        raise DataError(f"no class names for dataset {dataset!r}: pass class_names")
    fps = float(fps if fps is not None else facts.get("fps", 4.0))
    if lengths_from is not None:
        counts = chunk_counts_from_features(lengths_from)
    elif num_chunks is not None:
        raw = num_chunks if isinstance(num_chunks, Mapping) else json.loads(Path(num_chunks).read_text())
        counts = {str(k): int(v) for k, v in raw.items()}
    elif durations is not None:
        raw = durations if isinstance(durations, Mapping) else read_durations(durations)
        counts = chunk_counts_from_durations(raw, fps)
    else:
        raise DataError("give the video lengths: lengths_from=<feature folder>, num_chunks=... or durations=...")
    amb = names.index(ambiguous) if ambiguous is not None and ambiguous in names else None
    targets = targets_from_segments(read_segments(annotations, names, suffix), counts, len(names), fps, amb)
    written = kept = 0
    out = Path(out)
    for v, t in targets.items():
        path = out / f"{v}.npy"
        if not overwrite and npy_shape(path) == t.shape:
            kept += 1
            continue
        save_npy(path, t)
        written += 1
    per_class = np.sum([t.sum(0) for t in targets.values()], axis=0) if targets else np.zeros(len(names))
    return {"videos": len(targets), "chunks": int(sum(counts.values())), "written": written, "kept": kept,
            "counts": {n: int(c) for n, c in zip(names, per_class)}}


# -- feature maps -> vectors ---------------------------------------------------------------------------
def pool_maps(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    how: str = "mean",
    block: int = 256,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Pool every ``<src>/<video>.npy`` of shape ``(T, C, *spatial)`` to ``<dst>/<video>.npy`` ``(T, C)``.

    Args:
        src: folder of per-video feature maps, channel first after the time axis.
        dst: output folder (created); point the stream at it (e.g. ``data.source.trn.streams=
            '{camera: inceptionresnetv2_mean, sensor: sensor}'``).
        how: ``mean`` (global average pooling) or ``max``.
        block: chunks read at a time.
        overwrite: rewrite outputs that already exist with the right shape (default: keep them).
    Returns:
        ``{'videos', 'chunks', 'written', 'kept', 'dim', 'failed': [{'file', 'problem'}]}``.
    Raises:
        DataError: after every readable file is done, listing the files that could not be pooled
            (unreadable, fewer than 3 dimensions, or a channel count different from the others).
    """
    if how not in ("mean", "max"):
        raise DataError(f"how={how!r}: use 'mean' or 'max'")
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder (the feature maps to pool)")
    files = sorted(src.glob("*.npy"))
    if not files:
        raise DataError(f"{src}: no .npy files")
    if src.resolve() == dst.resolve():
        raise DataError(f"{dst}: the output folder must differ from the input folder")
    block = max(1, int(block))
    summary: dict[str, Any] = {"videos": 0, "chunks": 0, "written": 0, "kept": 0, "dim": None, "failed": []}

    def fail(path: Path, problem: str) -> None:
        log.warning("%s: %s (skipped)", path, problem)
        summary["failed"].append({"file": str(path), "problem": problem})

    for path in files:
        try:
            maps = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
            fail(path, f"cannot be read as a .npy array: {e}")
            continue
        if maps.ndim < 3:
            fail(path, f"shape {maps.shape}: expected per-chunk maps (T, C, H, W) (already vectors?)")
            continue
        T, C = maps.shape[:2]
        if summary["dim"] is None:
            summary["dim"] = int(C)
        elif C != summary["dim"]:
            fail(path, f"{C} channels, expected {summary['dim']} (as in the files before it)")
            continue
        out = dst / path.name
        summary["videos"] += 1
        summary["chunks"] += int(T)
        if not overwrite and npy_shape(out) == (T, C):
            summary["kept"] += 1
            continue
        pooled = np.empty((T, C), dtype=np.float32)
        try:
            for i in range(0, T, block):
                part = np.asarray(maps[i : i + block], dtype=np.float32).reshape(-1, C, int(np.prod(maps.shape[2:])))
                pooled[i : i + block] = part.mean(axis=2) if how == "mean" else part.max(axis=2)
        except Exception as e:  # noqa: BLE001 - a truncated file fails here, not at np.load
            summary["videos"] -= 1
            summary["chunks"] -= int(T)
            fail(path, f"cannot be read: {e}")
            continue
        save_npy(out, pooled)
        summary["written"] += 1
    if summary["failed"]:
        lines = "\n".join(f"  {f['file']}: {f['problem']}" for f in summary["failed"])
        raise DataError(f"{len(summary['failed'])} of {len(files)} files in {src} could not be pooled "
                        f"(the other {summary['videos']} are in {dst}):\n{lines}", [f["file"] for f in summary["failed"]])
    return summary


# -- command line --------------------------------------------------------------------------------------
COMMANDS = {"oadtr_to_lstr": oadtr_to_lstr, "targets": build_targets, "pool": pool_maps, "synthetic": write_synthetic}
USAGE = """usage: python tools/prepare_data.py <command> key=value ...
  oadtr_to_lstr src=<OadTR folder> dst=<output folder> [dataset=THUMOS] [feature_file=...] [anno_file=...]
                [stream_dirs='{rgb: rgb_oadtr, flow: flow_oadtr}'] [overwrite=false]
  pool src=<folder of (T, C, H, W) maps> dst=<output folder> [how=mean|max] [block=256] [overwrite=false]
  synthetic dst=<output folder> num_videos='{train: 60, test: 40}' [seed=0] [length_scale=1.0] [evidence=1.0]
            [noise=1.0] [noise_ar=0.0] [drift=1.0] [dim_scale=0.0] [video_offset=0.0] [shift=0.0] [relu=false]
  targets annotations=<folder of <Class>_test.txt> out=<root>/target_perframe
          (lengths_from=<root>/<feature folder> | num_chunks=<json> | durations=<json or csv>)
          [dataset=THUMOS] [suffix=_test] [fps=4] [ambiguous=Ambiguous]
Values are YAML: lists [a, b], mappings {a: b}, numbers, true/false, null."""


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Run ``command key=value ...``; returns the command's summary."""
    import yaml

    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        raise SystemExit(USAGE if not argv or argv[0] in ("-h", "--help") else f"unknown command {argv[0]!r}\n{USAGE}")
    kwargs: dict[str, Any] = {}
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected key=value, got {arg!r}\n{USAGE}")
        kwargs[key] = yaml.safe_load(value) if value else None
    return COMMANDS[argv[0]](**kwargs)


__all__ = ["oadtr_to_lstr", "write_synthetic", "pool_maps", "build_targets", "targets_from_segments", "read_segments", "read_durations",
           "chunk_counts_from_durations", "chunk_counts_from_features", "chunk_span", "main"]
