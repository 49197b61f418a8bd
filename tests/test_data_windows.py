"""Training datasets: last-chunk window target alignment on the real THUMOS'14 label arrays,
padding/masks, TRN's dense windows, LSTR/TeSTra memory windows, the per-epoch index they share, and
whole-video scoring equal to per-window forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oad.data.base import Video, future_targets
from oad.data.memory import long_memory_sample
from oad.data import samples  # (its testra_memory_windows is not imported by name: pytest would collect it)
from oad.data.windows import WindowDataset
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
    ds = WindowDataset(vids, L, Q, future_offset=1, ignore_index=21, drop_ignored=True)
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
    ds = samples.dense_windows(vids, {"window": L, "num_queries": 8, "future_offset": 0}, ignore_index=21, seed=3)
    assert ds.context == 0  # TRN's dense windows are sequences with no history
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


def test_strided_windows_end_every_stride_chunks_from_a_per_epoch_offset(thumos_val_labels):
    vids = videos_from_labels(thumos_val_labels, n=3, max_len=200)
    ds = samples.strided_windows(vids, {"window": 16, "stride": 4}, ignore_index=21, seed=1)
    firsts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        for vi, v in enumerate(vids):
            ends = ds.index[ds.index[:, 0] == vi, 1]
            first = int(ends[0]) - 1
            assert 0 <= first < 4
            np.testing.assert_array_equal(ends, np.arange(first + 1, v.num_chunks + 1, 4))  # Ambiguous kept
            firsts.add(first)
    assert len(firsts) > 1  # the offset is redrawn


def test_strided_windows_can_drop_ambiguous_windows():
    """The Ambiguous rule reads the targets of the windows' own last chunks, whatever the stride."""
    T = 20
    lab = np.arange(T) % 22
    lab[[5, 10, 15, 16]] = 21  # one at every residue modulo the stride: some window is dropped
    v = Video("v", (np.zeros((T, 2), np.float32),), np.eye(22, dtype=np.float32)[lab])
    ds = WindowDataset([v], 4, 0, ignore_index=21, drop_ignored=True, stride=4, seed=0)
    first = int(np.random.default_rng((0, 0)).integers(0, 4))
    expected = [t for t in range(first, T, 4) if lab[t] != 21]
    assert [int(e) - 1 for e in ds.index[:, 1]] == expected


@pytest.mark.parametrize("function, stretch", [("lstr_memory_windows", True), ("testra_memory_windows", False)])
def test_memory_windows_slice_the_work_window_and_its_long_memory(function, stretch):
    rng = np.random.default_rng(0)
    vids = []
    for i, T in enumerate([5, 40, 130]):
        feats = rng.normal(size=(T, 4)).astype(np.float32)
        feats[:, 0] = np.arange(T)  # the chunk index
        vids.append(Video(f"v{i}", (feats,), np.eye(22, dtype=np.float32)[rng.integers(0, 22, size=T)]))
    W, L, stride = 8, 32, 4
    config = {"work_memory": W, "long_memory": L, "long_stride": stride}
    ds = getattr(samples, function)(vids, config, ignore_index=21, seed=2)
    offsets = []
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        assert not (ds.index[:, 0] == 0).any()  # a video of at most W chunks has no window
        for k in range(len(ds)):
            item = ds[k]
            vi, end = int(item["video"]), int(item["end"])
            v, ws = vids[vi], end - W
            assert end < v.num_chunks  # a window ending at the last chunk is dropped, as the references
            np.testing.assert_array_equal(item["features"][:, 0].numpy(), np.arange(ws, end))
            assert item["mask"].all() and item["future_target"].shape == (W, 0, 22)
            np.testing.assert_array_equal(item["target"].numpy(), v.targets[ws:end])
            idx, valid = long_memory_sample(ws, L, L // stride, stretch)
            np.testing.assert_array_equal(item["long_features"][:, 0].numpy(), idx)
            np.testing.assert_array_equal(item["long_mask"].numpy(), valid)
        starts = ds.index[ds.index[:, 0] == 2, 1] - W
        assert 0 <= starts[0] < W and (np.diff(starts) == W).all()
        offsets.append(int(starts[0]))
    assert len(set(offsets)) > 1  # the offset is redrawn every epoch


@pytest.mark.parametrize("make", [
    lambda vids: samples.dense_windows(vids, {"window": 16, "num_queries": 2}, ignore_index=21, seed=7),
    lambda vids: samples.strided_windows(vids, {"window": 16, "stride": 3}, ignore_index=21, seed=7),
    lambda vids: samples.lstr_memory_windows(vids, {"work_memory": 8, "long_memory": 16, "long_stride": 4},
                                     ignore_index=21, seed=7),
])
def test_the_index_depends_on_seed_and_epoch_only(thumos_val_labels, make):
    """Same seed and epoch, same items (every process and resumed run); another epoch or seed, others."""
    vids = videos_from_labels(thumos_val_labels, n=4, max_len=300)
    a, b = make(vids), make(vids)
    a.set_epoch(3)
    b.set_epoch(1)
    b.set_epoch(3)
    np.testing.assert_array_equal(a.index, b.index)
    assert a.index.dtype == np.int64 and len(a) == len(a.index)
    for k in (0, len(a) // 2, len(a) - 1):
        for key, x in a[k].items():
            assert torch.equal(x, b[k][key]), key
    b.set_epoch(4)
    assert not np.array_equal(a.index, b.index)
    b.seed = 8
    b.set_epoch(3)
    assert not np.array_equal(a.index, b.index)


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
