"""Test-only pieces that the tools load by name from a Hydra override (the subprocesses get the repository
on their ``PYTHONPATH``: :func:`tool_env`)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L

from tests.conftest import REPO


def tool_env() -> dict[str, str]:
    """The environment of a ``tools/*.py`` subprocess that loads ``tests.helpers``: the repository on the
    path, one torch thread."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


class KillAt(L.Callback):
    """Kills its own process with SIGKILL (as a crash, the OOM killer or a lost node would) at a fixed point
    of the fit, after the checkpoint callbacks of that point ran: right after optimizer step ``step``
    (its ``on_train_batch_end``), or at the end of epoch ``epoch`` (after its validation).

    Added from the command line: ``+callbacks.kill._target_=tests.helpers.KillAt +callbacks.kill.step=3``.
    """

    def __init__(self, step: int | None = None, epoch: int | None = None):
        self.step, self.epoch = step, epoch

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class WaitFor(L.Callback):
    """Holds a run at the start of its fit (its run folder locked, its data and model built): writes the
    file ``ready``, then waits until the file ``go`` exists (at most ``timeout`` seconds)."""

    def __init__(self, ready: str, go: str, timeout: float = 300.0):
        self.ready, self.go, self.timeout = Path(ready), Path(go), timeout

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ready.touch()
        deadline = time.monotonic() + self.timeout
        while not self.go.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.go} did not appear")
            time.sleep(0.02)
