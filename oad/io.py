"""Every file the project writes goes through here: atomic writes (a temporary file beside the
target, fsync, then ``os.replace``), JSON, ``.npy`` arrays and the predictions exchange format.

A crash or a kill leaves either the old file or the new one, never a torn one; the temporary file
(``.<name>.<pid>.tmp``) is removed when the write fails. Dependency-free (no Lightning import), so the
light tools (streaming, feature extraction) use it too.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

TMP_SUFFIX = ".tmp"


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


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON (numpy scalars and arrays converted), atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


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
