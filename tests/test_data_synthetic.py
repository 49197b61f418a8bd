"""Tests of ``oad/data/synthetic.py``: determinism, shapes, label statistics against the fitted constants,
the feature signals, and that temporal context pays (a linear classifier on one chunk versus on causal
averages). The fitted constants are also checked against the real labels when ../shared is present."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oad.data import synthetic as S
from oad.bench.probe import causal_mean, linear_probe_map
from oad.data.synthetic import THUMOS_CLASS_NAMES, make_synthetic_labels, make_synthetic_split

from tests.conftest import REPO, fixture_file

AMB = 21


def runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal constant runs as (label, start, length)."""
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, len(labels)]
    return [(int(labels[s]), int(s), int(e - s)) for s, e in zip(starts, ends)]


@pytest.fixture(scope="module")
def many_labels() -> list[np.ndarray]:
    return make_synthetic_labels("train", 400, seed=3)


# ---- API, determinism, shapes ----


def test_class_names():
    assert len(THUMOS_CLASS_NAMES) == 22
    assert THUMOS_CLASS_NAMES[0] == "Background" and THUMOS_CLASS_NAMES[21] == "Ambiguous"
    assert THUMOS_CLASS_NAMES[6:8] == ("CricketBowling", "CricketShot")
    assert THUMOS_CLASS_NAMES[20] == "VolleyballSpiking"


def test_class_names_match_lstr_data_info():
    info = json.loads(fixture_file("lstr_data_info.json").read_text())
    assert list(THUMOS_CLASS_NAMES) == info["THUMOS"]["class_names"]


def test_deterministic():
    kw = dict(rgb_dim=16, flow_dim=8, length_scale=0.3)
    a = make_synthetic_split("train", 4, seed=5, **kw)
    b = make_synthetic_split("train", 4, seed=5, **kw)
    for va, vb in zip(a, b):
        assert va.name == vb.name
        np.testing.assert_array_equal(va.targets, vb.targets)
        for sa, sb in zip(va.streams, vb.streams):
            np.testing.assert_array_equal(sa, sb)
    # A smaller draw is a prefix of a larger one.
    c = make_synthetic_split("train", 2, seed=5, **kw)
    np.testing.assert_array_equal(c[1].streams[0], a[1].streams[0])
    # Another seed or split gives other videos.
    d = make_synthetic_split("train", 4, seed=6, **kw)
    e = make_synthetic_split("test", 4, seed=5, **kw)
    for other in (d, e):
        assert any(
            x.num_chunks != y.num_chunks or not np.array_equal(x.targets, y.targets) for x, y in zip(a, other)
        )
        assert not np.allclose(a[0].streams[0][:5], other[0].streams[0][:5])


def test_shapes_dtypes_one_hot():
    videos = make_synthetic_split("val", 5, rgb_dim=24, flow_dim=12, length_scale=0.3)
    assert [v.name for v in videos] == [f"synthetic_val_{i:04d}" for i in range(5)]
    for v in videos:
        T = v.num_chunks
        assert T > 0
        rgb, flow = v.streams
        assert rgb.shape == (T, 24) and flow.shape == (T, 12)
        assert rgb.dtype == flow.dtype == v.targets.dtype == np.float32
        assert v.targets.shape == (T, 22)
        assert set(np.unique(v.targets)) <= {0.0, 1.0}
        np.testing.assert_array_equal(v.targets.sum(1), 1.0)
        assert np.isfinite(rgb).all() and np.isfinite(flow).all()
        assert v.in_dim == 36 and v.meta["fps"] == 4


def test_labels_match_split_and_ignore_feature_args():
    labels = make_synthetic_labels("test", 6, seed=2, length_scale=0.4)
    videos = make_synthetic_split("test", 6, seed=2, length_scale=0.4, rgb_dim=8, flow_dim=4, evidence=2.0)
    for y, v in zip(labels, videos):
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() <= 21
        np.testing.assert_array_equal(y, v.targets.argmax(1))


def test_bad_length_scale():
    with pytest.raises(ValueError):
        make_synthetic_labels("train", 1, length_scale=0.0)


# ---- label statistics against the fitted constants ----


def test_background_share(many_labels):
    share = np.mean(np.concatenate(many_labels) == 0)
    assert abs(share - S.BACKGROUND_SHARE) < 0.025, share
    short = np.concatenate(make_synthetic_labels("train", 300, seed=3, length_scale=0.3))
    assert abs(np.mean(short == 0) - S.BACKGROUND_SHARE) < 0.07


def test_video_lengths(many_labels):
    q = np.percentile([len(y) for y in many_labels], [25, 50, 75])
    real = np.array(S.VIDEO_LENGTH_QUANTILES)[[1, 2, 3]]
    assert np.all(q > 0.7 * real) and np.all(q < 1.4 * real), (q, real)
    short = make_synthetic_labels("train", 400, seed=3, length_scale=0.3)
    ratio = np.mean([len(y) for y in short]) / np.mean([len(y) for y in many_labels])
    assert 0.15 < ratio < 0.45, ratio


def test_class_frequencies(many_labels):
    has = np.array([np.bincount(y, minlength=22) > 0 for y in many_labels])  # (videos, 22)
    expected = S.expected_video_share()
    np.testing.assert_allclose(has[:, 1:21].mean(0), expected[1:21], atol=0.02)
    assert has[:, 1:21].sum(1).max() <= 2  # one class per video, sometimes two
    # Every block of 20 videos covers all classes.
    for b in range(0, 400, 20):
        assert has[b:b + 20, 1:21].any(0).all()
    # CricketBowling usually comes right before CricketShot.
    pairs = sum(1 for y in many_labels for (a, _, _), (b, _, _) in zip(runs(y), runs(y)[1:]) if (a, b) == (6, 7))
    bowls = sum(1 for y in many_labels for c, _, _ in runs(y) if c == 6)
    assert 0.5 < pairs / bowls < 0.9


def test_action_lengths(many_labels):
    lengths = {c: [] for c in range(1, 21)}
    for y in many_labels:
        for c, _, n in runs(y):
            if 1 <= c <= 20:
                lengths[c].append(n)
    for c in range(1, 21):
        _, _, _, mu, _, lo, hi = S.CLASS_TABLE[c - 1]
        x = np.array(lengths[c])
        assert len(x) > 20 and x.min() >= max(1, lo) and x.max() <= hi
        assert 0.75 < np.median(x) / np.exp(mu) < 1.33, (c, np.median(x), np.exp(mu))
    # Shorter videos keep realistic action lengths.
    short = make_synthetic_labels("train", 200, seed=3, length_scale=0.3)
    med_short = np.median([n for y in short for c, _, n in runs(y) if 1 <= c <= 20])
    med_full = np.median([n for y in many_labels for c, _, n in runs(y) if 1 <= c <= 20])
    assert 0.7 < med_short / med_full < 1.4


def test_ambiguous(many_labels):
    with_amb = np.mean([np.any(y == AMB) for y in many_labels])
    assert abs(with_amb - S.AMBIGUOUS_RUNS["p_video"]) < 0.06
    share = np.mean(np.concatenate(many_labels) == AMB)
    assert 0.3 * S.AMBIGUOUS_SHARE < share < 3 * S.AMBIGUOUS_SHARE
    touching = 0
    for y in many_labels:
        r = runs(y)
        for i, (c, _, _) in enumerate(r):
            if c == AMB:
                near = [r[j][0] for j in (i - 1, i + 1) if 0 <= j < len(r)]
                touching += any(1 <= x <= 20 for x in near)
    assert touching > 0


def test_constants_match_real_labels(thumos_val_labels):
    videos = list(thumos_val_labels.values())
    allc = np.concatenate(videos)
    assert abs(np.mean(allc == 0) - S.BACKGROUND_SHARE) < 0.002
    assert abs(np.mean(allc == AMB) - S.AMBIGUOUS_SHARE) < 0.002
    np.testing.assert_allclose(
        np.percentile([len(v) for v in videos], [10, 25, 50, 75, 90]), S.VIDEO_LENGTH_QUANTILES, atol=1
    )
    solo = np.zeros(21, dtype=int)
    for v in videos:
        cs = sorted(set(v.tolist()) - {0, AMB})
        if len(cs) == 1:
            solo[cs[0]] += 1
    assert solo[1:].tolist() == [row[0] for row in S.CLASS_TABLE]
    for c in range(1, 21):
        _, _, _, mu, sigma, lo, hi = S.CLASS_TABLE[c - 1]
        x = np.array([n for v in videos for k, _, n in runs(v) if k == c])
        assert (x.min(), x.max()) == (lo, hi)
        assert abs(np.log(x).mean() - mu) < 0.006 and abs(np.log(x).std() - sigma) < 0.006


# ---- features ----


def _mean_projection(videos, stream, direction, mask_fn):
    vals = [v.streams[stream][mask_fn(v.targets.argmax(1))] @ direction for v in videos]
    return float(np.mean(np.concatenate(vals)))


def test_feature_signals():
    videos = make_synthetic_split("train", 20, length_scale=0.3, seed=1)
    flow = S.class_prototypes(32, 1)
    action = lambda y: (y >= 1) & (y <= 20)  # noqa: E731
    background = lambda y: y == 0  # noqa: E731
    gap = _mean_projection(videos, 1, flow["actionness"], action) - _mean_projection(
        videos, 1, flow["actionness"], background
    )
    assert abs(gap - S.AMPLITUDES["actionness"][1]) < 0.2  # gains average to 1
    # Pre-action: the chunk before every action start carries the upcoming class.
    pre, far = [], []
    for v in videos:
        y = v.targets.argmax(1)
        for c, s, _ in runs(y):
            if 1 <= c <= 20 and s >= 1 and y[s - 1] == 0:
                pre.append(v.streams[1][s - 1] @ flow["pre"][c])
        far.extend(v.streams[1][y == 0] @ flow["pre"][y.max() if y.max() < AMB else 1])
    assert np.mean(pre) - np.mean(far) > 0.5 * S.AMPLITUDES["pre"][1]
    # evidence=0: no signal, only nuisance and noise.
    flat = make_synthetic_split("train", 20, length_scale=0.3, seed=1, evidence=0.0)
    gap0 = _mean_projection(flat, 1, flow["actionness"], action) - _mean_projection(
        flat, 1, flow["actionness"], background
    )
    assert abs(gap0) < 0.1


def test_temporal_context_pays():
    train = make_synthetic_split("train", 20, length_scale=0.3, seed=1)
    test = make_synthetic_split("test", 20, length_scale=0.3, seed=1)
    single = linear_probe_map(train, test, lambda x: x, max_iter=200)
    context = linear_probe_map(train, test, lambda x: np.concatenate([x, causal_mean(x, 4), causal_mean(x, 16)], 1),
                               max_iter=200)
    assert 0.05 < single < 0.35, single
    assert context - single > 0.12, (single, context)
    assert context < 0.9, context  # not saturated


# ---------------------------------------------------------------------------------------------------
# The generator's knobs (robustness datasets) and its LSTR-layout writer
# ---------------------------------------------------------------------------------------------------


def test_knobs_at_their_defaults_are_the_built_in_data():
    plain = make_synthetic_split("train", 3, length_scale=0.3, seed=2)
    explicit = make_synthetic_split("train", 3, length_scale=0.3, seed=2, noise=1.0, noise_ar=0.0, drift=1.0,
                                    dim_scale=0.0, video_offset=0.0, shift=0.0, relu=False)
    for a, b in zip(plain, explicit):
        for sa, sb in zip(a.streams, b.streams):
            assert np.array_equal(sa, sb)


def test_knobs_change_what_they_say():
    base = dict(split="train", num_videos=6, length_scale=0.5, seed=1, evidence=0.0, drift=0.0)  # noise only
    iid = np.concatenate([v.streams[0] for v in make_synthetic_split(**base)])
    ar = make_synthetic_split(**base, noise_ar=0.9)
    lag1 = np.mean([np.mean(v.streams[0][1:] * v.streams[0][:-1]) / np.mean(v.streams[0] ** 2) for v in ar])
    assert abs(lag1 - 0.9) < 0.05 and abs(np.mean(iid[1:] * iid[:-1])) < 0.05
    assert abs(np.concatenate([v.streams[0] for v in ar]).std() - 1) < 0.1  # unit variance kept
    loud = np.concatenate([v.streams[0] for v in make_synthetic_split(**base, noise=2.0)])
    assert abs(loud.std() - 2) < 0.1
    # per-dimension scales far from 1, the same in every video; per-video offsets; post-ReLU values
    scaled = np.concatenate([v.streams[0] for v in make_synthetic_split(**base, dim_scale=1.0)])
    sd = scaled.std(0)
    assert sd.max() / sd.min() > 5 and np.allclose(sd, S.dimension_scales(64, 0, 1.0), rtol=0.2)
    offset = make_synthetic_split(**base, video_offset=2.0)
    means = np.stack([v.streams[0].mean(0) for v in offset])  # (videos, dim)
    assert means.std(0).mean() > 1.0
    relu = make_synthetic_split(**base, relu=True, shift=0.5)
    assert all((s >= 0).all() for v in relu for s in v.streams)
    assert np.mean([np.mean(v.streams[0] == 0) for v in relu]) > 0.2
    # the labels never depend on the feature knobs
    assert all(np.array_equal(a.targets, b.targets) for a, b in zip(make_synthetic_split(**base), relu))
    with pytest.raises(ValueError, match="noise_ar"):
        make_synthetic_split(**base, noise_ar=1.0)


def test_features_for_given_labels():
    labels = [np.array([0] * 20 + [3] * 10 + [0] * 5 + [21] * 2), np.array([0] * 7 + [5] * 30)]
    videos = make_synthetic_split("test", 0, labels=labels)
    assert [v.num_chunks for v in videos] == [37, 37]
    assert np.array_equal(videos[0].targets.argmax(1), labels[0])


def test_written_in_the_lstr_layout_and_read_back(tmp_path):
    from oad.data.prepare import main as prepare
    from oad.data.readers import LSTRSource

    summary = prepare(["synthetic", f"dst={tmp_path}", "num_videos={train: 3, test: 2}", "length_scale=0.3",
                       "seed=4", "relu=true", "shift=0.3", "noise_ar=0.5"])
    assert summary["splits"]["train"]["videos"] == 3
    info = json.loads((tmp_path / "data_info.json").read_text())["THUMOS"]
    assert info["generated_by"]["relu"] is True and info["ignore_index"] == 21 and len(info["test_session_set"]) == 2
    src = LSTRSource(tmp_path, dataset="THUMOS")
    got = src.load("train")
    want = make_synthetic_split("train", 3, length_scale=0.3, seed=4, relu=True, shift=0.3, noise_ar=0.5)
    assert [v.name for v in got] == [v.name for v in want]
    for g, w in zip(got, want):
        assert np.array_equal(g.targets, w.targets)
        for sg, sw in zip(g.streams, w.streams):
            assert np.array_equal(np.asarray(sg), sw)


def test_features_on_the_real_thumos_labels(tmp_path):
    from oad.data.readers import DataError
    from oad.data.sources import SyntheticSource

    src = SyntheticSource({"train": 5, "test": 3}, seed=3, real_labels="datasets/thumos14/thumos14_val_labels.npz")
    train, test = src.load("train"), src.load("test")
    with np.load(REPO / "datasets" / "thumos14" / "thumos14_val_labels.npz") as z:
        real = {k: z[k] for k in z.files}
    names = [v.name for v in train + test]
    assert len(set(names)) == 8 and all(n in real for n in names)  # disjoint splits of real videos
    for v in train + test:
        assert np.array_equal(v.targets.argmax(1), real[v.name])
    assert names != sorted(names)  # shuffled with the seed (the file is ordered by class)
    again = SyntheticSource({"train": 5, "test": 3}, seed=3, real_labels="datasets/thumos14/thumos14_val_labels.npz")
    assert [v.name for v in again.load("train")] == names[:5]
    # stratified (the default): a 20-video split holds every class once, so no test class is unseen in training
    splits = SyntheticSource({"train": 20, "val": 30, "test": 30}, seed=105,
                             real_labels="datasets/thumos14/thumos14_val_labels.npz").real_labels
    primary = {s: [int(np.bincount(y, minlength=22)[1:21].argmax()) + 1 for y in splits[s][1]] for s in splits}
    assert sorted(primary["train"]) == list(range(1, 21))
    assert all(max(np.bincount(primary[s])) <= 2 for s in ("val", "test"))  # 30 videos: 1 or 2 per class
    # a plain shuffle (real_label_split=random) leaves classes out of the same 20 training videos
    shuffled = SyntheticSource({"train": 20, "val": 30, "test": 30}, seed=105, real_label_split="random",
                               real_labels="datasets/thumos14/thumos14_val_labels.npz").real_labels
    assert len({int(np.bincount(y, minlength=22)[1:21].argmax()) for y in shuffled["train"][1]}) < 20
    with pytest.raises(ValueError, match="real_label_split must be"):
        SyntheticSource({"train": 1}, real_label_split="by_name", real_labels="datasets/thumos14/thumos14_val_labels.npz")
    with pytest.raises(DataError, match="200 videos, the splits ask for 201"):
        SyntheticSource({"train": 201}, real_labels="datasets/thumos14/thumos14_val_labels.npz")
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.npz: cannot be read"):
        SyntheticSource({"train": 1}, real_labels=str(tmp_path / "bad.npz"))
