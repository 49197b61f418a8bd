"""Training-batch augmentation (``oad.data.augment``): the per-video spread it is scaled by, one offset per
sample on every real chunk and none on padding, its size, and that ``tools/train.py`` applies it to the
batches the model trains on (and to nothing else)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oad.data.augment import VideoShift, video_mean_spread
from oad.data.base import Video
from tests.conftest import TINY, compose_cfg


def _videos(offsets: np.ndarray, T: int = 50, seed: int = 0) -> list[Video]:
    rng = np.random.default_rng(seed)
    out = []
    for i, off in enumerate(offsets):
        feats = (rng.normal(size=(T, len(off))) + off).astype(np.float32)
        out.append(Video(f"v{i}", (feats[:, :2], feats[:, 2:]), np.eye(22, dtype=np.float32)[np.zeros(T, int)]))
    return out


def test_video_mean_spread_is_the_sd_of_per_video_means_over_both_streams():
    offsets = np.array([[0.0, 1.0, 10.0], [2.0, 1.0, -10.0], [4.0, 1.0, 0.0]])
    vids = _videos(offsets)
    means = np.stack([np.concatenate([s.mean(0) for s in v.streams]) for v in vids])
    np.testing.assert_allclose(video_mean_spread(vids), means.std(0), rtol=1e-5)
    # the offsets dominate: dimension 2's spread is ~8.2, dimension 1's only the noise of a 50-chunk mean
    spread = video_mean_spread(vids)
    assert spread[2] > 5 and spread[1] < 0.5
    with pytest.raises(ValueError, match="at least 2 videos"):
        video_mean_spread(vids[:1])


def test_one_offset_per_sample_on_every_real_chunk_and_long_memory_token_none_on_padding():
    torch.manual_seed(0)
    B, L, N, D = 4, 6, 5, 3
    feats = torch.randn(B, L, D)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :2] = False  # left padding of the first sample
    feats[0, :2] = 0
    long = torch.randn(B, N, D)
    batch = {"features": feats, "mask": mask, "long_features": long, "target": torch.zeros(B, L, 22)}
    out = VideoShift(np.array([1.0, 2.0, 0.0], np.float32), strength=0.5)(batch)
    delta = out["features"] - feats
    shift = delta[:, -1]  # (B, D): the last position is real in every sample
    assert torch.all(shift.abs().sum(1) > 0)
    assert torch.all(shift[:, 2] == 0)  # a dimension with no spread is not moved
    assert torch.allclose(delta[mask], shift[:, None, :].expand(B, L, D)[mask])
    assert torch.all(out["features"][0, :2] == 0)  # padding stays zero, as at test time
    assert torch.allclose(out["long_features"] - long, shift[:, None, :].expand(B, N, D))
    assert out["target"] is batch["target"] and torch.equal(batch["features"], feats)  # the input is not modified


def test_offset_size_follows_scale_and_strength_and_zero_strength_is_the_identity():
    torch.manual_seed(1)
    n = 20000
    batch = {"features": torch.zeros(n, 1, 2), "mask": torch.ones(n, 1, dtype=torch.bool)}
    out = VideoShift(np.array([1.0, 3.0], np.float32), strength=2.0)(batch)["features"][:, 0]
    sd = out.std(0)
    assert sd[0] == pytest.approx(2.0, rel=0.05) and sd[1] == pytest.approx(6.0, rel=0.05)
    assert VideoShift(np.ones(2, np.float32), strength=0.0)(batch) is batch
    with pytest.raises(ValueError, match="features have 2 dimensions, the scale 4"):
        VideoShift(np.ones(4, np.float32), 1.0)(batch)
    with pytest.raises(ValueError, match=">= 0"):
        VideoShift(np.ones(2, np.float32), -1.0)


def test_training_applies_the_shift_to_the_batches_the_model_trains_on(tmp_path, monkeypatch):
    from oad.tasks import training

    seen = []

    class Spy(VideoShift):
        def __call__(self, batch):
            out = super().__call__(batch)
            seen.append((batch["features"], out["features"]))
            return out

    monkeypatch.setattr(training, "VideoShift", Spy)
    cfg = compose_cfg("train", [*TINY, "trainer.limit_train_batches=2", "augment.video_shift=1.0"],
                      tmp_path)
    result = training.train(cfg)
    assert len(seen) == 2  # the two training batches; validation and test score unshifted videos
    for before, after in seen:
        assert not torch.equal(before, after)
    assert result["metrics"]["augment"] == {"video_shift": 1.0}  # metrics.json says what ran
    cfg_off = compose_cfg("train", [*TINY], tmp_path / "off")
    assert cfg_off.augment.video_shift == 0.0 and training.build_augment(cfg_off, None) is None
