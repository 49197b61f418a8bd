"""Online detection on live video: sources (files, cameras, network streams, pipes), the pipeline that
keeps up with them, and what it writes and shows while it runs.

- :mod:`oad.live.records`: what the pipeline hands to its outputs (:class:`ChunkRecord`, the
  :class:`Sink` interface).
- :mod:`oad.live.source`: every source through PyAV, cut into chunks as frames arrive; segments,
  reconnection, stalls.
- :mod:`oad.live.pipeline`: decoding threads, bounded queues with a drop policy, one batched step per tick,
  latency and real-time figures.
- :mod:`oad.live.outputs`: the incremental files (``scores.jsonl``, ``events.jsonl``, ``summary.json``).
"""
