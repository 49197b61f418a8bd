"""Tests of ``oad/metrics.py`` and ``oad/plots.py``.

Every metric is compared with an independent computation: scikit-learn's ``average_precision_score`` for
AP, and straightforward pure-Python loops written here for cAP, per-stage AP, anticipation and smoothing.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from oad import metrics as M

C = 22  # THUMOS: 0 Background, 1..20 actions, 21 Ambiguous
AMB = 21


def sk_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(average_precision_score(labels, scores))


def make_video(rng: np.random.Generator, T: int, ambiguous: float = 0.05, signal: float = 0.4, decimals=None):
    """Random one-hot THUMOS-like video: runs of background / actions / Ambiguous, scores with some signal."""
    labels = np.zeros(T, dtype=np.int64)
    t = 0
    while t < T:
        length = int(rng.integers(1, 25))
        u = rng.random()
        c = 0 if u < 0.5 else (AMB if u < 0.5 + ambiguous else int(rng.integers(1, 21)))
        labels[t : t + length] = c
        t += length
    targets = np.eye(C)[labels]
    scores = rng.random((T, C)) + signal * targets
    scores = scores / scores.sum(axis=1, keepdims=True)
    if decimals is not None:
        scores = np.round(scores * 10, decimals)  # coarse values: many ties
    return scores, targets


def make_set(seed: int, num_videos: int = 5, lo: int = 40, hi: int = 200, **kw):
    rng = np.random.default_rng(seed)
    pairs = {f"video_{i:03d}": make_video(rng, int(rng.integers(lo, hi)), **kw) for i in range(num_videos)}
    return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}


# ---------------------------------------------------------------------------------------------------------
# average_precision / perframe_map against scikit-learn
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_matches_sklearn_random_and_ties(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n = int(rng.integers(1, 300))
        labels = (rng.random(n) < rng.random()).astype(float)
        scores = rng.random(n)
        for s in (scores, np.round(scores, 1), np.round(scores * 3) / 3, np.zeros(n)):
            assert M.average_precision(s, labels) == pytest.approx(sk_ap(labels, s), abs=1e-9)


def test_average_precision_edge_cases():
    assert M.average_precision(np.array([0.3]), np.array([1.0])) == pytest.approx(1.0)
    # No positive: scikit-learn's value (0.0).
    assert M.average_precision(np.array([0.3, 0.1]), np.array([0.0, 0.0])) == sk_ap(np.zeros(2), np.array([0.3, 0.1]))
    # All tied: one threshold, precision = prevalence.
    assert M.average_precision(np.ones(4), np.array([1.0, 0, 0, 0])) == pytest.approx(0.25)
    # Perfect ranking and worst ranking.
    assert M.average_precision(np.array([0.9, 0.8, 0.1]), np.array([1.0, 1, 0])) == pytest.approx(1.0)
    assert M.average_precision(np.array([0.1, 0.8, 0.9]), np.array([1.0, 0, 0])) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="empty"):
        M.average_precision(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        M.average_precision(np.array([np.nan, 0.2]), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="does not match"):
        M.average_precision(np.array([0.1, 0.2]), np.array([1.0]))


def sk_perframe_map(scores, targets, ignore_index=AMB, background_index=0):
    keep = np.ones(len(targets), bool) if ignore_index is None else targets[:, ignore_index] == 0
    out = {}
    for c in range(targets.shape[1]):
        if c in (ignore_index, background_index) or not targets[keep, c].any():
            continue
        out[c] = sk_ap(targets[keep, c], scores[keep, c])
    return out


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_perframe_map_matches_sklearn(decimals):
    scores_by, targets_by = make_set(11, num_videos=8, decimals=decimals)
    scores = np.concatenate(list(scores_by.values()))
    targets = np.concatenate(list(targets_by.values()))
    res = M.perframe_map(scores, targets)
    ref = sk_perframe_map(scores, targets)
    assert set(res["per_class_AP"]) == set(ref)
    for c in ref:
        assert res["per_class_AP"][c] == pytest.approx(ref[c], abs=1e-9)
    assert res["mAP"] == pytest.approx(np.mean(list(ref.values())), abs=1e-9)
    assert 0 not in res["per_class_AP"] and AMB not in res["per_class_AP"]


def test_perframe_map_float32_scores_same_as_float64():
    scores_by, targets_by = make_set(5, num_videos=4)
    scores = np.concatenate(list(scores_by.values())).astype(np.float32)
    targets = np.concatenate(list(targets_by.values()))
    r32 = M.perframe_map(scores, targets)
    r64 = M.perframe_map(scores.astype(np.float64), targets)
    ref = sk_perframe_map(scores, targets)
    for c in ref:
        assert r32["per_class_AP"][c] == pytest.approx(ref[c], abs=1e-9)
        assert r64["per_class_AP"][c] == pytest.approx(ref[c], abs=1e-9)


def test_perframe_map_skips_class_without_positives_and_removes_ambiguous():
    rng = np.random.default_rng(3)
    labels = rng.choice([0, 1, 2, 4, AMB], size=300)
    labels[:5] = [1, 2, 4, 0, AMB]
    targets = np.eye(C)[labels]
    scores = rng.random((300, C))
    res = M.perframe_map(scores, targets)
    assert sorted(res["per_class_AP"]) == [1, 2, 4]  # 3 and 5..20 have no positives: skipped, not 0
    keep = labels != AMB
    assert res["per_class_AP"][2] == pytest.approx(sk_ap(labels[keep] == 2, scores[keep, 2]), abs=1e-9)
    # Making the Ambiguous chunks' class-2 score huge must not change anything: they are removed.
    scores2 = scores.copy()
    scores2[labels == AMB, 2] = 10.0
    assert M.perframe_map(scores2, targets)["per_class_AP"][2] == pytest.approx(res["per_class_AP"][2], abs=1e-12)
    # ...unless nothing is removed (TVSeries / HDD convention): then they are negatives ranked first.
    res_none = M.perframe_map(scores2, targets, ignore_index=None)
    assert res_none["per_class_AP"][2] == pytest.approx(sk_ap(labels == 2, scores2[:, 2]), abs=1e-9)
    assert res_none["per_class_AP"][2] < res["per_class_AP"][2]
    assert AMB in res_none["per_class_AP"]  # with no ignore class, column 21 is an ordinary class


def test_perframe_map_no_positive_anywhere_is_nan():
    targets = np.zeros((10, C))
    targets[:, 0] = 1
    res = M.perframe_map(np.random.default_rng(0).random((10, C)), targets)
    assert res["per_class_AP"] == {} and math.isnan(res["mAP"])


def test_perframe_map_class_ids():
    scores_by, targets_by = make_set(2, num_videos=3)
    scores = np.concatenate(list(scores_by.values()))
    targets = np.concatenate(list(targets_by.values()))
    full = M.perframe_map(scores, targets)
    some = [c for c in (3, 7, 1) if c in full["per_class_AP"]]
    sub = M.perframe_map(scores, targets, class_ids=some)
    assert sub["per_class_AP"] == {c: full["per_class_AP"][c] for c in some}


# ---------------------------------------------------------------------------------------------------------
# calibrated AP against a pure-Python loop
# ---------------------------------------------------------------------------------------------------------


def loop_cap(scores, labels):
    """cAP as LSTR defines it: descending score, ties in input order, cP at each positive's own rank."""
    scores = [float(s) for s in scores]
    labels = [bool(x > 0) for x in labels]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable
    num_pos = sum(labels)
    num_neg = len(labels) - num_pos
    if num_pos == 0:
        return math.nan
    w = num_neg / num_pos
    tp = fp = 0
    total = 0.0
    for i in order:
        if labels[i]:
            tp += 1
            total += 1.0 if num_neg == 0 else tp / (tp + fp / w)
        else:
            fp += 1
    return total / num_pos


@pytest.mark.parametrize("seed", range(4))
def test_calibrated_ap_matches_loop(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(30):
        n = int(rng.integers(1, 200))
        labels = (rng.random(n) < rng.random()).astype(float)
        if not labels.any():
            labels[0] = 1
        scores = rng.random(n)
        for s in (scores, np.round(scores, 1)):
            assert M.calibrated_average_precision(s, labels) == pytest.approx(loop_cap(s, labels), abs=1e-12)


def test_calibrated_ap_semantics():
    # Ties are not grouped: with equal scores the input order decides (documented LSTR semantics).
    assert M.calibrated_average_precision(np.ones(2), np.array([1.0, 0.0])) == pytest.approx(1.0)
    assert M.calibrated_average_precision(np.ones(2), np.array([0.0, 1.0])) == pytest.approx(0.5)
    # w = 3 negatives / 1 positive; positive at rank 2 after one negative: 1 / (1 + 1/3) = 0.75.
    cap = M.calibrated_average_precision(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0.0, 1, 0, 0]))
    assert cap == pytest.approx(0.75)
    assert M.calibrated_average_precision(np.array([0.2, 0.5]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert math.isnan(M.calibrated_average_precision(np.array([0.2, 0.5]), np.array([0.0, 0.0])))


def test_perframe_mcap_matches_loop():
    scores_by, targets_by = make_set(21, num_videos=5, ambiguous=0.0, decimals=1)
    scores = np.concatenate(list(scores_by.values()))
    targets = np.concatenate(list(targets_by.values()))
    res = M.perframe_mcap(scores, targets)  # ignore_index None by default (TVSeries)
    ref = {c: loop_cap(scores[:, c], targets[:, c]) for c in range(1, C) if targets[:, c].any()}
    assert set(res["per_class_cAP"]) == set(ref)
    for c in ref:
        assert res["per_class_cAP"][c] == pytest.approx(ref[c], abs=1e-12)
    assert res["mcAP"] == pytest.approx(np.mean(list(ref.values())), abs=1e-12)


# ---------------------------------------------------------------------------------------------------------
# per-stage AP against a pure-Python loop
# ---------------------------------------------------------------------------------------------------------


def loop_per_stage(scores_by, targets_by, num_stages=10, ignore_index=AMB):
    pos = {}  # (class, stage) -> list of scores of positives
    neg = {c: [] for c in range(C)}  # class -> scores of background chunks
    for name in sorted(scores_by):
        scores, targets = scores_by[name], targets_by[name]
        labels = [int(np.argmax(row)) for row in targets]
        T = len(labels)
        for t in range(T):
            if labels[t] == 0:
                for c in range(C):
                    neg[c].append(scores[t, c])
        t = 0
        while t < T:
            c = labels[t]
            end = t
            while end < T and labels[end] == c:
                end += 1
            if c not in (0, ignore_index):
                n = end - t
                for i in range(n):
                    k = math.floor(i * num_stages / n)
                    pos.setdefault((c, k), []).append(scores[t + i, c])
            t = end
    per_class = {}
    for c in sorted({c for c, _ in pos}):
        aps = []
        for k in range(num_stages):
            p = pos.get((c, k), [])
            if not p:
                aps.append(math.nan)
                continue
            y = np.r_[np.ones(len(p)), np.zeros(len(neg[c]))]
            s = np.r_[p, neg[c]]
            aps.append(sk_ap(y, s))
        per_class[c] = aps
    return per_class


@pytest.mark.parametrize("decimals", [None, 1])
def test_per_stage_ap_matches_loop(decimals):
    scores_by, targets_by = make_set(31, num_videos=6, decimals=decimals)
    res = M.per_stage_ap(scores_by, targets_by)
    ref = loop_per_stage(scores_by, targets_by)
    assert set(res["per_class"]) == set(ref)
    for c in ref:
        np.testing.assert_allclose(res["per_class"][c], ref[c], atol=1e-9, equal_nan=True)
    for k in range(10):
        vals = [ref[c][k] for c in ref if not math.isnan(ref[c][k])]
        assert res["mAP"][k] == pytest.approx(np.mean(vals), abs=1e-9)


def test_per_stage_stage_assignment():
    # One video: background, a 20-chunk instance of class 3 (2 chunks per stage), a 5-chunk instance of
    # class 4 (stages 0, 2, 4, 6, 8), background. Class-3 scores rise with the chunk index (i / 19) and
    # background scores 0.3: chunks 0..5 (stages 0..2) rank below every background chunk, chunks 6.. above.
    labels = np.array([0] * 10 + [3] * 20 + [0] * 5 + [4] * 5 + [0] * 10)
    targets = np.eye(C)[labels]
    scores = np.full((len(labels), C), 0.3)
    scores[10:30, 3] = np.arange(20) / 19
    res = M.per_stage_ap({"v": scores}, {"v": targets})
    ap3 = res["per_class"][3]
    assert [a == pytest.approx(1.0) for a in ap3] == [False] * 3 + [True] * 7
    assert max(ap3[:3]) < 0.2  # 2 positives below 25 negatives
    ap4 = res["per_class"][4]
    assert [not math.isnan(x) for x in ap4] == [True, False] * 5


# ---------------------------------------------------------------------------------------------------------
# anticipation against a pure-Python loop
# ---------------------------------------------------------------------------------------------------------


def loop_anticipation(future_by, targets_by, offset):
    Q = next(iter(future_by.values())).shape[1]
    out = []
    for j in range(Q):
        s_rows, t_rows = [], []
        for name in sorted(future_by):
            T = len(targets_by[name])
            for t in range(T):
                u = t + j + offset
                if u < T and targets_by[name][u, AMB] == 0:
                    s_rows.append(future_by[name][t, j])
                    t_rows.append(targets_by[name][u])
        s, y = np.array(s_rows), np.array(t_rows)
        aps = [sk_ap(y[:, c], s[:, c]) for c in range(1, AMB) if y[:, c].any()]
        out.append(float(np.mean(aps)))
    return out


@pytest.mark.parametrize("offset", [0, 1])
def test_anticipation_matches_loop(offset):
    scores_by, targets_by = make_set(41, num_videos=4, lo=20, hi=80)
    rng = np.random.default_rng(0)
    future_by = {}
    for name, targets in targets_by.items():
        T = len(targets)
        future = rng.random((T, 4, C))
        for j in range(4):  # some signal towards the right future label
            u = np.minimum(np.arange(T) + j + offset, T - 1)
            future[:, j] += 0.5 * targets[u]
        future_by[name] = future
    res = M.anticipation_map(future_by, targets_by, offset=offset)
    ref = loop_anticipation(future_by, targets_by, offset)
    np.testing.assert_allclose(res["mAP"], ref, atol=1e-9)
    other = M.anticipation_map(future_by, targets_by, offset=1 - offset)
    assert not np.allclose(other["mAP"], ref)  # the offset matters


# ---------------------------------------------------------------------------------------------------------
# post-processing and protocols
# ---------------------------------------------------------------------------------------------------------


def test_switch_cliffdiving():
    scores = np.random.default_rng(0).random((50, C))
    out = M.switch_cliffdiving(scores)
    for t in range(50):
        expected = scores[t, 5] if scores[t, 5] > scores[t, 8] else scores[t, 8]
        assert out[t, 8] == expected
    np.testing.assert_array_equal(np.delete(out, 8, axis=1), np.delete(scores, 8, axis=1))
    assert not np.shares_memory(out, scores)


@pytest.mark.parametrize("T", [1, 2, 3, 7, 30])
def test_smooth_max_matches_loop(T):
    scores = np.random.default_rng(T).random((T, 4))
    orig = scores.copy()
    out = M.smooth_max({"v": scores}, radius=2)["v"]
    for t in range(T):
        for c in range(4):
            assert out[t, c] == max(scores[u, c] for u in range(max(0, t - 2), min(T, t + 3)))
    np.testing.assert_array_equal(scores, orig)


def test_select_protocol_windows_rule():
    idx = M.select_protocol(100, "windows", window=64, num_queries=8)
    # The reference loop: end in range(L, T - Q) = 64..91, scoring chunk end - 1 = 63..90.
    np.testing.assert_array_equal(idx, np.array([end - 1 for end in range(64, 100 - 8)]))
    assert len(idx) == 100 - 64 - 8
    np.testing.assert_array_equal(M.select_protocol(100, "all"), np.arange(100))
    assert M.select_protocol(72, "windows", 64, 8).size == 0
    assert M.select_protocol(73, "windows", 64, 8).tolist() == [63]
    with pytest.raises(ValueError, match="unknown protocol"):
        M.select_protocol(10, "sliding")


def test_windows_protocol_is_the_reference_loop_on_thumos_val_labels(thumos_val_labels):
    """The reference OadTR test loop, written out, on the real THUMOS'14 labels: same chunks, same mAP."""
    from sklearn.metrics import average_precision_score

    L, Q, amb = 64, 8, 21
    rng = np.random.default_rng(0)
    scores_by, targets_by, ref_scores, ref_labels, ref_count = {}, {}, [], [], 0
    for name in sorted(thumos_val_labels):
        labels = thumos_val_labels[name].astype(np.int64)
        T = len(labels)
        onehot = np.eye(22, dtype=np.float32)[labels]
        scores = rng.random((T, 22)).astype(np.float32)
        scores_by[name], targets_by[name] = scores, onehot
        for end in range(L, T - Q):  # the reference: windows [end - L, end), the current chunk end - 1
            ref_count += 1
            if labels[end - 1] != amb:
                ref_scores.append(scores[end - 1])
                ref_labels.append(onehot[end - 1])
    ref_scores, ref_labels = np.stack(ref_scores), np.stack(ref_labels)
    aps = [average_precision_score(ref_labels[:, c], ref_scores[:, c]) for c in range(1, 21) if ref_labels[:, c].any()]
    rep = M.evaluate_predictions(scores_by, targets_by, protocol="windows", window=L, num_queries=Q, ignore_index=amb)
    assert rep["num_chunks_scored"] == ref_count  # chunks of the protocol, before Ambiguous ones are removed
    assert ref_count == sum(max(0, len(v) - L - Q) for v in thumos_val_labels.values())
    assert rep["window"] == L and rep["num_queries"] == Q
    assert abs(rep["mAP"] - float(np.mean(aps))) < 1e-9


# ---------------------------------------------------------------------------------------------------------
# evaluate_predictions
# ---------------------------------------------------------------------------------------------------------

NAMES = ["Background"] + [f"Action{i:02d}" for i in range(1, 21)] + ["Ambiguous"]


def test_evaluate_predictions_report():
    scores_by, targets_by = make_set(51, num_videos=5, lo=80, hi=160)
    rep = M.evaluate_predictions(scores_by, targets_by, class_names=NAMES)
    json.dumps(rep, allow_nan=False)  # JSON-ready: no nan, only plain types
    scores = np.concatenate([scores_by[k] for k in sorted(scores_by)])
    targets = np.concatenate([targets_by[k] for k in sorted(scores_by)])
    ref = sk_perframe_map(scores, targets)
    assert rep["mAP"] == pytest.approx(np.mean(list(ref.values())), abs=1e-9)
    assert rep["per_class_AP"] == pytest.approx({NAMES[c]: v for c, v in ref.items()}, abs=1e-9)
    assert rep["metric"] == "AP" and rep["protocol"] == "all" and rep["postprocess"] == []
    assert rep["num_chunks_scored"] == len(scores) and rep["num_videos"] == 5
    assert len(rep["per_stage"]["mAP"]) == 10 and "anticipation" not in rep


def test_evaluate_predictions_windows_postprocess_and_anticipation():
    scores_by, targets_by = make_set(52, num_videos=4, lo=60, hi=120)
    future = {k: np.random.default_rng(1).random((len(v), 3, C)) for k, v in targets_by.items()}
    rep = M.evaluate_predictions(
        scores_by, targets_by, protocol="windows", window=16, num_queries=3, postprocess=("switch", "smooth"),
        future_scores=future,
    )
    json.dumps(rep, allow_nan=False)
    assert rep["postprocess"] == ["switch", "smooth"] and rep["protocol"] == "windows"
    smoothed = M.smooth_max({k: M.switch_cliffdiving(v) for k, v in scores_by.items()})
    sel = {k: np.arange(15, len(v) - 3 - 1) for k, v in targets_by.items()}  # end - 1, end in range(L, T - Q)
    scores = np.concatenate([smoothed[k][sel[k]] for k in sorted(sel)])
    targets = np.concatenate([targets_by[k][sel[k]] for k in sorted(sel)])
    assert rep["num_chunks_scored"] == len(scores)
    assert rep["mAP"] == pytest.approx(np.mean(list(sk_perframe_map(scores, targets).values())), abs=1e-9)
    assert len(rep["anticipation"]["mAP"]) == 3 and rep["anticipation"]["offset"] == 1


def test_evaluate_predictions_cap_metric():
    scores_by, targets_by = make_set(53, num_videos=3, ambiguous=0.0)
    rep = M.evaluate_predictions(scores_by, targets_by, metric="cAP", ignore_index=None, per_stage=False)
    scores = np.concatenate([scores_by[k] for k in sorted(scores_by)])
    targets = np.concatenate([targets_by[k] for k in sorted(scores_by)])
    ref = [loop_cap(scores[:, c], targets[:, c]) for c in range(1, C) if targets[:, c].any()]
    assert rep["mcAP"] == pytest.approx(np.mean(ref), abs=1e-12) and "mAP" not in rep


def test_all_ambiguous_video_and_single_chunk_video_change_nothing():
    scores_by, targets_by = make_set(54, num_videos=3)
    base = M.evaluate_predictions(scores_by, targets_by)
    rng = np.random.default_rng(9)
    s2, t2 = dict(scores_by), dict(targets_by)
    s2["all_ambiguous"] = rng.random((30, C))
    t2["all_ambiguous"] = np.eye(C)[np.full(30, AMB)]
    s2["single_chunk"] = rng.random((1, C)) * 0 + 1e-3  # lowest score everywhere, background label
    t2["single_chunk"] = np.eye(C)[[0]]
    rep = M.evaluate_predictions(s2, t2)
    assert rep["num_videos"] == 5 and rep["num_chunks_scored"] == base["num_chunks_scored"] + 31
    for c, v in base["per_class_AP"].items():
        assert rep["per_class_AP"][c] == pytest.approx(v, abs=1e-12)  # a negative ranked last changes no AP
    only_amb = M.evaluate_predictions({"a": s2["all_ambiguous"]}, {"a": t2["all_ambiguous"]}, per_stage=False)
    assert only_amb["mAP"] is None and only_amb["per_class_AP"] == {}
    one = M.evaluate_predictions({"x": np.eye(C)[[3]] * 0.9}, {"x": np.eye(C)[[3]]}, per_stage=False)
    assert one["per_class_AP"] == {3: 1.0} and one["num_chunks_scored"] == 1


def test_evaluate_predictions_validation_errors():
    scores_by, targets_by = make_set(55, num_videos=3, lo=20, hi=30)
    name = sorted(scores_by)[1]
    with pytest.raises(ValueError, match=rf"session '{name}'.*shape"):
        bad = dict(scores_by)
        bad[name] = bad[name][:-1]
        M.evaluate_predictions(bad, targets_by)
    with pytest.raises(ValueError, match=r"scores but no targets \('extra_1', 'extra_2'\)"):
        M.evaluate_predictions({**scores_by, "extra_1": scores_by[name], "extra_2": scores_by[name]}, targets_by)
    with pytest.raises(ValueError, match=rf"targets but no scores \('{name}'\)"):
        M.evaluate_predictions({k: v for k, v in scores_by.items() if k != name}, targets_by)
    with pytest.raises(ValueError, match=rf"session '{name}': 3 scores are NaN or Inf"):
        bad = {k: v.copy() for k, v in scores_by.items()}
        bad[name][0, :2] = np.nan
        bad[name][1, 0] = np.inf
        M.evaluate_predictions(bad, targets_by)
    msg = rf"session '{name}': class count mismatch, scores have 21 columns but targets 22"
    with pytest.raises(ValueError, match=msg):
        bad = dict(scores_by)
        bad[name] = bad[name][:, :21]
        M.evaluate_predictions(bad, targets_by)
    with pytest.raises(ValueError, match="21 class_names for 22 score columns"):
        M.evaluate_predictions(scores_by, targets_by, class_names=NAMES[:21])
    with pytest.raises(ValueError, match="empty input"):
        M.evaluate_predictions({}, {})
    with pytest.raises(ValueError, match="empty input"):
        M.evaluate_predictions({"a": np.zeros((0, C))}, {"a": np.zeros((0, C))})
    with pytest.raises(ValueError, match="unknown postprocess"):
        M.evaluate_predictions(scores_by, targets_by, postprocess=["median"])
    with pytest.raises(ValueError, match="no chunk to score"):
        M.evaluate_predictions(scores_by, targets_by, protocol="windows", window=64, num_queries=8)


# ---------------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------------


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000


def test_plots_write_png(tmp_path):
    from oad import plots

    scores_by, targets_by = make_set(61, num_videos=1, lo=200, hi=201)
    (name,) = scores_by
    path = plots.plot_timeline(
        scores_by[name], targets_by[name], NAMES, tmp_path / "sub" / "timeline.png", title=name,
        events=[
            {"class_name": "Action03", "start_s": 3.0, "end_s": 7.5},
            {"class_name": "Action07", "start_s": 20, "end_s": 24},
        ],
    )
    _assert_png(path)
    _assert_png(plots.plot_timeline(scores_by[name], targets_by[name], NAMES, tmp_path / "timeline_plain.png"))
    rep = M.evaluate_predictions(scores_by, targets_by, class_names=NAMES, per_stage=False)
    _assert_png(plots.plot_per_class_ap(rep["per_class_AP"], tmp_path / "ap.png", title="per-class AP"))


# --------------------------------------------------------------------------------------------------------
# Paired bootstrap of an mAP difference over videos
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [1, 6])  # 1: many tied scores
def test_resampled_ap_is_the_ap_of_the_repeated_videos(decimals):
    """Drawing a video k times is the same as repeating its chunks k times (copies tie: one threshold)."""
    rng = np.random.default_rng(decimals)
    for _ in range(60):
        n, groups = int(rng.integers(1, 50)), int(rng.integers(1, 7))
        scores = np.round(rng.random(n), decimals)
        positives = rng.random(n) < 0.3
        group = rng.integers(0, groups, n)
        counts = rng.integers(0, 4, (3, groups)).astype(float)
        got = M._resampled_ap(scores, positives, group, counts)
        for r in range(3):
            rep = counts[r][group].astype(int)
            s, p = np.repeat(scores, rep), np.repeat(positives, rep)
            if p.any():
                assert got[r] == pytest.approx(average_precision_score(p, s), abs=1e-12)
            else:
                assert math.isnan(got[r])


def _videos(rng, num, classes=22):
    targets = {}
    for i in range(num):
        t = int(rng.integers(20, 120))
        y = np.zeros((t, classes))
        y[np.arange(t), rng.integers(0, classes, t)] = 1
        targets[f"v{i:03d}"] = y
    return targets


def test_bootstrap_map_difference_on_the_drawn_videos_and_its_interval():
    rng = np.random.default_rng(0)
    targets = _videos(rng, 40)
    good = {k: rng.random(y.shape) + 0.6 * y for k, y in targets.items()}
    weak = {k: rng.random(y.shape) + 0.2 * y for k, y in targets.items()}
    cat = lambda d: np.concatenate([d[k] for k in sorted(d)])  # noqa: E731
    want = M.perframe_map(cat(good), cat(targets))["mAP"] - M.perframe_map(cat(weak), cat(targets))["mAP"]
    out = M.bootstrap_map_difference([(good, weak, targets)], num_resamples=300)
    assert out["difference"] == pytest.approx(want, abs=1e-12)
    assert 0 < out["low"] < want < out["high"] and out["p_not_above"] == 0.0 and out["num_videos"] == 40
    # paired and averaged over seeds: A vs B on one seed and B vs A on the other cancel in every resample
    both = M.bootstrap_map_difference([(good, weak, targets), (weak, good, targets)], num_resamples=50)
    assert both["difference"] == pytest.approx(0, abs=1e-12) and both["low"] == pytest.approx(0, abs=1e-12)
    assert both["high"] == pytest.approx(0, abs=1e-12)
    # the same resamples for the same seed: reproducible; ignore rows removed as in perframe_map
    again = M.bootstrap_map_difference([(good, weak, targets)], num_resamples=300)
    assert again == out
    amb = {k: np.concatenate([y[:, :21], (rng.random((len(y), 1)) < 0.1)], axis=1) for k, y in targets.items()}
    res = M.bootstrap_map_difference([(good, weak, amb)], num_resamples=20, ignore_index=21)
    want = (M.perframe_map(cat(good), cat(amb), ignore_index=21)["mAP"]
            - M.perframe_map(cat(weak), cat(amb), ignore_index=21)["mAP"])
    assert res["difference"] == pytest.approx(want, abs=1e-12)


def test_bootstrap_map_difference_refuses_other_videos():
    rng = np.random.default_rng(1)
    targets = _videos(rng, 5)
    scores = {k: rng.random(y.shape) for k, y in targets.items()}
    fewer = dict(list(scores.items())[:4])
    with pytest.raises(ValueError, match="other videos"):
        M.bootstrap_map_difference([(scores, fewer, targets)])
