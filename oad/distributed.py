"""Whole-video evaluation in a multi-process (DDP) run, beyond Lightning's defaults.

- :class:`VideoShardSampler`: whole-video evaluation under DDP. Every video goes to exactly one process
  (no padding, so no video is scored twice and none is lost), the shards are balanced by chunk count,
  and a process left without videos still runs one (empty) batch, so it reaches the end-of-epoch hooks
  where the scores are gathered. Lightning's ``DistributedSampler`` would pad the list by repeating
  videos, as the reference OadTR's evaluation does; this sampler is a ``DistributedSampler`` subclass so
  that Lightning (``use_distributed_sampler=True``, the default) keeps it. The training samples' sampler
  is :class:`oad.data.sampling.ShardedShuffledSampler` (Lightning's ``DistributedSampler`` with a position
  a resumed run goes on from).

Checkpoints that survive a killed process (atomic writes, ``last.ckpt`` at every save point):
:mod:`oad.callbacks`; every process's position and random generators in them, for an exact resume:
:mod:`oad.data.sampling`; one launch per run folder (its first process holds the lock): :mod:`oad.runlock`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

log = logging.getLogger(__name__)


def shard_by_length(lengths: Sequence[int], num_shards: int) -> list[list[int]]:
    """Split item indices into ``num_shards`` lists, each item once, balancing the summed lengths.

    Longest first, each to the least loaded shard (ties: the lower shard). Deterministic, so every
    process computes the same split. Shards may be empty when there are fewer items than shards.

    Returns:
        ``num_shards`` lists of indices, each in increasing order.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    shards: list[list[int]] = [[] for _ in range(num_shards)]
    loads = [0] * num_shards
    for i in sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i)):
        s = min(range(num_shards), key=lambda k: (loads[k], k))
        shards[s].append(i)
        loads[s] += int(lengths[i])
    return [sorted(s) for s in shards]


class VideoShardSampler(DistributedSampler):
    """Batches of whole videos for one process; each video on exactly one process.

    Yields lists of dataset indices (one list per batch), so it is used with ``DataLoader(batch_size=None)``
    over a dataset that takes such a list (:class:`VideoBatches`). A process whose shard is empty yields
    one empty batch.

    Args:
        dataset: the videos (only its length is used here).
        lengths: chunk count of each video, for balancing.
        batch_size: videos per batch.
        num_replicas: number of processes (Lightning's ``trainer.distributed_sampler_kwargs``).
        rank: this process's global rank.
    """

    def __init__(self, dataset: Dataset, lengths: Sequence[int], batch_size: int = 8, num_replicas: int = 1,
                 rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        if len(lengths) != len(dataset):
            raise ValueError(f"{len(lengths)} lengths for {len(dataset)} videos")
        self.indices = shard_by_length(lengths, num_replicas)[rank]
        self.batches = [self.indices[i : i + batch_size] for i in range(0, len(self.indices), batch_size)] or [[]]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class VideoBatches(Dataset):
    """A dataset of videos read a batch at a time: ``ds[[i, j]] == [videos[i], videos[j]]``.

    An integer index gives a batch of one (Lightning swaps in a ``SequentialSampler`` under
    ``overfit_batches``).
    """

    def __init__(self, videos: Dataset):
        self.videos = videos

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, idx: int | Sequence[int]) -> list[dict]:
        if isinstance(idx, int):
            return [self.videos[idx]]
        return [self.videos[i] for i in idx]


__all__ = ["VideoBatches", "VideoShardSampler", "shard_by_length"]
