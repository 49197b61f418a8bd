"""Online detection on live video: sources (files, cameras, network streams, pipes), the pipeline that
keeps up with them, and what it writes and shows while it runs.

- :mod:`oad.live.records`: what the pipeline hands to its outputs (:class:`ChunkRecord`, the
  :class:`Sink` interface).
- :mod:`oad.live.render`: the rendered video (``render.mp4`` per stream, the answer drawn over the frames).
- :mod:`oad.live.view`: the live page on localhost (server-sent events).
"""
