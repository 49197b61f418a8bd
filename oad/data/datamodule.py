"""LightningDataModule over any ``Source``: training samples, whole videos for validation and test.

The training samples are the model's (its ``samples`` function, :mod:`oad.data.samples`), handed in
as ``samples``; the data module knows nothing about models.

The training samples are shuffled as ``DataLoader(shuffle=True)`` does, by samplers that let a resumed
run go on exactly where it was (:mod:`oad.data.sampling`; the position is this module's state in every
checkpoint). Under DDP each process gets its share as from Lightning's ``DistributedSampler``; the whole
videos are split across the processes by :class:`oad.distributed.VideoShardSampler` (each video once,
balanced by length).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from oad.data.base import Video, stream_dims
from oad.data.sampling import ResumePoint, ShardedShuffledSampler, ShuffledSampler, TrainLoader, rng_states
from oad.data.sources import Source
from oad.data.windows import VideoDataset, collate_videos
from oad.distributed import VideoBatches, VideoShardSampler

log = logging.getLogger(__name__)


class OadDataModule(L.LightningDataModule):
    """Windows for training, whole videos for validation/test (scored online, every chunk).

    Args:
        source: where the videos come from (``SyntheticSource``, a reader of a public layout, ...).
        samples: builds the training dataset from the training videos,
            ``samples(videos, ignore_index=..., seed=...)`` (the model's, bound to its config by
            ``oad.tasks.common.build_datamodule``); None for evaluation only.
        batch_size: training samples per batch.
        num_workers: loader workers.
        train_split, val_split, test_split: split names given to ``source.load``. THUMOS has no
            validation split; like the reference code, ``val_split: test`` monitors the test videos.
        seed: seed of the samples' random offsets.
        root, layout: accepted and ignored. The data configs of the public datasets
            (``configs/data/thumos14.yaml``, ...) keep the two values users type, ``data.root=<dir>`` and
            ``data.layout=<oadtr|lstr|trn>``, at this level and hand them to the source by interpolation.
    """

    def __init__(
        self,
        source: Source,
        samples: Callable[..., Dataset] | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        train_split: str = "train",
        val_split: str | None = "test",
        test_split: str = "test",
        seed: int = 0,
        root: str | None = None,
        layout: str | None = None,
    ):
        super().__init__()
        self.source = source
        self.samples = samples
        self.batch_size, self.num_workers = batch_size, num_workers
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.seed = seed
        self._videos: dict[str, list[Video]] = {}
        self.train_set: Dataset | None = None
        self._train_loader: TrainLoader | None = None
        self._resume: ResumePoint | None = None

    # -- facts -----------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.source.class_names)

    @property
    def ignore_index(self) -> int | None:
        return self.source.ignore_index

    @property
    def metric(self) -> str:
        return self.source.metric

    def videos(self, stage: str) -> list[Video]:
        """Videos of ``'train'``, ``'val'`` or ``'test'``, loaded once and checked."""
        split = self.splits[stage]
        if split is None:
            return []
        if split not in self._videos:
            vids = self.source.load(split)
            if not vids:
                raise ValueError(f"split {split!r} has no videos")
            for v in vids:
                if v.targets.shape[1] != self.num_classes:
                    raise ValueError(
                        f"video {v.name!r}: targets have {v.targets.shape[1]} classes, "
                        f"the dataset has {self.num_classes} class names"
                    )
            self._videos[split] = vids
        return self._videos[split]

    @property
    def stream_dims(self) -> tuple[int, ...]:
        return stream_dims(self.videos("train") or self.videos("test"))

    @property
    def in_dim(self) -> int:
        return int(sum(self.stream_dims))

    # -- Lightning -------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            train = self.videos("train")
            if self.samples is None:
                raise ValueError("the data module was built without a training-sample function (evaluation only)")
            self.train_set = self.samples(train, ignore_index=self.ignore_index, seed=self.seed)
            log.info(
                "train: %d videos, %d chunks, %d samples", len(train),
                int(np.sum([v.num_chunks for v in train])), len(self.train_set),
            )
            self.videos("val")
        if stage in (None, "test", "validate", "predict"):
            self.videos("test")

    def train_dataloader(self) -> TrainLoader:
        """Shuffled training batches (:mod:`oad.data.sampling`), this process's share under DDP; after a
        resume from a checkpoint of this module (:meth:`load_state_dict`), from where that run was."""
        if self.train_set is None:
            self.setup("fit")
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        if self._resume is not None:
            epoch = self._resume.next_epoch
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)  # then at every epoch start (OadLitModule.on_train_epoch_start)
        replicas, rank = self._shard()
        if replicas > 1:
            # Lightning's own DDP sampler seed (seed_everything's), so DDP runs draw what they drew before
            sampler = ShardedShuffledSampler(self.train_set, replicas, rank, seed=int(os.getenv("PL_GLOBAL_SEED", 0)))
            sampler.set_epoch(epoch)  # then by Lightning at every epoch start
        else:
            sampler = ShuffledSampler(self.train_set)
        self._train_loader = TrainLoader(self.train_set, self.batch_size, resume_point=self._resume, rank=rank,
                                         sampler=sampler, num_workers=self.num_workers)
        return self._train_loader

    def _shard(self) -> tuple[int, int]:
        """``(processes, this process's global rank)`` of the run (``(1, 0)`` without DDP)."""
        shard = (self.trainer.distributed_sampler_kwargs if self.trainer is not None else None) or {}
        return shard.get("num_replicas", 1), shard.get("rank", 0)

    # -- checkpoints: where training is (oad.data.sampling) ----------------------------------------------
    def state_dict(self) -> dict:
        """Saved in every checkpoint by Lightning: the :class:`~oad.data.sampling.ResumePoint` of the fit
        (every process's RNG states gathered under DDP: Lightning saves a checkpoint on every process, and
        rank 0 writes it)."""
        trainer, loader = self.trainer, self._train_loader
        if trainer is None or loader is None or trainer.state.fn != "fit":
            return {}
        rng = [rng_states()]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            rng = [None] * trainer.world_size
            torch.distributed.all_gather_object(rng, rng_states())
        point = ResumePoint(epoch=int(getattr(self.train_set, "epoch", trainer.current_epoch)),
                            batches=int(trainer.fit_loop.epoch_loop.batch_progress.current.processed),
                            num_batches=int(trainer.num_training_batches),
                            seed=getattr(loader.sampler, "epoch_seed", None), rng=rng)
        return {"resume_point": point.to_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume the fit where the checkpoint's run was (called by Lightning before the loaders are built)."""
        if "resume_point" not in state_dict:
            return
        point = ResumePoint.from_dict(state_dict["resume_point"])
        world = self.trainer.world_size if self.trainer is not None else 1
        if len(point.rng) != world:
            # each process's share of an epoch and its random generators belong to the saving run's processes
            log.warning("resuming a run of %d processes on %d: not exactly where it was (%s)", len(point.rng), world,
                        "the next epoch starts anew" if point.at_epoch_end else
                        "the interrupted epoch's remaining batches are drawn anew")
            if not point.at_epoch_end:
                return
            point.rng = []
        self._resume = point

    def _video_loader(self, stage: str) -> DataLoader:
        """Batches of 8 whole videos, this process's share of them under DDP (the sampler batches)."""
        videos = self.videos(stage)
        dataset = VideoDataset(videos)
        replicas, rank = self._shard()
        sampler = VideoShardSampler(dataset, [v.num_chunks for v in videos], batch_size=8, num_replicas=replicas,
                                    rank=rank)
        return DataLoader(VideoBatches(dataset), sampler=sampler, batch_size=None, num_workers=0,
                          collate_fn=collate_videos)

    def val_dataloader(self) -> DataLoader | list:
        return self._video_loader("val") if self.splits["val"] else []

    def test_dataloader(self) -> DataLoader:
        return self._video_loader("test")
