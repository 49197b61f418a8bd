"""The order of the training samples, and where a run is in it: what makes a resumed run exact.

A run killed at any point and resumed from a checkpoint (``ckpt_path=last``) ends with the same weights
as the run that was never interrupted. Lightning restores the weights, the optimizer, the LR schedulers,
the epoch and step counters and, inside an interrupted epoch, how many batches were done. It does not
restore what the next batches are and the random numbers they are trained with:

- the order: the training loader shuffles with a new permutation every epoch, its seed drawn from the
  global torch RNG when the epoch's iteration starts (as ``shuffle=True``); a resumed epoch would
  draw another permutation, and restart it from its first batch while only counting the rest;
- the random generators: dropout draws from the global torch RNG (and the next epoch's permutation
  seed and the loader's worker seed come from it too); a resumed process starts from ``seed``.

So every checkpoint carries a :class:`ResumePoint` (the data module's state in the checkpoint,
:meth:`oad.data.datamodule.OadDataModule.state_dict`): the epoch, the batches of it trained, the seed of
its permutation, and the RNG states of every process (torch CPU and CUDA, NumPy, Python) at the save.
On resume the data module builds the loader from it (:class:`TrainLoader`): the interrupted epoch
yields the remaining batches of the same permutation, and the RNG states are put back at the point
that matches the save:

- saved inside an epoch (a step checkpoint): after the resumed loader's iterator is created (its
  creation draws from the global RNG, which the saving run had done at the start of the epoch);
- saved at an epoch end (after its validation): before the next epoch's iterator is created (the saving
  run drew that iterator's seeds after the save). Lightning may create a first iterator for the
  finished epoch before that one; every iterator created for the resumed epoch starts from the saved
  states, so the one that feeds training does.

This covers every save point of :mod:`oad.callbacks` (the step checkpoint skips an epoch's last batch:
the epoch-end one follows it, after the validation, whose loader draws from the global RNG), with or
without validation. Not covered: a validation inside an epoch (``val_check_interval < 1``: its draws
between two saves are not replayed); ``overfit_batches`` (Lightning's fixed order replaces the sampler,
and an interrupted epoch restarts it); a resume on another number of processes (each process's share and
generators belong to the saving run's processes: the data module logs it, goes on with the next epoch
after an epoch-end checkpoint and draws the rest of an interrupted epoch anew).

Under DDP (:class:`ShardedShuffledSampler`) the permutation is ``DistributedSampler``'s, seeded by
``(seed, epoch)`` as Lightning's own; the position is skipped the same way.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.data.distributed import DistributedSampler

__all__ = ["ResumePoint", "ShardedShuffledSampler", "ShuffledSampler", "TrainLoader", "rng_states",
           "set_rng_states"]


def rng_states() -> dict[str, Any]:
    """This process's global random generators: torch CPU, CUDA (when initialised), NumPy and Python.

    Plain types and tensors only, so a checkpoint holding them loads with ``weights_only=True``.
    """
    kind, key, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back the generators saved by :func:`rng_states` (CUDA only where as many devices are seen)."""
    torch.set_rng_state(states["torch"])
    kind, key, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@dataclass
class ResumePoint:
    """Where a run was in its training data when a checkpoint was saved (the module docstring).

    Attributes:
        epoch: the epoch the position is in.
        batches: batches of that epoch trained.
        num_batches: batches in that epoch (after ``limit_train_batches``).
        seed: seed of that epoch's permutation (:class:`ShuffledSampler`); None under DDP, where the
            permutation follows from the seed and the epoch.
        rng: the RNG states (:func:`rng_states`) of every process, by global rank.
    """

    epoch: int
    batches: int
    num_batches: int
    seed: int | None
    rng: list[dict[str, Any]]

    @property
    def at_epoch_end(self) -> bool:
        """Saved after the last batch of ``epoch``: the run goes on with the next epoch."""
        return self.batches >= self.num_batches

    @property
    def next_epoch(self) -> int:
        """The epoch the resumed run trains first."""
        return self.epoch + 1 if self.at_epoch_end else self.epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ResumePoint:
        return cls(**state)


class ShuffledSampler(RandomSampler):
    """``RandomSampler``'s order (the one ``DataLoader(shuffle=True)`` uses: a new permutation every
    iteration, its seed drawn from the global torch RNG when the iteration starts) with the seed kept
    (``epoch_seed``) and a position to resume from (:meth:`resume`)."""

    def __init__(self, dataset: Dataset):
        super().__init__(dataset)
        self.epoch_seed: int | None = None
        self._start: tuple[int, int] | None = None

    def resume(self, seed: int | None, skip: int) -> None:
        """The next iteration yields the permutation of ``seed`` from its ``skip``-th sample on."""
        if seed is None:
            raise ValueError("a single-process resume point needs the permutation's seed")
        self._start = (int(seed), int(skip))

    def __iter__(self) -> Iterator[int]:
        if self._start is None:
            seed, skip = int(torch.empty((), dtype=torch.int64).random_().item()), 0  # as RandomSampler
        else:
            (seed, skip), self._start = self._start, None
        self.epoch_seed = seed
        generator = torch.Generator()
        generator.manual_seed(seed)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()[skip:]


class ShardedShuffledSampler(DistributedSampler):
    """Lightning's training sampler under DDP (``DistributedSampler(shuffle=True)``, the permutation
    seeded by ``seed + epoch``, ``set_epoch`` called by Lightning every epoch; Lightning keeps a
    ``DistributedSampler`` it is given) with a position to resume from, as :class:`ShuffledSampler`."""

    epoch_seed = None  # the permutation follows from (seed, epoch)

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self._skip = 0

    def resume(self, seed: int | None, skip: int) -> None:
        """The next iteration yields this process's share of the epoch from its ``skip``-th sample on."""
        self._skip = int(skip)

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        return itertools.islice(super().__iter__(), skip, None)


class TrainLoader(DataLoader):
    """The training ``DataLoader`` (``drop_last=False``) over a :class:`ShuffledSampler` or
    :class:`ShardedShuffledSampler`, which, given a :class:`ResumePoint`, resumes there: every iterator
    created for the resumed epoch starts at its position with the saved RNG states (the module
    docstring says when they are put back); an iterator of a later epoch drops it. The epoch is the
    dataset's (:class:`oad.data.base.EpochIndex` ``epoch``, set at the start of every epoch before its
    iterator is created).

    Args:
        dataset: the training samples.
        batch_size: samples per batch.
        resume_point: where to resume, or None.
        rank: this process's global rank (which RNG states of ``resume_point`` are its own).
        kwargs: ``DataLoader`` arguments: ``sampler`` (the order), ``num_workers``, ... (Lightning rebuilds
            the loader with another sampler under ``overfit_batches``, passing them all again).
    """

    def __init__(self, dataset: Dataset, batch_size: int = 1, resume_point: ResumePoint | None = None,
                 rank: int = 0, **kwargs: Any):
        kwargs.setdefault("drop_last", False)
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self.resume_point, self.rank = resume_point, rank

    def __iter__(self):
        point = self.resume_point
        epoch = getattr(self.dataset, "epoch", None)
        if point is None or epoch is None or epoch < point.next_epoch:
            return super().__iter__()
        if epoch > point.next_epoch:  # the resumed epoch is over
            self.resume_point = None
            return super().__iter__()
        rng = point.rng[self.rank] if len(point.rng) > self.rank else None
        if point.at_epoch_end:
            # the saving run drew this iterator's seeds (worker seed, permutation) after the save
            if rng is not None:
                set_rng_states(rng)
            return super().__iter__()
        if hasattr(self.sampler, "resume"):  # not the SequentialSampler of overfit_batches
            self.sampler.resume(point.seed, point.batches * self.batch_size)
        iterator = super().__iter__()
        if rng is not None:  # the saving run had created its iterator before the save
            set_rng_states(rng)
        return iterator
