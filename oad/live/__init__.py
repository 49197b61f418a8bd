"""Online detection on live video: sources (files, cameras, network streams, pipes), the pipeline that
keeps up with them, and what it writes and shows while it runs.

- :mod:`oad.live.records`: what the pipeline hands to its outputs (:class:`ChunkRecord`, the
  :class:`Sink` interface).
"""
