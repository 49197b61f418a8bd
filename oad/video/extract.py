"""A folder of videos -> a feature dataset in the LSTR/TeSTra layout.

Produces, for every video ``<name>.<ext>`` in the folder (not recursive)::

    <output>/rgb_<backbone>/<name>.npy        (T, D_rgb) float32, T = ceil(duration * rate) chunks
    <output>/flow_<backbone>/<name>.npy       (T, D_flow) float32, only with the motion stream
    <output>/manifest.json                    settings, per-video chunk counts, failures

The manifest records the chunk rate, the backbones and where their weights came from
(``backbone_weights: random`` and ``random_weights: true`` for random weights), each finished video
(``status: complete``, ``num_chunks``, ``duration``, ``fps``) and each failed one with its error.

Resumable: a video listed complete whose files are present with the recorded length is skipped; a
run with other settings into the same folder is refused. Files are written to a temporary name in
their folder and renamed, and the manifest is rewritten after each video, so an interrupted run leaves
no partial file. A video that cannot be read is logged, listed under ``failures`` and skipped; the others
go on. Labels are not produced here: they come from the dataset's annotations (``oad.data.sources``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oad.io import TMP_SUFFIX, read_json, save_npy, write_json
from oad.video import FeatureExtractor, VideoError
from oad.video.features import check_finite_features

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts",
)
MANIFEST = "manifest.json"
# Settings that must match for a run to resume into an existing output folder.
SETTINGS_KEYS = (
    "rate", "backbone", "backbone_weights", "flow", "flow_backbone", "flow_weights", "flow_pairs",
    "resize", "crop",
)


@dataclass
class ExtractionSummary:
    """What one run did.

    Attributes:
        output: the dataset folder.
        done: videos extracted in this run.
        skipped: videos already complete from an earlier run.
        failed: video name -> error message.
        manifest: the manifest as written.
    """

    output: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        total = len(self.done) + len(self.skipped) + len(self.failed)
        return (
            f"extracted {len(self.done) + len(self.skipped)}/{total} videos "
            f"({len(self.done)} new, {len(self.skipped)} skipped, {len(self.failed)} failed) -> {self.output}"
        )

    def failure_line(self) -> str:
        """The failures in one line: the first failed video's error (it names the file) and the count."""
        if not self.failed:
            return ""
        first = next(iter(self.failed.values()))
        more = len(self.failed) - 1
        return first + (f" (and {more} more failed video{'s' * (more != 1)}: listed above and in "
                        f"{self.output / MANIFEST})" if more else "")


def list_videos(folder: str | os.PathLike, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> dict[str, Path]:
    """Video name (file stem) -> file, for the videos directly in ``folder``, sorted by name.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: two files share a name (e.g. ``a.mp4`` and ``a.avi``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder {folder} does not exist")
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    videos: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in exts:
            if p.stem in videos:
                raise ValueError(f"videos {videos[p.stem].name} and {p.name} would both be named {p.stem!r}")
            videos[p.stem] = p
    return videos


def _settings(extractor: FeatureExtractor) -> dict[str, Any]:
    d = extractor.describe()
    return {
        "rate": d["rate"],
        "backbone": d["backbone"],
        "backbone_weights": d["weights"],
        "rgb_dim": d["rgb_dim"],
        "flow": d["flow"],
        "flow_backbone": d["flow_backbone"],
        "flow_weights": d["flow_weights"],
        "flow_dim": d["flow_dim"],
        "flow_pairs": d["flow_pairs"],
        "random_weights": d["random_weights"],
        "resize": d["resize"],
        "crop": d["crop"],
    }


def _remove_stale_tmp(folders: list[Path]) -> None:
    """Temporary files of an interrupted earlier run (``.<name>.<pid>.tmp``)."""
    for folder in folders:
        if folder.is_dir():
            for p in folder.glob(f".*{TMP_SUFFIX}"):
                log.info("removing %s left by an interrupted run", p)
                p.unlink(missing_ok=True)


def _is_complete(entry: dict | None, files: list[Path]) -> bool:
    if not entry or entry.get("status") != "complete":
        return False
    for f in files:
        try:
            if np.load(f, mmap_mode="r").shape[0] != entry.get("num_chunks"):
                return False
        except (OSError, ValueError):
            return False
    return True


def extract_folder(
    videos: str | os.PathLike,
    output: str | os.PathLike,
    extractor: FeatureExtractor,
    *,
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
    progress: bool = True,
) -> ExtractionSummary:
    """Extract the features of every video in ``videos`` into ``output`` (see the module docstring).

    Returns:
        What was done, skipped and failed; ``summary.ok`` is False if any video failed.

    Raises:
        ValueError: ``output`` holds features made with other settings.
    """
    from tqdm import tqdm

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    settings = _settings(extractor)
    stream_dirs = {"rgb": output / f"rgb_{settings['backbone']}"}
    if settings["flow"]:
        stream_dirs["flow"] = output / f"flow_{settings['flow_backbone']}"
    for d in stream_dirs.values():
        d.mkdir(exist_ok=True)
    _remove_stale_tmp([output, *stream_dirs.values()])

    manifest_path = output / MANIFEST
    manifest: dict[str, Any] = {
        **settings,
        "streams": [d.name for d in stream_dirs.values()],
        "videos": {},
        "failures": {},
    }
    if manifest_path.exists():
        old = read_json(manifest_path, "the manifest of an earlier extraction into this folder: repair or delete "
                        "it (its features are then extracted again), or use another output folder")
        if not isinstance(old, dict):
            raise ValueError(f"{manifest_path}: expected a JSON object (an extraction manifest), got "
                             f"{type(old).__name__}")
        differ = {k: (old.get(k), settings[k]) for k in SETTINGS_KEYS if old.get(k) != settings[k]}
        if differ:
            raise ValueError(
                f"{output} holds features made with other settings {differ} (earlier, now); "
                "use another output folder"
            )
        manifest["videos"] = old.get("videos", {})
        manifest["failures"] = old.get("failures", {})

    summary = ExtractionSummary(output=output, manifest=manifest)
    found = list_videos(videos, extensions)
    if settings["random_weights"]:
        log.warning("extracting with RANDOM backbone weights: the features are for testing only")
    bar = tqdm(found.items(), total=len(found), desc="extract", unit="video", disable=not progress)
    for name, path in bar:
        bar.set_postfix_str(name)
        files = {k: d / f"{name}.npy" for k, d in stream_dirs.items()}
        if _is_complete(manifest["videos"].get(name), list(files.values())):
            summary.skipped.append(name)
            continue
        try:
            out = extractor(path)
            check_finite_features(out, path)
        except VideoError as e:
            log.error("skipping %s: %s", path, e)
            summary.failed[name] = str(e)
            manifest["videos"].pop(name, None)
            manifest["failures"][name] = {"source": str(path), "error": str(e)}
            write_json(manifest_path, manifest)
            continue
        save_npy(files["rgb"], out["rgb"])
        if "flow" in files:
            save_npy(files["flow"], out["flow"])
        meta = out["meta"]
        manifest["failures"].pop(name, None)
        manifest["videos"][name] = {
            "status": "complete",
            "source": str(path),
            "num_chunks": int(out["rgb"].shape[0]),
            "duration": meta["duration"],
            "fps": meta["fps"],
            "num_frames": meta["num_frames"],
        }
        write_json(manifest_path, manifest)
        summary.done.append(name)
    bar.close()
    write_json(manifest_path, manifest)
    log.info(summary.line())
    return summary


def extract(cfg) -> ExtractionSummary:
    """The task behind ``tools/extract_features.py``: build the extractor from ``configs/extract.yaml``."""
    extractor = FeatureExtractor.from_config(cfg)
    return extract_folder(
        cfg.videos, cfg.output, extractor, extensions=tuple(cfg.extensions), progress=cfg.progress
    )
