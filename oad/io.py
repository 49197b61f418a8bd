"""Every file the project writes goes through here: atomic writes (a temporary file beside the
target, fsync, then ``os.replace``), JSON, ``.npy`` arrays, the predictions exchange format, and sets of
files published together (:func:`output_set`); and the readers of those formats, with errors that name
the file.

A crash or a kill leaves either the old file or the new one, never a torn one; the temporary file
(``.<name>.<pid>.tmp``) is removed when the write fails. Dependency-free (no Lightning import), so the
light tools (streaming, feature extraction) use it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

TMP_SUFFIX = ".tmp"
NPY_MAGIC = b"\x93NUMPY"


def tmp_path_for(path: Path) -> Path:
    """The temporary name a write of ``path`` by this process uses."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) for writers that take a file name (TorchScript,
    ONNX); renamed over ``path`` when the block succeeds, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; on success it is flushed, fsynced and renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def scores_csv_bytes(comment: str, class_names: list[str], rows: Iterable[tuple[int, float, float, Any]]) -> bytes:
    """A stream's ``scores.csv``: a ``# comment`` line, the header ``chunk, start_s, end_s, <class names>``,
    then one row per scored chunk ``(index, start_s, end_s, (C,) probabilities)``."""
    import csv
    import io

    buf = io.StringIO()
    buf.write(f"# {comment}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["chunk", "start_s", "end_s", *class_names])
    w.writerows([i, f"{a:.6g}", f"{b:.6g}", *(f"{p:.6f}" for p in r)] for i, a, b, r in rows)
    return buf.getvalue().encode()


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any, strict: bool = False) -> None:
    """``obj`` as indented JSON (numpy scalars and arrays converted), atomically.

    Args:
        strict: refuse NaN and infinities (Python's ``json`` writes them as ``NaN``/``Infinity`` tokens,
            which strict JSON readers reject) instead of writing them.

    Raises:
        ValueError: ``strict`` and a non-finite number in ``obj`` (nothing is written).
    """
    try:
        text = json.dumps(obj, indent=2, default=_json_default, allow_nan=not strict)
    except ValueError as e:
        raise ValueError(f"{path}: not written: a NaN or infinite number cannot be strict JSON ({e})") from e
    atomic_write_bytes(path, (text + "\n").encode())


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON in ``path``; ``what`` says what the file is, for the error.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON (truncated, edited by hand), naming the file, the place and ``what``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file ({what})")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); it is {what}") from e


def load_npy(path: str | os.PathLike, what: str, mmap: bool = True) -> np.ndarray:
    """A ``.npy`` array (memory-mapped unless ``mmap`` is False), never unpickled; ``what`` names it in
    errors (``'features'``: ``features <path>: ...``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a ``.npy`` file (e.g. text), truncated, or holding Python objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head != NPY_MAGIC:
        raise ValueError(f"{what} {path}: not a .npy file (it starts with {head!r}, not the .npy header "
                         "written by numpy.save)")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{what} {path}: cannot be read as a .npy array ({type(e).__name__}: {e})") from e


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` of ``array`` to ``path``, atomically."""
    with atomic_open(path) as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def write_predictions(path: str | os.PathLike, outputs: dict[str, dict[str, np.ndarray]]) -> None:
    """Predictions in the LSTR exchange format, plus the decoder's future scores."""
    payload = {
        "perframe_pred_scores": {k: v["scores"] for k, v in outputs.items()},
        "perframe_gt_targets": {k: v["targets"] for k, v in outputs.items()},
        "perframe_future_scores": {k: v["future_scores"] for k, v in outputs.items()},
    }
    atomic_write_bytes(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def load_predictions(path: str | os.PathLike) -> dict[str, Any]:
    """Read a predictions pickle in the LSTR exchange format, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions {path}: no such file")
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"predictions {path}: not a readable pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or "perframe_pred_scores" not in obj or "perframe_gt_targets" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"predictions {path}: expected a dict with 'perframe_pred_scores' and 'perframe_gt_targets' "
            f"(the LSTR format), got {keys}"
        )
    for key in ("perframe_pred_scores", "perframe_gt_targets"):
        if not isinstance(obj[key], dict):
            raise ValueError(f"predictions {path}: {key!r} must map session -> (T, C) array")
        obj[key] = {str(k): np.asarray(v) for k, v in obj[key].items()}
    return obj


# -- sets of files published together ----------------------------------------------------------------------
SETS_DIR = ".outputs"  # <folder>/.outputs/<run id>/: the sets; <folder>/.outputs/current -> the published one
CURRENT = "current"
SET_MANIFEST = "manifest.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _link(folder: Path, name: str, target: str, run_id: str) -> None:
    """``folder/name`` becomes the symbolic link ``target`` (atomically replacing a file or link there)."""
    path = folder / name
    if path.is_symlink() and os.readlink(path) == target:
        return
    tmp = folder / f".{name}.{run_id}{TMP_SUFFIX}"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot replace it by the link to the new set ({e.strerror})", str(path)) from e


def _ours(path: Path) -> bool:
    """A top-level link into the published set (``.outputs/current/<name>``)."""
    return path.is_symlink() and os.readlink(path).startswith(f"{SETS_DIR}/{CURRENT}/")


@contextmanager
def output_set(folder: str | os.PathLike, run_id: str, about: dict[str, Any], owns: Iterable[str] = ()) -> Iterator[Path]:
    """Write a set of files that ``folder`` shows together or not at all; yields the folder to write them
    into (``<folder>/.outputs/<run_id>/``).

    When the block succeeds, ``manifest.json`` is added to the set (``run_id``, ``about``, and every file
    with its size and SHA-256) and the set is published: ``<folder>/<name>`` is a relative symbolic link
    to ``.outputs/current/<name>`` for every file of the set, and ``.outputs/current`` (a link to the
    set's folder) is swapped to the new set by one ``os.replace``. Every path ``<folder>/<name>`` thus
    resolves to a file of one set, the old or the new, never a mix of the two, wherever the writer is
    stopped; a reader that must read several files while a new set may be published resolves
    ``.outputs/current`` once and reads from that folder (:func:`read_output_set`), or compares the
    ``run_id`` that each file carries. After the swap the previous set, the links of names the new set
    lacks and the folders of runs that died before publishing are removed.

    When the block fails (an exception, a kill) nothing is published: the folder shows the previous set
    unchanged; the new set's folder is removed (after a kill: by the next publish into ``folder``).

    Args:
        folder: where the set is shown (created; other files in it are left alone).
        run_id: the set's name (unique per run).
        about: what the set is, for the manifest (e.g. its input and checkpoint).
        owns: names that belong to any set written here even when this one lacks them (e.g. a plot drawn
            by an earlier run only, or a plain file of an earlier version): removed before the swap.

    A file of the set that is in ``folder`` already as the same file (a video hard-linked beside a report,
    streamed from that folder) is left there and dropped from the set. Writers into one folder publish
    one after the other (a lock on ``.outputs/.lock``; POSIX).
    """
    import fcntl

    folder = Path(folder)
    sets = folder / SETS_DIR
    sets.mkdir(parents=True, exist_ok=True)
    staged = sets / run_id
    with open(sets / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        staged.mkdir()
        try:
            yield staged
            names = _seal(folder, staged, run_id, about)
            for name in names:  # links through `current`: before the swap they show the old set (or nothing)
                _link(folder, name, f"{SETS_DIR}/{CURRENT}/{name}", run_id)
            for name in sorted(set(owns) - set(names)):
                stale = folder / name
                if stale.is_symlink() or stale.is_file():
                    stale.unlink()
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        _link(sets, CURRENT, run_id, run_id)  # the swap
        _fsync_dir(sets)
        _remove_old(folder, sets, run_id)


def _seal(folder: Path, staged: Path, run_id: str, about: dict[str, Any]) -> list[str]:
    """Drop the files that ``folder`` holds already as themselves, write the manifest; the set's names."""
    for name in sorted(p.name for p in staged.iterdir()):
        shown = folder / name
        if shown.is_file() and not shown.is_symlink() and os.path.samefile(shown, staged / name):
            (staged / name).unlink()
    names = sorted(p.name for p in staged.iterdir())
    files = {n: {"bytes": (staged / n).stat().st_size, "sha256": _sha256(staged / n)} for n in names}
    write_json(staged / SET_MANIFEST, {"run_id": run_id, **about, "files": files}, strict=True)
    _fsync_dir(staged)
    return [*names, SET_MANIFEST]


def _remove_old(folder: Path, sets: Path, run_id: str) -> None:
    """After the swap: links to names the new set lacks, the old set, what runs that died left."""
    for p in folder.iterdir():  # and temporary links of a writer killed while making them
        if _ours(p) and (not p.exists() or p.name.endswith(TMP_SUFFIX)):
            p.unlink()
    for p in sets.iterdir():
        if p.name in (CURRENT, run_id, ".lock"):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def read_output_set(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the set published in ``folder``, after checking every file it lists against its
    size and SHA-256, read through ``.outputs/current`` resolved once.

    Raises:
        FileNotFoundError: no set published there.
        ValueError: a listed file is missing or differs from the manifest.
    """
    folder = Path(folder)
    current = folder / SETS_DIR / CURRENT
    if not current.is_symlink():
        raise FileNotFoundError(f"{folder}: no published set of outputs ({current} is missing)")
    set_dir = current.parent / os.readlink(current)
    manifest = read_json(set_dir / SET_MANIFEST, "the manifest of a set of outputs")
    for name, entry in manifest["files"].items():
        path = set_dir / name
        if not path.is_file() or path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise ValueError(f"{folder / name}: not the file the manifest of set {manifest['run_id']} lists")
    return manifest
