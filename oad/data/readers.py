"""Readers of the public per-chunk feature layouts: the feature files researchers already have, read
as they are, checked before any training step.

Three layouts (``docs/protocol.md`` and the dataset READMEs in ``datasets/``):

- ``OadTRSource`` - the OadTR release (Wang et al., ICCV 2021): one pickle of features per split,
  ``{session: {'rgb': (T, 2048), 'flow': (T, 1024)}}``, one of targets, ``{session: {'anno': (T, C),
  'feature_length': T}}``, and ``data_info_new.json`` with the class names and session lists per dataset.
  The pickles are loaded whole (that is the format); ``feature_length`` is not used, lengths come from
  the arrays.
- ``LSTRSource`` - the LSTR / TeSTra release (Xu et al., NeurIPS 2021), reused by MAT, MiniROAD, CMeRT:
  one folder per stream of ``<session>.npy`` ``(T, d)``, ``target_perframe/<session>.npy`` ``(T, C)``
  and ``data_info.json``. Features are memory-mapped, so a THUMOS-sized set is not held in RAM.
- ``TRNSource`` - the TRN release (Xu et al., ICCV 2019): ``<stream>/<session>.npy`` and
  ``target/<session>.npy``, memory-mapped the same way; a 1-D integer target is one-hot encoded.

All three return ``list[Video]`` with the streams in the configured order (RGB first, then flow) and
float32 ``(T, C)`` targets, and implement the ``Source`` protocol of ``oad.data.sources``. Feature sizes
are read from the files, never from a config.

Dataset facts (class names, ignore index, metric, fps, session lists) are merged, later wins, from:
the packaged files ``oad/data/info/<name>.json`` (THUMOS'14, TVSeries, HDD; the one copy of those
facts in the project), the data_info file in ``root`` (either schema: LSTR's ``class_names`` or
OadTR/TRN's ``class_index``; dataset keys matched case-insensitively), then the constructor arguments.
``ignore_index=-100`` means "no ignore class" (LSTR's convention); ``None`` means "not given here".

Checks (``check()``, run by the first ``load``, on every split that has a session list, so a broken
test video stops the run at start-up, not after training): a missing file or session entry, a file that
is not an array, a feature length that differs from the target length by more than
``length_tolerance`` chunks (within it, both are truncated to the shorter and the count is logged),
NaN or Inf values (counted in blocks, so memory-mapped sets are scanned without loading them), a
feature size that differs from the other videos' (the most common size is the expected one), a target
with the wrong number of classes, an empty video. Every problem is collected and reported at once in a
``DataError`` naming the file; with ``skip_bad_videos=True`` the broken videos are left out instead,
each with a logged warning saying why.

``make_source`` picks a reader by layout name; it is what the ``configs/data/*.yaml`` files instantiate.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oad.data.base import Video

log = logging.getLogger(__name__)

INFO_DIR = Path(__file__).with_name("info")
# Dataset keys (lower case, as in the data_info files) -> packaged facts in oad/data/info/.
PACKAGED_INFO = {"thumos": "thumos14", "thumos14": "thumos14", "tvseries": "tvseries", "hdd": "hdd"}
MAX_REPORTED = 20  # problem lines in one DataError message
_SCAN_ELEMENTS = 1 << 24  # values per block of the NaN/Inf scan (64 MiB of float32)
NO_IGNORE = -100  # LSTR's "no ignore class"


class DataError(ValueError):
    """A data file is missing, unreadable or inconsistent. ``problems``: every problem found, as text."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


@dataclass
class Problem:
    """One thing wrong with one file."""

    file: str
    message: str
    split: str | None = None
    session: str | None = None

    def __str__(self) -> str:
        where = ", ".join(x for x in (self.split and f"split {self.split!r}",
                                      self.session and f"session {self.session!r}") if x)
        return f"{self.file}: {self.message}" + (f" [{where}]" if where else "")


# -- dataset facts -----------------------------------------------------------------------------------
def _normalize_info(section: Mapping[str, Any]) -> dict[str, Any]:
    """A data_info section (LSTR or OadTR/TRN schema) -> {class_names, ignore_index, metric, fps,
    sessions: {split: [...]}, streams}; absent facts are absent keys."""
    out: dict[str, Any] = {}
    names = section.get("class_names", section.get("class_index"))
    if names is not None:
        out["class_names"] = [str(n) for n in names]
    if section.get("ignore_index") is not None:
        out["ignore_index"] = int(section["ignore_index"])
    metric = section.get("metrics", section.get("metric"))
    if metric is not None:
        out["metric"] = metric[0] if isinstance(metric, (list, tuple)) and len(metric) == 1 else metric
    if section.get("fps") is not None:
        out["fps"] = float(section["fps"])
    sessions = {k[: -len("_session_set")]: [str(s) for s in v]
                for k, v in section.items() if k.endswith("_session_set")}
    if sessions:
        out["sessions"] = sessions
    if isinstance(section.get("streams"), Mapping):
        out["streams"] = {str(k): str(v) for k, v in section["streams"].items()}
    return out


def packaged_info(dataset: str | None) -> dict[str, Any] | None:
    """The packaged facts (``oad/data/info/<name>.json``) of a known dataset, normalized, or None."""
    if dataset is None or str(dataset).lower() not in PACKAGED_INFO:
        return None
    with open(INFO_DIR / f"{PACKAGED_INFO[str(dataset).lower()]}.json") as f:
        return _normalize_info(json.load(f))


def read_info_file(path: Path, dataset: str | None) -> dict[str, Any]:
    """The section ``dataset`` (case-insensitive) of a data_info file, normalized. A file holding one
    dataset's facts directly (a ``class_names``/``class_index`` key at the top) is read as is."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot be read as JSON: {e}") from e
    if not isinstance(raw, Mapping):
        raise DataError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if "class_names" in raw or "class_index" in raw:
        return _normalize_info(raw)
    keys = {str(k).lower(): k for k in raw}
    if dataset is None or str(dataset).lower() not in keys:
        raise DataError(f"{path}: no section for dataset {dataset!r}; it has {sorted(map(str, raw))} "
                        f"(set the dataset name, e.g. data.source.dataset=...)")
    return _normalize_info(raw[keys[str(dataset).lower()]])


def _select_streams(streams: Any, default: Mapping[str, str], allow_new: bool = False) -> dict[str, str]:
    """``streams`` as a name -> location mapping: a mapping is taken as is; a list (or one name) picks
    names out of ``default`` in the order given (ablations: ``['rgb']``); None gives ``default``."""
    if streams is None:
        picked = dict(default)
    elif isinstance(streams, Mapping):
        picked = {str(k): str(v) for k, v in streams.items()}
    else:
        names = [streams] if isinstance(streams, str) else [str(s) for s in streams]
        unknown = [n for n in names if n not in default]
        if unknown and not allow_new:
            raise DataError(f"unknown stream(s) {unknown}: known streams are {list(default)} "
                            f"(give a mapping name -> folder to use other folders)")
        picked = {n: default.get(n, n) for n in names}
    if not picked:
        raise DataError("no feature stream selected")
    return picked


# Stream folders (LSTR, TRN layouts) or pickle keys (OadTR layout) that the public releases ship, per
# layout and dataset section: the names an experiment file may give (tests/test_configs.py checks them).
RELEASED_STREAMS: dict[str, dict[str, set[str]]] = {
    "lstr": {
        "THUMOS": {"rgb_kinetics_resnet50", "flow_kinetics_bninception", "rgb_anet_resnet50", "flow_anet_resnet50"},
        "TVSeries": {"rgb_kinetics_resnet50", "flow_kinetics_bninception", "rgb_anet_resnet50", "flow_anet_resnet50"},
    },
    "oadtr": {"THUMOS": {"rgb", "flow"}, "TVSeries": {"rgb", "flow"}, "HDD": {"camera", "sensor"}},
    "trn": {"THUMOS": {"resnet200-fc", "bn_inception"}, "TVSeries": {"resnet200-fc", "bn_inception"},
            "HDD": {"inceptionresnetv2", "sensor"}},
}


# -- the checked reading shared by all layouts -------------------------------------------------------
@dataclass
class _Item:
    """One array of one video as read from disk: the array, or why there is none."""

    file: str
    array: np.ndarray | None = None
    error: str | None = None


@dataclass
class _Raw:
    session: str
    streams: list[_Item]
    target: _Item


@dataclass
class _Candidate:
    split: str
    session: str
    stream_files: list[str]
    target_file: str
    streams: list[np.ndarray] = field(default_factory=list)
    target: np.ndarray | None = None
    truncated: int = 0  # chunks cut to make lengths agree
    problems: list[Problem] = field(default_factory=list)

    def problem(self, file: str, message: str) -> None:
        self.problems.append(Problem(file, message, self.split, self.session))


def count_nonfinite(a: np.ndarray) -> tuple[int, int]:
    """(NaN count, Inf count) of an array, read in blocks (a memmap is never loaded whole)."""
    if not np.issubdtype(a.dtype, np.inexact) or a.size == 0:
        return 0, 0
    rows = max(1, _SCAN_ELEMENTS // max(1, int(np.prod(a.shape[1:]))))
    nan = inf = 0
    for i in range(0, a.shape[0], rows):
        block = np.asarray(a[i : i + rows])
        if np.isfinite(block.sum()):  # fast path; a finite sum means no NaN/Inf in the block
            continue
        nan += int(np.isnan(block).sum())
        inf += int(np.isinf(block).sum())
    return nan, inf


class _Reader:
    """Dataset facts, split lists and the checks; subclasses only say how to read a split's arrays."""

    layout = ""
    default_data_info = "data_info.json"

    def __init__(
        self,
        root: str | Path,
        dataset: str | None = "THUMOS",
        data_info: str | Path | None = None,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = None,
        metric: str | None = None,
        fps: float | None = None,
        split_sessions: Mapping[str, Sequence[str]] | None = None,
        length_tolerance: int = 1,
        skip_bad_videos: bool = False,
        check_finite: bool = True,
    ):
        if root is None or str(root) in ("", "???"):
            raise DataError("no data root given (data.root=<folder with the features>)")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"{self.root}: data root does not exist or is not a folder")
        if int(length_tolerance) < 0:
            raise DataError(f"length_tolerance must be >= 0, got {length_tolerance}")
        self.dataset = dataset
        self.length_tolerance = int(length_tolerance)
        self.skip_bad_videos = bool(skip_bad_videos)
        self.check_finite = bool(check_finite)

        facts: dict[str, Any] = packaged_info(dataset) or {}
        info_path = Path(data_info if data_info is not None else self.default_data_info).expanduser()
        if not info_path.is_absolute():
            info_path = self.root / info_path
        self.info_file: Path | None = None
        if info_path.is_file():
            facts.update(read_info_file(info_path, dataset))
            self.info_file = info_path
        elif data_info is not None and Path(data_info).is_absolute():
            raise DataError(f"{info_path}: data_info file does not exist")
        elif facts:
            log.info("no %s in %s: using the packaged facts of %s", info_path.name, self.root, dataset)
        self._facts = facts
        where = f"{info_path} (or the packaged facts of a known dataset, or the constructor arguments)"

        names = list(class_names) if class_names is not None else facts.get("class_names")
        if not names:
            raise DataError(f"no class names for dataset {dataset!r}: none in {where}")
        self.class_names = [str(n) for n in names]
        ii = ignore_index if ignore_index is not None else facts.get("ignore_index", NO_IGNORE)
        self.ignore_index = None if ii is None or int(ii) < 0 else int(ii)
        if self.ignore_index is not None and self.ignore_index >= len(self.class_names):
            raise DataError(f"ignore_index {self.ignore_index} is out of range for {len(self.class_names)} classes")
        m = str(metric if metric is not None else facts.get("metric", "AP"))
        aliases = {"ap": "AP", "map": "AP", "cap": "cAP", "mcap": "cAP"}
        if m.lower() not in aliases:
            raise DataError(f"unknown metric {m!r}: use 'AP' (mAP) or 'cAP' (mcAP)")
        self.metric = aliases[m.lower()]
        self.fps = float(fps if fps is not None else facts.get("fps", 4.0))
        sessions = split_sessions if split_sessions is not None else facts.get("sessions")
        if not sessions:
            raise DataError(f"no session lists (train_session_set, test_session_set) in {where}; "
                            f"or pass split_sessions")
        self.split_sessions = {str(k): [str(s) for s in v] for k, v in sessions.items()}
        self._videos: dict[str, list[Video]] = {}

    # -- Source protocol -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load(self, split: str) -> list[Video]:
        """The checked videos of ``split``. The first call checks every split (see ``check``)."""
        if split not in self.split_sessions:
            raise DataError(f"{self.describe()}: no session list for split {split!r}; splits: "
                            f"{sorted(self.split_sessions)} (add one with split_sessions)")
        if split not in self._videos:
            self.check(None if not self._videos else [split])
        return self._videos[split]

    def forget(self, split: str) -> None:
        """Drop a checked split from memory (the next ``load`` reads and checks it again)."""
        self._videos.pop(split, None)

    def describe(self) -> str:
        return f"{self.dataset or 'data'} ({self.layout} layout) at {self.root}"

    # -- checks ----------------------------------------------------------------------------------------
    def check(self, splits: Sequence[str] | None = None) -> None:
        """Read and check every video of ``splits`` (default: all splits with a session list).

        Raises ``DataError`` listing every problem found (unless ``skip_bad_videos``, which drops the
        broken videos with a warning each). Checked splits are kept for ``load``.
        """
        splits = [s for s in (splits or list(self.split_sessions)) if s not in self._videos]
        cands: list[_Candidate] = []
        problems: list[Problem] = []
        for split in splits:
            for raw_or_problem in self._read_split(split, self.split_sessions[split]):
                if isinstance(raw_or_problem, Problem):
                    problems.append(raw_or_problem)
                else:
                    cands.append(self._check_video(split, raw_or_problem))
        self._check_sizes(cands)
        if self.check_finite:
            for c in cands:
                if not c.problems:
                    self._check_values(c)

        bad = [c for c in cands if c.problems]
        if problems or (bad and not self.skip_bad_videos):
            problems += [p for c in bad for p in c.problems]
            self._raise(problems)
        for c in bad:
            log.warning("skipping video %r of split %r: %s", c.session, c.split, "; ".join(map(str, c.problems)))
        for split in splits:
            good = [c for c in cands if c.split == split and not c.problems]
            if not good:
                raise DataError(f"{self.describe()}: split {split!r} has no usable videos"
                                + (f" ({sum(c.split == split for c in bad)} skipped as broken)" if bad else ""))
            cut = [c for c in good if c.truncated]
            if cut:
                log.info("split %r: %d video(s) had feature and target lengths differing by at most %d "
                         "chunk(s) and were truncated to the shorter: %s", split, len(cut),
                         self.length_tolerance, ", ".join(c.session for c in cut[:10]) + (" ..." if len(cut) > 10 else ""))
            self._videos[split] = [self._video(c) for c in good]
            log.info("%s: split %r, %d videos, %d chunks, stream sizes %s", self.describe(), split, len(good),
                     sum(c.target.shape[0] for c in good), [s.shape[1] for s in good[0].streams])

    def _raise(self, problems: list[Problem]) -> None:
        lines = [f"  - {p}" for p in problems[:MAX_REPORTED]]
        if len(problems) > MAX_REPORTED:
            lines.append(f"  - ... and {len(problems) - MAX_REPORTED} more")
        n = len(problems)
        raise DataError(
            f"{n} problem{'s' * (n != 1)} in {self.describe()}:\n" + "\n".join(lines)
            + "\nFix or remove these files, or set data.source.skip_bad_videos=true to leave the broken "
            "videos out.",
            [str(p) for p in problems],
        )

    def _check_video(self, split: str, raw: _Raw) -> _Candidate:
        c = _Candidate(split, raw.session, [i.file for i in raw.streams], raw.target.file)
        for item in [*raw.streams, raw.target]:
            if item.error is not None:
                c.problem(item.file, item.error)
        if c.problems:
            return c
        for item in raw.streams:
            a = item.array
            if a.ndim > 2:
                c.problem(item.file, f"features have shape {a.shape}, expected (T, d): per-chunk feature maps "
                                     "(T, C, H, W), like TRN's HDD camera features, are pooled to vectors first: "
                                     "tools/prepare_data.py pool src=<their folder> dst=<new folder>, then point "
                                     "the stream at the new folder")
            elif a.ndim != 2:
                c.problem(item.file, f"features have shape {a.shape}, expected (T, d)")
            elif not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                c.problem(item.file, f"features have dtype {a.dtype}, expected a float array")
        t, C = raw.target.array, self.num_classes
        if t.ndim == 1 and np.issubdtype(t.dtype, np.integer):
            bad = int(((t < 0) | (t >= C)).sum())
            if bad:
                c.problem(raw.target.file, f"{bad} label(s) outside 0..{C - 1}")
            else:
                t = np.eye(C, dtype=np.float32)[t]
        elif t.ndim != 2:
            c.problem(raw.target.file, f"targets have shape {t.shape}, expected (T, {C})")
        elif t.shape[1] != C:
            c.problem(raw.target.file, f"targets have {t.shape[1]} classes, expected {C} "
                                       f"(the class names of {self.dataset or 'the dataset'})")
        if c.problems:
            return c

        T_target = t.shape[0]
        lengths = [T_target]
        for item in raw.streams:
            T = item.array.shape[0]
            if abs(T - T_target) > self.length_tolerance:
                c.problem(item.file, f"feature length {T} differs from target length {T_target} "
                                     f"({raw.target.file}) by {T - T_target:+d} chunks "
                                     f"(length_tolerance={self.length_tolerance})")
            lengths.append(T)
        if c.problems:
            return c
        T = min(lengths)
        if T == 0:
            c.problem(raw.target.file, "empty video (0 chunks)")
            return c
        c.truncated = max(lengths) - T
        c.streams = [item.array[:T] for item in raw.streams]
        c.target = np.asarray(t[:T], dtype=np.float32)
        return c

    def _check_sizes(self, cands: list[_Candidate]) -> None:
        """Every video's stream k has the same size: the most common one (or that of loaded splits)."""
        ok = [c for c in cands if not c.problems]
        if not ok:
            return
        loaded = next(iter(self._videos.values()), None)
        for k in range(len(ok[0].streams)):
            sizes = Counter(c.streams[k].shape[1] for c in ok)
            expected = loaded[0].streams[k].shape[1] if loaded else sizes.most_common(1)[0][0]
            for c in ok:
                got = c.streams[k].shape[1]
                if got != expected:
                    c.problem(c.stream_files[k], f"feature size {got}, expected {expected} "
                                                 f"(the size in {sizes[expected]} of {len(ok)} videos)")

    def _check_values(self, c: _Candidate) -> None:
        for file, a in [*zip(c.stream_files, c.streams), (c.target_file, c.target)]:
            nan, inf = count_nonfinite(a)
            if nan or inf:
                what = " and ".join(f"{n} {w}" for n, w in ((nan, "NaN"), (inf, "Inf")) if n)
                c.problem(file, f"non-finite values: {what} among {a.size}")

    def _video(self, c: _Candidate) -> Video:
        return Video(name=c.session, streams=tuple(c.streams), targets=c.target,
                     meta={"fps": self.fps, "layout": self.layout, "files": [*c.stream_files, c.target_file]})

    # -- layout-specific -------------------------------------------------------------------------------
    def _read_split(self, split: str, sessions: list[str]) -> Iterator[_Raw | Problem]:
        raise NotImplementedError


def _load_npy(path: Path, what: str, mmap: bool) -> _Item:
    if not path.is_file():
        return _Item(str(path), error=f"missing ({what})")
    try:
        return _Item(str(path), np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False))
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        return _Item(str(path), error=f"cannot be read as a .npy array ({what}): {e}")


class _NpyFolders(_Reader):
    """``<root>/<stream folder>/<session>.npy`` features and ``<root>/<target_dir>/<session>.npy``."""

    default_streams: dict[str, str] = {}
    default_target_dir = ""

    def __init__(self, root, streams=None, target_dir: str | None = None, mmap: bool = True, **kwargs):
        super().__init__(root, **kwargs)
        base = self._facts.get("streams") or self.default_streams
        self.streams = _select_streams(streams, base)
        self.target_dir = target_dir or self.default_target_dir
        self.mmap = bool(mmap)
        missing = [(n, f) for n, f in [*self.streams.items(), ("target", self.target_dir)]
                   if not (self.root / f).is_dir()]
        if missing:
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise DataError(
                f"{self.describe()}: no folder " + ", ".join(f"{self.root / f} (stream {n!r})" for n, f in missing)
                + f"; folders in the root: {present}. Choose the folders with data.source.{self.layout}.streams="
                "{rgb: <folder>, flow: <folder>} (and target_dir), or another data.layout."
            )

    def _read_split(self, split: str, sessions: list[str]) -> Iterator[_Raw]:
        for s in sessions:
            streams = [_load_npy(self.root / f / f"{s}.npy", f"stream {n!r}", self.mmap) for n, f in self.streams.items()]
            yield _Raw(s, streams, _load_npy(self.root / self.target_dir / f"{s}.npy", "targets", mmap=False))


class LSTRSource(_NpyFolders):
    """The LSTR / TeSTra layout: ``<root>/<stream>/<session>.npy``, ``<root>/target_perframe/<session>.npy``
    and ``<root>/data_info.json`` (per dataset: class_names, ignore_index, metrics, fps, session sets).

    Args:
        root: the dataset folder.
        dataset: section of data_info.json (``THUMOS``, ``TVSeries``; case-insensitive).
        streams: stream name -> folder, or a list of names to pick from the default (ablations). Default:
            a ``streams`` mapping in data_info.json (written by ``oad.data.prepare``), else the Kinetics
            features of the release, ``{'rgb': 'rgb_kinetics_resnet50', 'flow': 'flow_kinetics_bninception'}``;
            the ActivityNet ones are ``rgb_anet_resnet50`` / ``flow_anet_resnet50``.
        target_dir: folder of the per-chunk targets.
        data_info: file name in ``root`` (or an absolute path); without it, the packaged facts are used.
        mmap: memory-map the feature files (default) instead of loading them.
        class_names, ignore_index, metric, fps, split_sessions: override the data_info facts
            (``ignore_index=-100``: no ignore class).
        length_tolerance: feature/target length difference (chunks) truncated to the shorter; more fails.
        skip_bad_videos: leave broken videos out with a warning instead of failing.
        check_finite: scan every array for NaN/Inf at start-up.
    """

    layout = "lstr"
    default_streams = {"rgb": "rgb_kinetics_resnet50", "flow": "flow_kinetics_bninception"}
    default_target_dir = "target_perframe"


class TRNSource(_NpyFolders):
    """The TRN layout: ``<root>/resnet200-fc/<s>.npy``, ``<root>/bn_inception/<s>.npy``,
    ``<root>/target/<s>.npy`` and a ``data_info.json`` (TRN schema: ``class_index`` + session sets).

    Same arguments as ``LSTRSource``; the default streams are ``{'rgb': 'resnet200-fc', 'flow':
    'bn_inception'}`` and the targets are in ``target/`` (``(T, C)`` one-hot, or ``(T,)`` integer labels,
    one-hot encoded on reading).
    """

    layout = "trn"
    default_streams = {"rgb": "resnet200-fc", "flow": "bn_inception"}
    default_target_dir = "target"


class OadTRSource(_Reader):
    """The OadTR release: feature and annotation pickles per split and ``data_info_new.json``.

    Args:
        root: the folder holding the files.
        dataset: section of data_info_new.json (``THUMOS``, ``TVSERIES``, ``HDD``; case-insensitive).
        feature_file, anno_file: file names with ``{split}``, formatted with ``split_names[split]``.
        split_names: split -> name in the file names. THUMOS trains on the validation videos:
            ``{'train': 'val', 'test': 'test'}``.
        streams: stream name -> key in the feature dict, or a list of keys (default ``('rgb', 'flow')``).
        anno_key: key of the ``(T, C)`` targets in the annotation dict.
        Other arguments: as ``LSTRSource``. data_info_new.json has no ignore index, metric or fps: they
        come from the packaged facts of known datasets or the constructor.

    The pickles are trusted input (unpickling runs code): load only files from a source you trust.
    """

    layout = "oadtr"
    default_data_info = "data_info_new.json"

    def __init__(
        self,
        root,
        dataset: str | None = "THUMOS",
        feature_file: str = "thumos_all_feature_{split}_tsn_v2.pickle",
        anno_file: str = "thumos_{split}_anno.pickle",
        data_info: str | None = "data_info_new.json",
        streams: Any = ("rgb", "flow"),
        split_names: Mapping[str, str] | None = None,
        anno_key: str = "anno",
        **kwargs,
    ):
        super().__init__(root, dataset=dataset, data_info=data_info, **kwargs)
        if not feature_file or not anno_file:
            raise DataError(f"{self.describe()}: feature_file and anno_file must name the OadTR pickles")
        self.feature_file, self.anno_file, self.anno_key = feature_file, anno_file, anno_key
        self.split_names = dict(split_names) if split_names is not None else {"train": "val", "test": "test"}
        self.streams = _select_streams(streams, {"rgb": "rgb", "flow": "flow"}, allow_new=True)

    def _file(self, template: str, split: str) -> Path:
        return self.root / template.format(split=self.split_names.get(split, split))

    @staticmethod
    def _load_pickle(path: Path, split: str) -> tuple[Mapping | None, Problem | None]:
        if not path.is_file():
            return None, Problem(str(path), "missing (OadTR pickle)", split)
        try:
            with open(path, "rb") as f:
                obj = pickle.load(f)
        except Exception as e:  # noqa: BLE001
            return None, Problem(str(path), f"cannot be unpickled: {e}", split)
        if not isinstance(obj, Mapping):
            return None, Problem(str(path), f"expected a dict session -> arrays, got {type(obj).__name__}", split)
        return obj, None

    def _read_split(self, split: str, sessions: list[str]) -> Iterator[_Raw | Problem]:
        feat_path, anno_path = self._file(self.feature_file, split), self._file(self.anno_file, split)
        feats, p1 = self._load_pickle(feat_path, split)
        annos, p2 = self._load_pickle(anno_path, split)
        if p1 or p2:
            yield from (p for p in (p1, p2) if p)
            return
        for s in sessions:
            streams = [self._entry(feats, feat_path, s, key, f"stream {name!r}") for name, key in self.streams.items()]
            yield _Raw(s, streams, self._entry(annos, anno_path, s, self.anno_key, "targets"))

    @staticmethod
    def _entry(table: Mapping, path: Path, session: str, key: str, what: str) -> _Item:
        label = f"{path}[{session!r}][{key!r}]"
        entry = table.get(session)
        if entry is None:
            return _Item(label, error=f"missing: session {session!r} is not in {path.name} ({what})")
        if not isinstance(entry, Mapping) or key not in entry:
            keys = sorted(map(str, entry)) if isinstance(entry, Mapping) else type(entry).__name__
            return _Item(label, error=f"missing: no {key!r} entry ({what}); the entry has {keys}")
        try:
            return _Item(label, np.asarray(entry[key]))
        except Exception as e:  # noqa: BLE001
            return _Item(label, error=f"not an array ({what}): {e}")


LAYOUTS: dict[str, type[_Reader]] = {"oadtr": OadTRSource, "lstr": LSTRSource, "trn": TRNSource}


def make_source(
    layout: str,
    root: str | Path,
    dataset: str | None = None,
    streams: Any = None,
    oadtr: Mapping[str, Any] | None = None,
    lstr: Mapping[str, Any] | None = None,
    trn: Mapping[str, Any] | None = None,
    **common: Any,
) -> _Reader:
    """The reader of ``layout`` (``oadtr`` | ``lstr`` | ``trn``) over ``root``.

    Args:
        layout: which public layout the files in ``root`` follow.
        root: the dataset folder.
        dataset: dataset name in the data_info file and of the packaged facts.
        streams: None (the layout's streams), a list of stream names to keep (``['rgb']``), or a mapping
            name -> folder/key that replaces the layout's.
        oadtr, lstr, trn: per-layout arguments (file and folder names); only the chosen layout's are used
            and they win over ``dataset``.
        common: arguments of every reader (``length_tolerance``, ``skip_bad_videos``, ``class_names``, ...).
    """
    key = str(layout).lower()
    if key not in LAYOUTS:
        raise DataError(f"unknown data layout {layout!r}: use one of {sorted(LAYOUTS)} (data.layout=...)")
    kwargs: dict[str, Any] = {**common, "dataset": dataset}
    kwargs.update(dict({"oadtr": oadtr, "lstr": lstr, "trn": trn}[key] or {}))
    base = kwargs.get("streams")
    if streams is not None:
        if isinstance(streams, Mapping) or base is None:
            kwargs["streams"] = streams
        elif isinstance(base, Mapping):
            kwargs["streams"] = _select_streams(streams, base)
        else:  # the layout's streams are a list of names (OadTR keys): keep a subset of it
            base_names = [base] if isinstance(base, str) else list(base)
            kwargs["streams"] = list(_select_streams(streams, {n: n for n in base_names}))
    if kwargs.get("streams") is None:
        kwargs.pop("streams", None)
    return LAYOUTS[key](root, **kwargs)


__all__ = ["DataError", "OadTRSource", "LSTRSource", "TRNSource", "make_source", "packaged_info",
           "read_info_file", "count_nonfinite", "LAYOUTS"]
