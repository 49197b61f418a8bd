"""Window dataset: target alignment on the real THUMOS'14 label arrays, padding/masks, dense mode,
and whole-video scoring equal to per-window forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oad.data.base import Video
from oad.data.windows import WindowDataset, future_targets
from oad.tasks.scoring import score_videos


def videos_from_labels(labels: dict, n: int = 6, dim: int = 5, max_len: int | None = None) -> list[Video]:
    out = []
    for name in sorted(labels)[:n]:
        lab = labels[name].astype(np.int64)[:max_len]
        T = len(lab)
        # feature = chunk index (so a window's slice is checkable) and the label
        feats = np.stack([np.arange(T), lab] + [np.zeros(T)] * (dim - 2), axis=1).astype(np.float32)
        out.append(Video(name, (feats[:, :3], feats[:, 3:]), np.eye(22, dtype=np.float32)[lab]))
    return out


def test_window_target_alignment_on_real_labels(thumos_val_labels):
    vids = videos_from_labels(thumos_val_labels)
    L, Q = 16, 8
    ds = WindowDataset(vids, L, Q, future_offset=1, dense=False, ignore_index=21, drop_ignored=True)
    # one window per chunk, minus the Ambiguous ones
    expected = sum(int((v.targets[:, 21] == 0).sum()) for v in vids)
    assert len(ds) == expected
    rng = np.random.default_rng(0)
    for i in rng.choice(len(ds), 300, replace=False):
        item = ds[int(i)]
        v = vids[int(item["video"])]
        t = int(item["end"]) - 1
        lab = v.targets.argmax(1)
        assert item["target"].argmax().item() == lab[t]
        assert lab[t] != 21
        feats, mask = item["features"].numpy(), item["mask"].numpy()
        # the last row is chunk t; rows are consecutive chunks; padding only on the left
        assert feats[-1, 0] == t and feats[-1, 1] == lab[t]
        n = min(L, t + 1)
        assert mask.sum() == n and mask[-n:].all()
        np.testing.assert_array_equal(feats[-n:, 0], np.arange(t - n + 1, t + 1))
        assert (feats[:-n] == 0).all()
        fut = item["future_target"].numpy()
        for j in range(Q):
            if t + 1 + j < v.num_chunks:
                assert fut[j].argmax() == lab[t + 1 + j]
            else:
                assert fut[j].sum() == 0


def test_ambiguous_rule_for_soft_and_multi_label_targets():
    """A window is dropped exactly when its current target's Ambiguous entry is 1 (the reference's rule)."""
    T = 5
    targets = np.zeros((T, 22), dtype=np.float32)
    targets[0, 0] = 1.0  # background: kept
    targets[1, [3, 21]] = 1.0  # multi-label with Ambiguous 1: dropped
    targets[2, [3, 21]] = 0.5  # soft, Ambiguous 0.5: kept
    targets[3, 21] = 1.0  # Ambiguous: dropped
    targets[4, 3] = 1.0  # action: kept
    v = Video("v", (np.zeros((T, 2), np.float32),), targets)
    ds = WindowDataset([v], 4, 2, ignore_index=21, drop_ignored=True)
    assert sorted(int(ds[i]["end"]) - 1 for i in range(len(ds))) == [0, 2, 4]


def test_ambiguous_windows_kept_for_evaluation(thumos_val_labels):
    vids = videos_from_labels(thumos_val_labels, n=3)
    ds = WindowDataset(vids, 8, 4, drop_ignored=False)
    assert len(ds) == sum(v.num_chunks for v in vids)


def test_future_targets_offsets():
    targets = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 1]]
    f1 = future_targets(targets, np.array([0, 3]), 3, offset=1)
    assert f1.shape == (2, 3, 4)
    np.testing.assert_array_equal(f1[0].argmax(1), [1, 2, 3])
    np.testing.assert_array_equal(f1[1, 0], targets[4])
    assert f1[1, 1:].sum() == 0  # past the end
    f0 = future_targets(targets, np.array([0]), 2, offset=0)
    np.testing.assert_array_equal(f0[0].argmax(1), [0, 1])


def test_dense_windows_cover_every_chunk_and_keep_their_count(thumos_val_labels):
    vids = videos_from_labels(thumos_val_labels, n=4, max_len=300)
    L = 32
    ds = WindowDataset(vids, L, 8, future_offset=0, dense=True, seed=3)
    n0 = len(ds)
    for epoch in range(4):
        ds.set_epoch(epoch)
        assert len(ds) == n0  # fixed length: samplers and DDP see the same count every epoch
        covered = {i: np.zeros(v.num_chunks, bool) for i, v in enumerate(vids)}
        for k in range(len(ds)):
            item = ds[k]
            vi, end = int(item["video"]), int(item["end"])
            n = int(item["mask"].sum())
            covered[vi][end - n:end] = True
            t = np.arange(end - n, end)
            lab = vids[vi].targets.argmax(1)
            np.testing.assert_array_equal(item["target"][-n:].argmax(1).numpy(), lab[t])
            assert item["target"][:-n].sum() == 0
            # decoder step 0 targets the current chunk in the TRN convention
            np.testing.assert_array_equal(item["future_target"][-n:, 0].argmax(1).numpy(), lab[t])
        assert all(c.all() for c in covered.values())
    ds.set_epoch(0)
    ends0 = ds.index.copy()
    ds.set_epoch(1)
    assert not np.array_equal(ends0, ds.index)  # offsets are redrawn


def test_whole_video_scoring_equals_windowed_forward():
    from oad.models.oadtr import OadTR

    torch.manual_seed(0)
    model = OadTR(in_dim=6, window=8, d_model=16, num_heads=2, num_layers=1, mlp_dim=16, num_queries=3,
                  decoder_layers=1, decoder_heads=2, decoder_ffn_dim=16).eval()
    T = 21
    v = Video("v", (np.random.default_rng(0).normal(size=(T, 6)).astype(np.float32),),
              np.eye(22, dtype=np.float32)[np.zeros(T, int)])
    ds = WindowDataset([v], 8, 3, drop_ignored=False)
    (logits, future), = score_videos(model, [torch.from_numpy(v.features())])
    # batches of 5 windows: the padded (masked) and the full windows meet inside a batch
    logits5, future5 = model.forward_video(torch.from_numpy(v.features()), batch_size=5)
    torch.testing.assert_close(logits5, logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(future5, future, atol=1e-6, rtol=1e-6)
    assert logits.shape == (T, 22) and future.shape == (T, 3, 22)
    with torch.no_grad():
        for k in range(T):
            item = ds[k]
            lg, fu = model(item["features"][None], item["mask"][None])
            torch.testing.assert_close(lg[0], logits[k], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(fu[0], future[k], atol=1e-5, rtol=1e-5)


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        WindowDataset([], 0, 1)
