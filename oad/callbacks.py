"""How training writes its checkpoints: the Lightning callbacks that decide when, and the checkpoint IO
that makes each write atomic.

- :class:`LastCheckpoint`: ``last.ckpt``, always the newest weights of the run.
- :class:`BestCheckpoint`: ``best.ckpt``, the epoch with the best validation metric (on request).
- :func:`checkpoint_callbacks`: the callbacks of ``configs/callbacks/default.yaml`` (``last.ckpt``,
  ``epoch<NNN>.ckpt`` per epoch, ``best.ckpt`` on request), set by the ``checkpoint:`` block of
  ``configs/train.yaml``.
- :class:`AtomicCheckpointIO`: checkpoints written to a temporary file beside the target, flushed to
  disk, then renamed over it. A process killed while writing leaves the previous ``last.ckpt`` intact
  (Lightning's ``TorchCheckpointIO`` truncates the file and writes in place).

Reading a checkpoint back (a network without its training config) is :mod:`oad.checkpoint`, which stays
free of Lightning so that the inference tools (streaming, export) do not import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from oad.io import atomic_open

__all__ = ["AtomicCheckpointIO", "BestCheckpoint", "LastCheckpoint", "checkpoint_callbacks"]


class LastCheckpoint(L.Callback):
    """``last.ckpt``: always the newest weights of the run.

    Written (atomically, through the trainer's checkpoint IO) after every validation of the fit, every
    ``every_n_train_steps`` optimizer steps inside an epoch (0: never; not after an epoch's last batch,
    which the epoch-end file follows, so that every file resumes exactly: :mod:`oad.data.sampling`), at
    the end of an epoch without validation, and once more when training ends, so after a finished run it
    holds the final global step, the weights the headline is computed from. A killed run resumes from it (``ckpt_path=last``)
    losing at most ``every_n_train_steps`` steps.

    Lightning's own ``ModelCheckpoint(save_last=True)`` only rewrites ``last.ckpt`` when that callback
    saved a top-k file at the same step: with a monitored metric, an epoch that is not the best leaves
    ``last.ckpt`` at the best epoch's step (the bug this replaces).
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_train_steps: int = 0):
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n = int(every_n_train_steps or 0)
        self._saved_step = -1

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # everything a resume needs
        self._saved_step = trainer.global_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # resumed from this very file: it holds the restored step already
        if trainer.ckpt_path is not None and Path(trainer.ckpt_path).resolve() == self.path.resolve():
            self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # not after an epoch's last batch: the epoch-end save follows (after the validation, whose random
        # draws a resume from here would not replay: oad.data.sampling)
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if (self.every_n > 0 and trainer.global_step % self.every_n == 0 and trainer.global_step != self._saved_step
                and not last_of_epoch):
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the end-of-epoch state (validation done) replaces a mid-epoch file of the same step
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.enable_validation or not trainer.val_dataloaders:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the final step when the last save was earlier (e.g. max_steps reached inside an epoch); after a
        # full last epoch the file written after its validation already holds the final weights, and
        # keeps Lightning's epoch index of that epoch
        if trainer.global_step != self._saved_step:
            self._save(trainer)


class BestCheckpoint(ModelCheckpoint):
    """``best.ckpt``: the epoch with the highest ``val/<metric>`` (``val/mAP``, or ``val/mcAP`` on data
    scored with calibrated AP), the metric read from the data module when the fit starts.

    Raises:
        ValueError: at the start of the fit, when the data have no validation split.
    """

    def __init__(self, dirpath: str | os.PathLike):
        super().__init__(dirpath=dirpath, filename="best", monitor="val/mAP", mode="max", save_top_k=1,
                         save_last=False, enable_version_counter=False)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            dm = trainer.datamodule
            if not dm.splits["val"]:
                raise ValueError("checkpoint.select_best=true needs a validation split (data.val_split)")
            self.monitor = "val/mcAP" if dm.metric == "cAP" else "val/mAP"
        super().setup(trainer, pl_module, stage)


def checkpoint_callbacks(dirpath: str | os.PathLike, every_n_train_steps: int = 0, every_n_epochs: int = 1,
                         select_best: bool = False) -> list[L.Callback]:
    """``last.ckpt`` (:class:`LastCheckpoint`), ``epoch<NNN>.ckpt`` every ``every_n_epochs`` epochs (0:
    none), and ``best.ckpt`` (:class:`BestCheckpoint`) when ``select_best``.

    No checkpoint is picked on a metric by default: THUMOS'14 has no validation split and its
    validation monitors the test videos, so "best" would be chosen on the test set. With a real
    validation split, ``select_best`` also keeps the epoch with the best ``val/<metric>`` as
    ``best.ckpt``; the headline is still computed from the final weights.
    """
    dirpath = Path(dirpath)
    callbacks: list[L.Callback] = [LastCheckpoint(dirpath, int(every_n_train_steps or 0))]
    every_n_epochs = int(every_n_epochs or 0)
    if every_n_epochs > 0:
        callbacks.append(ModelCheckpoint(dirpath=dirpath, filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                                         save_top_k=-1, every_n_epochs=every_n_epochs, save_last=False,
                                         enable_version_counter=False))
    if select_best:
        callbacks.append(BestCheckpoint(dirpath))
    return callbacks


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic: temp file, fsync, ``os.replace``, fsync dir.

    Remote paths (``s3://...``) are written by the parent class.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        if "://" in str(path):  # remote storage (s3://, gs://): no rename there
            return super().save_checkpoint(checkpoint, path)
        path = Path(path)
        with atomic_open(path) as f:
            torch.save(checkpoint, f)
        _fsync_dir(path.parent)
        # temp files of processes killed while writing this checkpoint
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
