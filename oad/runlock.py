"""One training run per run folder at a time, and a resumed run's config kept apart from the original's.

A run folder (``hydra.run.dir``, the task's ``output_dir``) holds one run's checkpoints, logs, metrics and
config record. Two runs writing into it at once would mix them (one run's ``last.ckpt`` beside the other's
``epoch002.ckpt``, one run's ``metrics.json`` path holding the other's figure), so training takes a lock on
the folder first, before the data or the model are built:

- The lock is ``<run dir>/.lock``, held with ``fcntl.flock`` on an open file for as long as the run lasts.
  The operating system drops it when the process ends, however it ends: a killed run never leaves the
  folder locked (the file stays, with the dead holder's details; the next run takes it over). The file
  holds the holder's pid, host, start time and command, so a refused run names who holds the folder.
- A second run meets :class:`RunFolderBusy` and writes nothing into the folder. From the command line
  (``tools/train.py``) it prints ``error: ...`` and exits with 2 before Hydra writes its config record or
  log file there (:class:`RunFolderCallback`, a Hydra callback of ``configs/hydra/default.yaml``); called
  in process (:func:`oad.tasks.train`) it raises.
- Under DDP only the launch's first process takes it (the others are started into the same folder by
  Lightning, torchrun or SLURM: :func:`is_launch_leader`). Within one process the lock is re-entrant
  (the Hydra callback and the task both take it).

Hydra writes the job's config record (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``) before
the task starts. A resume (``ckpt_path`` set) in a folder that already holds a record would overwrite the
original run's with its own, even when it then fails. So :class:`RunFolderCallback` sends the record of
such a run to ``.hydra/resume_<N>/`` (N = 1, 2, ...: each attempt's own, nothing overwritten); the
original run's ``.hydra/*.yaml`` stay as they were. The log file ``<task_name>.log`` is appended to.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not locked
    fcntl = None

__all__ = ["LOCK_FILE", "RunFolderBusy", "RunFolderCallback", "hold_run_folder", "is_launch_leader"]

LOCK_FILE = ".lock"

# Set in the processes a launcher starts: torchrun (RANK, LOCAL_RANK, GROUP_RANK), Lightning's own DDP
# launcher (LOCAL_RANK, NODE_RANK), SLURM (SLURM_PROCID), LSF (JSM_NAMESPACE_RANK).
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


class RunFolderBusy(RuntimeError):
    """The run folder is held by another run (the message names the folder and the holder)."""


def is_launch_leader() -> bool:
    """Whether this process is the first of its launch (every rank variable a launcher sets is 0 or unset):
    the one that takes the run folder's lock."""
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in _RANK_VARIABLES)


class _Held:
    """This process's hold on one folder's lock: the open file (the flock lives as long as it) and a count."""

    def __init__(self, fd: int):
        self.fd, self.count = fd, 0


_held: dict[Path, _Held] = {}


def _holder(fd: int) -> str:
    """The holder's details from the lock file, for the error."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 65536).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (it has not written its details yet)"
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
            f"{info.get('command')}")


def _acquire(folder: Path) -> None:
    held = _held.get(folder)
    if held is None:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunFolderBusy(
                f"run folder {folder} is in use by another run ({holder}); wait for it to end, or choose "
                f"another hydra.run.dir") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)  # a killed holder's details, if any
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        held = _held[folder] = _Held(fd)
    held.count += 1


def _release(folder: Path) -> None:
    held = _held[folder]
    held.count -= 1
    if held.count == 0:
        del _held[folder]
        os.ftruncate(held.fd, 0)  # free: no holder's details (the file stays: see the module docstring)
        os.close(held.fd)  # drops the flock


@contextmanager
def hold_run_folder(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``folder``'s lock (created with the folder if need be) for the ``with`` block; nothing in a
    process that is not its launch's leader (:func:`is_launch_leader`).

    Raises:
        RunFolderBusy: another process holds it.
    """
    if fcntl is None or not is_launch_leader():
        yield
        return
    path = Path(folder).resolve()
    _acquire(path)
    try:
        yield
    finally:
        _release(path)


def _resume_record_dir(folder: Path, output_subdir: str) -> str:
    """``<output_subdir>/resume_<N>`` with the first N not used in ``folder``."""
    n = 1
    while (folder / output_subdir / f"resume_{n}").exists():
        n += 1
    return f"{output_subdir}/resume_{n}"


class RunFolderCallback(Callback):
    """Hydra callback (``configs/hydra/default.yaml``): for the tasks named, takes the run folder's lock
    before Hydra writes anything there, and keeps a resumed run's config record out of the original's
    (the module docstring).

    ``on_run_start`` runs before Hydra creates the folder, configures the log file and writes
    ``.hydra/``; a busy folder ends the command there: ``error: ...`` on stderr, exit status 2. A
    multirun's jobs (each in its own folder) are locked by the task itself.

    Args:
        tasks: the ``task_name`` values it acts for (``[train]``: a training run's ``ckpt_path`` resumes
            it; the other tools read a ``ckpt_path`` and may run side by side).
    """

    def __init__(self, tasks: list[str] | tuple[str, ...] = ("train",)) -> None:
        self.tasks = tuple(tasks)
        self._folder: Path | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "task_name") not in self.tasks:
            return
        folder = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir")))).resolve()
        if fcntl is not None and is_launch_leader():
            try:
                _acquire(folder)
            except RunFolderBusy as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            self._folder = folder
        subdir = config.hydra.output_subdir
        resuming = OmegaConf.select(config, "ckpt_path") not in (None, "", "null")
        if resuming and subdir is not None and (folder / str(subdir) / "config.yaml").exists():
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = _resume_record_dir(folder, str(subdir))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._folder is not None:
            _release(self._folder)
            self._folder = None
