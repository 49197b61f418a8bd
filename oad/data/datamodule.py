"""LightningDataModule over any ``Source``: training samples, whole videos for validation and test.

The training samples are the model's (its ``samples`` function, :mod:`oad.data.samples`), handed in
as ``samples``; the data module knows nothing about models.

Under DDP the training windows get Lightning's ``DistributedSampler``; the whole videos are split across
the processes by :class:`oad.distributed.VideoShardSampler` (each video once, balanced by length).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from oad.data.base import Video, stream_dims
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

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        if hasattr(self.train_set, "set_epoch") and self.trainer is not None:
            self.train_set.set_epoch(self.trainer.current_epoch)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            drop_last=False,
            persistent_workers=False,
        )

    def _video_loader(self, stage: str) -> DataLoader:
        """Batches of 8 whole videos, this process's share of them under DDP (the sampler batches)."""
        videos = self.videos(stage)
        shard = (self.trainer.distributed_sampler_kwargs if self.trainer is not None else None) or {}
        dataset = VideoDataset(videos)
        sampler = VideoShardSampler(dataset, [v.num_chunks for v in videos], batch_size=8,
                                    num_replicas=shard.get("num_replicas", 1), rank=shard.get("rank", 0))
        return DataLoader(VideoBatches(dataset), sampler=sampler, batch_size=None, num_workers=0,
                          collate_fn=collate_videos)

    def val_dataloader(self) -> DataLoader | list:
        return self._video_loader("val") if self.splits["val"] else []

    def test_dataloader(self) -> DataLoader:
        return self._video_loader("test")
