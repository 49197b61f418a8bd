"""Video: decoding and chunking (:mod:`~oad.video.decode`), backbones (:mod:`~oad.video.backbones`),
optical flow (:mod:`~oad.video.flow`), the per-chunk feature extractor (:mod:`~oad.video.features`) and
resumable extraction of a folder of videos to the LSTR layout (:mod:`~oad.video.extract`)."""

from oad.video.backbones import Backbone, build_backbone, normalize_rgb, resize_crop, torchvision_cache_files
from oad.video.decode import (Chunk, VideoError, VideoReader, chunk_frames, chunk_span, frame_shown_at, middle_time,
                              motion_indices, num_chunks_for)
from oad.video.features import ChunkFeatures, FeatureExtractor
from oad.video.flow import stacked_flow

__all__ = [
    "Backbone", "Chunk", "ChunkFeatures", "FeatureExtractor", "VideoError", "VideoReader", "build_backbone",
    "chunk_frames", "chunk_span", "frame_shown_at", "middle_time", "motion_indices", "normalize_rgb", "num_chunks_for",
    "resize_crop", "stacked_flow", "torchvision_cache_files",
]
