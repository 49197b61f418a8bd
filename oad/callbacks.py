"""How training writes its checkpoints: the Lightning callbacks that decide when and which weights, and
the checkpoint IO that makes each write atomic.

- :class:`LastCheckpoint`: ``last.ckpt``, always the newest weights of the run.
- :class:`BestCheckpoint`: ``best.ckpt``, the epoch with the best validation metric (on request).
- :func:`checkpoint_callbacks`: the callbacks of ``configs/callbacks/default.yaml`` (``last.ckpt``,
  ``epoch<NNN>.ckpt`` per epoch, ``best.ckpt`` on request), set by the ``checkpoint:`` block of
  ``configs/train.yaml``.
- :class:`ExponentialMovingAverage`: an EMA of the weights (Lightning's ``WeightAveraging``): validated,
  tested and saved as ``state_dict`` in every checkpoint; :func:`weight_averaging` builds it from the
  ``ema:`` block of a recipe (``configs/train.yaml``).
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
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.plugins.io import TorchCheckpointIO

from oad.io import atomic_open

__all__ = ["AtomicCheckpointIO", "BestCheckpoint", "ExponentialMovingAverage", "LastCheckpoint", "checkpoint_callbacks",
           "weight_averaging"]


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


class ExponentialMovingAverage(WeightAveraging):
    """An exponential moving average of the trained weights, the way the MAT and CMeRT reference code keeps
    one: ``A_0`` = the weights at step ``start_step`` (0: the initial weights, as the references), then
    after every ``every_n_steps``-th optimizer step ``g`` after it ``A <- d A + (1 - d) W_g`` with
    ``d = decay ** every_n_steps`` (``decay`` is per optimizer step: updating less often keeps the same
    horizon). Until ``start_step`` the "average" is the trained weights. Only trainable parameters are
    averaged; buffers and frozen parameters follow the model's.

    Lightning's ``WeightAveraging`` does the rest: validation (so ``best.ckpt``'s choice) runs on the
    averaged weights, the model holds them after training (so the test does), and every checkpoint saves
    them as ``state_dict`` (what :func:`oad.checkpoint.load_network` reads) with the trained weights as
    ``current_model_state`` and the count of averaged steps as ``averaging_state``; a resumed fit
    (``ckpt_path=``) restores both and continues the average.

    What this subclass changes in Lightning's callback (``EMAWeightAveraging``), and why:

    - The update is one ``torch._foreach_lerp_`` over the trainable parameters. ``EMAWeightAveraging``
      goes through ``AveragedModel.update_parameters`` with a per-tensor ``avg_fn`` and, by default, the
      buffers averaged too: several small ops per tensor, and MAT's 640k-entry positional table averaged
      at every step (docs/benchmarks.md section 12 has the measured cost).
    - The average moves to the model's device when the fit starts: Lightning builds it in ``setup``,
      before the trainer moves the module, so on a GPU it would stay on the CPU and copy every weight
      across at every update.
    - Testing or validating a checkpoint (``trainer.test(ckpt_path=...)``, e.g. ``best.ckpt``) evaluates
      its ``state_dict``, the averaged weights; Lightning's hook would load ``current_model_state``, the
      trained weights, into the model whenever a fit had run before.
    - A checkpoint written after training ended (``last.ckpt`` when ``max_steps`` stops inside an epoch)
      keeps the trained weights as ``current_model_state``, not the averaged ones copied into the model.

    Args:
        decay: weight of the running average per optimizer step, in [0, 1).
        every_n_steps: update after every n-th optimizer step (>= 1).
        start_step: optimizer step whose weights start the average (0: the initial weights).

    Raises:
        ValueError: a setting out of range.
    """

    def __init__(self, decay: float = 0.999, every_n_steps: int = 1, start_step: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        if int(every_n_steps) < 1 or int(start_step) < 0:
            raise ValueError(f"ema every_n_steps must be >= 1 and start_step >= 0, got {every_n_steps}, {start_step}")
        super().__init__(use_buffers=False)
        self.decay, self.every_n_steps, self.start_step = float(decay), int(every_n_steps), int(start_step)
        self._pairs: tuple[list[torch.Tensor], ...] | None = None  # (averaged, trained, follow avg, follow model)
        self._copy_next: bool | None = None  # the next update starts the average (None: read n_averaged)
        self._trained_state: dict[str, torch.Tensor] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """The settings, as ``metrics.json`` reports them."""
        return {"decay": self.decay, "every_n_steps": self.every_n_steps, "start_step": self.start_step}

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None:
            return False
        step = step_idx + 1  # optimizer steps taken
        return step >= self.start_step and (step - self.start_step) % self.every_n_steps == 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._pairs, self._trained_state = None, None
            if self.start_step == 0:  # the initial weights (the module as built) are the first term
                self._average_model.n_averaged.fill_(1)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the trainer has moved the module to its device by now (after setup)
        self._average_model.to(pl_module.device)
        self._copy_next = None

    def _tensors(self, pl_module: L.LightningModule) -> tuple[list[torch.Tensor], ...]:
        if self._pairs is None:
            mine = dict(self._average_model.module.named_parameters())
            avg, cur, follow_avg, follow_cur = [], [], [], []
            for name, p in pl_module.named_parameters():
                (avg if p.requires_grad else follow_avg).append(mine[name].detach())
                (cur if p.requires_grad else follow_cur).append(p.detach())
            bufs = dict(self._average_model.module.named_buffers())
            for name, b in pl_module.named_buffers():
                follow_avg.append(bufs[name])
                follow_cur.append(b)
            self._pairs = (avg, cur, follow_avg, follow_cur)
        return self._pairs

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step  # optimizer steps taken; once per step, as WeightAveraging
        if step <= self._latest_update_step:
            return
        avg, cur, follow_avg, follow_cur = self._tensors(pl_module)
        with torch.no_grad():
            if self._copy_next is None:  # once per fit, after any resume: a fresh average or a restored one
                self._copy_next = int(self._average_model.n_averaged) == 0
            if self.should_update(step_idx=step - 1):
                if self._copy_next:
                    torch._foreach_copy_(avg, cur)
                    self._copy_next = False
                else:
                    torch._foreach_lerp_(avg, cur, 1.0 - self.decay ** self.every_n_steps)
                self._average_model.n_averaged += 1
                self._latest_update_step = step
            elif self._copy_next:  # before start_step: validation and checkpoints see the trained weights
                torch._foreach_copy_(avg, cur)
            else:
                return
            if follow_avg:
                torch._foreach_copy_(follow_avg, follow_cur)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trained_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        super().on_train_end(trainer, pl_module)  # the model now holds the averaged weights

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._trained_state is not None and "current_model_state" in checkpoint:
            checkpoint["current_model_state"] = self._trained_state

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == "fit":  # resuming: the average and the trained weights, each its own
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
            self._copy_next = None
        # else: evaluating the checkpoint's state_dict, the averaged weights, already loaded


def weight_averaging(settings: dict[str, Any] | None) -> list[L.Callback]:
    """The callbacks of a recipe's ``ema:`` block: ``[]`` when it is null (the default), else one
    :class:`ExponentialMovingAverage` with its settings (``decay``, ``every_n_steps``, ``start_step``)."""
    return [] if settings is None else [ExponentialMovingAverage(**settings)]


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
