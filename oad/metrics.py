"""Evaluation metrics of online action detection: the single definition of every number the project reports.

Plain numpy functions over per-chunk arrays, following the protocols of TRN (Xu et al., ICCV 2019), OadTR
(Wang et al., ICCV 2021) and LSTR (Xu et al., NeurIPS 2021); see ``docs/protocol.md``.

* :func:`average_precision` / :func:`perframe_map`: per-frame (per-chunk) AP and mAP, the THUMOS'14 and HDD
  headline number. Identical to ``sklearn.metrics.average_precision_score`` (tied scores form one threshold),
  but all classes are sorted and scored at once with array operations, several times faster than a per-class
  loop over scikit-learn.
* :func:`calibrated_average_precision` / :func:`perframe_mcap`: calibrated AP (TVSeries, mcAP).
* :func:`per_stage_ap`: AP per decile of the action instances (LSTR), how early in an action a detector fires.
* :func:`anticipation_map`: mAP of the future scores of each decoder step (OadTR, TRN).
* :func:`switch_cliffdiving`, :func:`smooth_max`: the optional post-processing of the reference code, OFF by
  default; every report that uses them names them (``evaluate_predictions(...)['postprocess']``).
* :func:`bootstrap_map_difference`: how much a per-frame mAP difference between two models depends on the
  test videos drawn (a paired bootstrap over videos; the leaderboard's interval of a margin over the floor).
* :func:`select_protocol`: which chunks are scored: ``"all"`` (TRN, LSTR) or ``"windows"`` (OadTR reference).
* :func:`evaluate_predictions`: validates a prediction set and returns one JSON-ready report.

Conventions. ``scores`` are ``(N, C)`` per-chunk class scores, ``targets`` ``(N, C)`` one-hot or multi-hot
ground truth; a chunk is a positive of class ``c`` when ``targets[:, c] > 0``. THUMOS'14 has ``C = 22``:
0 Background, 1..20 actions, 21 Ambiguous (``ignore_index``). Chunks whose target is the ignore class are
removed before scoring; background and the ignore class are never scored. Scores are expected to be
probabilities (softmax over the classes), but every metric here is rank-based within one class: any
monotone transform of a class's scores (softmax vs. logits of one column, temperature) leaves that class's
AP unchanged, and classes are never compared with each other, so mixing logit scales across classes does
not change per-class AP either.

Differences from the reference code: the reference computes AP with a Python loop over scikit-learn (same
values, slower); OadTR's distributed evaluation scores raw logits gathered with a padded sampler (duplicated
samples), which cannot happen here since predictions arrive as one dict per session; LSTR's cAP sorts with an
unstable ``np.argsort``, so its tie order is implementation-defined, whereas here ties keep input order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "CLIFFDIVING_INDEX",
    "DIVING_INDEX",
    "POSTPROCESSORS",
    "PROTOCOLS",
    "anticipation_map",
    "average_precision",
    "bootstrap_map_difference",
    "calibrated_average_precision",
    "evaluate_predictions",
    "evaluate_protocols",
    "per_stage_ap",
    "perframe_map",
    "perframe_mcap",
    "select_protocol",
    "smooth_max",
    "switch_cliffdiving",
]

#: THUMOS'14 column of CliffDiving and of Diving (LSTR ``class_names`` order).
CLIFFDIVING_INDEX = 5
DIVING_INDEX = 8
#: Names accepted by ``evaluate_predictions(protocol=...)``.
PROTOCOLS = ("all", "windows")
#: Names accepted by ``evaluate_predictions(postprocess=...)``, applied in the order given.
POSTPROCESSORS = ("switch", "smooth")


# --------------------------------------------------------------------------------------------------------
# Core rank computations (private)
# --------------------------------------------------------------------------------------------------------


def _ap_rows(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Average precision of every row of a ``(K, N)`` problem at once (scikit-learn semantics).

    A block of tied scores is a single threshold, so a positive with score ``s`` counts at the end of its
    tied block: ``precision(s) = TP(>= s) / #{samples >= s}``, and ``AP = mean over positives of
    precision(s)``, which equals scikit-learn's ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds.

    Implementation, with no loop over rows: one ``np.sort`` of all rows at once (values only, cheaper than
    ``argsort`` since the labels are not needed in sorted order; in float32 when that is exact, e.g. for
    network outputs, which halves the sort time); ``#{samples >= s}`` for every positive by a
    binary search vectorised over all positives of all rows (``log2 N`` steps of array ops); ``TP(>= s)``
    from the positives sorted by (row, score). A row without positives gives 0.0, as scikit-learn does.

    Args:
        scores: ``(K, N)`` float scores, finite.
        positives: ``(K, N)`` bool labels.

    Returns:
        ``(K,)`` float64 APs.
    """
    num_rows, n = scores.shape
    if n == 0:
        return np.full(num_rows, np.nan)
    scores = _narrow_float(scores)
    sorted_flat = np.sort(scores, axis=1).ravel()  # (K, N) ascending per row, flattened
    rows, cols = np.nonzero(positives)  # (M,) every positive of every row
    values = scores[rows, cols]
    order = np.lexsort((values, rows))  # by row, then ascending score
    rows, values = rows[order], values[order]
    # Lower bound of each positive's score in its own sorted row: #{samples < s}.
    base = rows * n
    lo = np.zeros(rows.size, dtype=np.int64)
    hi = np.full(rows.size, n, dtype=np.int64)
    for _ in range(n.bit_length()):
        active = lo < hi
        mid = (lo + hi) >> 1
        go_right = active & (sorted_flat[base + np.minimum(mid, n - 1)] < values)
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    num_ge = n - lo  # samples with score >= s (ties included)
    # Positives with score >= s: from the first index of s's tied block among the row's sorted positives.
    m = rows.size
    block_start = np.ones(m, dtype=bool)
    block_start[1:] = (rows[1:] != rows[:-1]) | (values[1:] != values[:-1])
    first_of_block = np.maximum.accumulate(np.where(block_start, np.arange(m), 0))
    num_pos = np.bincount(rows, minlength=num_rows)
    row_end = np.cumsum(num_pos)[rows]
    tp_ge = row_end - first_of_block
    total = np.bincount(rows, weights=tp_ge / num_ge, minlength=num_rows)
    return np.where(num_pos > 0, total / np.maximum(num_pos, 1), 0.0)


def _narrow_float(scores: np.ndarray) -> np.ndarray:
    """``scores`` as float32 when that conversion is exact (same values, so same order and ties), else as is."""
    if scores.dtype == np.float64:
        narrow = scores.astype(np.float32)
        if np.array_equal(narrow, scores):
            return narrow
    return scores


def _take_classes(a: np.ndarray, classes: Sequence[int], keep: np.ndarray | None) -> np.ndarray:
    """``(N, C)`` -> ``(K, N')``: the columns ``classes`` as contiguous rows, only the rows where ``keep``."""
    cols: slice | np.ndarray
    if len(classes) > 1 and np.all(np.diff(classes) == 1):
        cols = slice(classes[0], classes[-1] + 1)  # a slice avoids a gather
    else:
        cols = np.asarray(classes, dtype=np.int64)
    out = a.T[cols]  # (K, N), contiguous when cols is an index array
    if keep is not None:
        out = out[:, keep]
    return np.ascontiguousarray(out)


def _ap_pos_neg(pos_scores: np.ndarray, neg_sorted: np.ndarray) -> float:
    """AP (scikit-learn semantics) from positive scores and the ASCENDING-sorted negative scores.

    For a positive with score ``s``: ``TP = #{positives >= s}``, ``FP = #{negatives >= s}`` (ties grouped,
    as in :func:`_ap_rows`); AP is the mean of ``TP / (TP + FP)`` over positives. Cheap when many small
    positive sets share one negative set (per-stage AP).
    """
    if pos_scores.size == 0:
        return math.nan
    pos_sorted = np.sort(pos_scores)
    tp = pos_sorted.size - np.searchsorted(pos_sorted, pos_sorted, side="left")
    fp = neg_sorted.size - np.searchsorted(neg_sorted, pos_sorted, side="left")
    return float(np.mean(tp / (tp + fp)))


def _cap_rows(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Calibrated average precision of every row of a ``(K, N)`` problem (see :func:`calibrated_average_precision`)."""
    num_rows, n = scores.shape
    if n == 0:
        return np.full(num_rows, np.nan)
    order = np.argsort(-scores, axis=1, kind="stable")  # descending, ties keep input order
    y = np.take_along_axis(positives, order, axis=1)
    del order
    tps = np.cumsum(y, axis=1, dtype=np.int64).astype(np.float64)
    fps = np.arange(1, n + 1, dtype=np.float64) - tps
    num_pos = tps[:, -1:]
    num_neg = n - num_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        w = num_neg / num_pos  # (K, 1)
        # TP / (TP + FP / w); with no negatives FP = 0 everywhere and the calibrated precision is 1.
        cprec = np.where(num_neg > 0, tps / (tps + fps / np.where(num_neg > 0, w, 1.0)), 1.0)
        return np.where(y, cprec, 0.0).sum(axis=1) / num_pos[:, 0]


def _check_pair(scores: np.ndarray, targets: np.ndarray, ndim: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    targets = np.asarray(targets)
    if scores.ndim != ndim or targets.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim}-d scores and targets, got shapes {scores.shape} and {targets.shape}")
    if scores.shape != targets.shape:
        raise ValueError(f"{what}: scores shape {scores.shape} does not match targets shape {targets.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{what}: {int((~np.isfinite(scores)).sum())} scores are NaN or Inf")
    return scores, targets


def _scored_classes(
    num_classes: int, ignore_index: int | None, background_index: int | None, class_ids: Sequence[int] | None
) -> list[int]:
    if class_ids is not None:
        bad = [c for c in class_ids if not 0 <= int(c) < num_classes]
        if bad:
            raise ValueError(f"class_ids {bad} out of range for {num_classes} classes")
        return [int(c) for c in class_ids]
    return [c for c in range(num_classes) if c != ignore_index and c != background_index]


def _valid_rows(targets: np.ndarray, ignore_index: int | None) -> np.ndarray | None:
    """Bool mask of rows to keep (target is not the ignore class), or None when nothing is removed."""
    if ignore_index is None:
        return None
    if not 0 <= ignore_index < targets.shape[1]:
        raise ValueError(f"ignore_index {ignore_index} out of range for {targets.shape[1]} classes")
    return ~(targets[:, ignore_index] > 0)


def _nanmean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


# --------------------------------------------------------------------------------------------------------
# Per-frame AP / mAP
# --------------------------------------------------------------------------------------------------------


def average_precision(scores_1d: np.ndarray, labels_1d: np.ndarray) -> float:
    """Average precision of one class, identical to ``sklearn.metrics.average_precision_score``.

    Definition: sort the samples by descending score; at each DISTINCT score threshold ``n`` (all samples
    with a tied score enter together) precision ``P_n = TP_n / (TP_n + FP_n)`` and recall
    ``R_n = TP_n / #positives``; ``AP = sum_n (R_n - R_{n-1}) P_n``. Equivalently, the mean over positives
    of the precision at the last rank of the positive's tied block. No interpolation.

    Args:
        scores_1d: ``(N,)`` scores of the class, higher = more confident. Rank-based: any monotone transform
            gives the same AP.
        labels_1d: ``(N,)`` ground truth; ``> 0`` is a positive.

    Returns:
        The AP in [0, 1]; 0.0 when there is no positive (scikit-learn's value, with which it warns).

    Raises:
        ValueError: on shape mismatch, empty input, or non-finite scores.
    """
    scores, labels = _check_pair(scores_1d, labels_1d, 1, "average_precision")
    if scores.size == 0:
        raise ValueError("average_precision: empty input")
    return float(_ap_rows(scores[None, :], (labels > 0)[None, :])[0])


def perframe_map(
    scores: np.ndarray,
    targets: np.ndarray,
    ignore_index: int | None = 21,
    background_index: int | None = 0,
    class_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Per-frame (per-chunk) mean average precision: THUMOS'14 / HDD protocol.

    Definition: remove every chunk whose target is ``ignore_index`` (THUMOS Ambiguous; nothing is removed
    when it is None, as for TVSeries and HDD). For each scored class (all but ``background_index`` and
    ``ignore_index``, or ``class_ids``) with at least one positive among the remaining chunks, AP over all
    remaining chunks pooled across videos (:func:`average_precision`, i.e. scikit-learn's definition).
    mAP is the mean of those APs; classes without positives are skipped, not counted as 0.

    All classes are computed together: one ``np.sort`` of the ``(K, N)`` score matrix and array operations
    over all positives, no Python loop over classes (see :func:`_ap_rows`).

    Args:
        scores: ``(N, C)`` per-chunk scores (softmax probabilities; per-class rank is all that matters).
        targets: ``(N, C)`` one-hot / multi-hot targets.
        ignore_index: column of the ignore class, or None.
        background_index: column of the background class (never scored), or None.
        class_ids: classes to score instead of the default set.

    Returns:
        ``{'mAP': float (nan when no class has positives), 'per_class_AP': {class_index: AP}}``.
    """
    scores, targets = _check_pair(scores, targets, 2, "perframe_map")
    keep = _valid_rows(targets, ignore_index)
    if keep is not None and keep.all():
        keep = None
    classes = _scored_classes(scores.shape[1], ignore_index, background_index, class_ids)
    per_class: dict[int, float] = {}
    if classes:
        positives = _take_classes(targets, classes, keep) > 0  # (K, N)
        has_pos = positives.any(axis=1)
        if has_pos.any():
            x = _take_classes(scores, classes, keep)  # (K, N)
            if not has_pos.all():
                x, positives = x[has_pos], positives[has_pos]
            aps = _ap_rows(x, positives)
            per_class = {c: float(a) for c, a in zip(np.asarray(classes)[has_pos].tolist(), aps)}
    if not per_class:
        logger.warning("perframe_map: no scored class has a positive among %d chunks; mAP is nan", len(scores))
    return {"mAP": _nanmean(list(per_class.values())), "per_class_AP": per_class}


def _resampled_ap(scores: np.ndarray, positives: np.ndarray, group: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AP of one class on ``R`` resamples of its groups (videos) at once.

    ``scores``, ``positives``: ``(N,)``; ``group``: ``(N,)`` the group of each sample, in ``0 .. G-1``;
    ``counts``: ``(R, G)`` how many times each group is drawn. Returns ``(R,)``: exactly
    :func:`average_precision` on the data with every group repeated ``counts`` times (the copies of a sample
    tie, so they form one threshold), i.e. ``sum_p w_p TP_w(>= s_p) / N_w(>= s_p) / sum_p w_p`` over the
    positives ``p`` with ``w`` the count of their group; NaN where no drawn group holds a positive (the class
    is skipped in that resample's mean, as in :func:`perframe_map`). The weighted counts are matrix
    products ``counts @ (G, P)`` of per-group counts, so a resample costs ``O(G P)``, not ``O(N)``.
    """
    order = np.argsort(-scores, kind="stable")
    s, pos, grp = scores[order], positives[order], group[order]
    last = np.ones(s.size, dtype=bool)
    last[:-1] = s[1:] != s[:-1]  # the last sample of each tied block
    ends = np.flatnonzero(last)
    pidx = np.flatnonzero(pos)
    upto = ends[np.searchsorted(ends, pidx)]  # each positive's block end: samples with score >= s_p are [0, upto]
    num_groups = counts.shape[1]
    at_or_above = np.zeros((num_groups, pidx.size))  # (G, P) samples of each group with score >= s_p
    pos_at_or_above = np.zeros((num_groups, pidx.size))
    by_group = np.argsort(grp, kind="stable")  # each group's sorted positions, ascending, one after another
    bounds = np.searchsorted(grp[by_group], np.arange(num_groups + 1))
    for g in range(num_groups):
        mine = by_group[bounds[g]:bounds[g + 1]]
        if mine.size:
            at_or_above[g] = np.searchsorted(mine, upto, side="right")
            pos_at_or_above[g] = np.searchsorted(mine[pos[mine]], upto, side="right")
    num_ge = counts @ at_or_above  # (R, P)
    tp_ge = counts @ pos_at_or_above
    wp = counts[:, grp[pidx]]  # (R, P) weight of each positive
    prec = np.divide(tp_ge, num_ge, out=np.zeros_like(tp_ge), where=num_ge > 0)
    den = wp.sum(axis=1)
    return np.divide((wp * prec).sum(axis=1), den, out=np.full(den.shape, np.nan), where=den > 0)


def bootstrap_map_difference(
    runs: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray], Mapping[str, np.ndarray]]],
    ignore_index: int | None = 21,
    background_index: int | None = 0,
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """How sure is ``mAP(A) - mAP(B)`` on these test videos? A paired bootstrap over videos.

    ``runs``: one ``(scores_a, scores_b, targets)`` per training seed, each a dict video -> ``(T, C)`` array
    (the LSTR prediction format), the same videos in every entry. Each resample draws the test videos
    with replacement (one draw shared by the two models and by every seed, so the comparison is paired) and
    computes the per-frame mAP difference of every seed (:func:`perframe_map`'s protocol: ignore rows
    removed, background and ignore never scored, classes without a positive skipped), averaged over the seeds.
    The interval is the percentile interval of those means: it measures how much the difference depends on
    which test videos were drawn, not how much it varies with the training seed (that is what several seeds
    in the point estimate are for).

    Returns:
        ``{'difference': float (on the videos as drawn), 'low', 'high': the percentile interval at
        ``level``, 'level', 'num_resamples', 'num_videos', 'p_not_above': fraction of resamples where the
        difference is <= 0}``.
    """
    if not runs:
        raise ValueError("bootstrap_map_difference: no runs")
    if num_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap_map_difference: need num_resamples >= 1 and 0 < level < 1, got "
                         f"{num_resamples}, {level}")
    names = sorted(runs[0][2])
    for i, (a, b, t) in enumerate(runs):
        for what, d in (("scores_a", a), ("scores_b", b), ("targets", t)):
            if sorted(d) != names:
                raise ValueError(f"bootstrap_map_difference: run {i} {what} holds other videos than run 0's targets")
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names))
                       for _ in range(num_resamples)]).astype(np.float64)  # (R, V) times each video is drawn
    counts = np.concatenate([np.ones((1, len(names))), counts])  # row 0: the videos as drawn
    per_run_full, per_run_boot = [], []
    for a, b, t in runs:
        video_of = np.repeat(np.arange(len(names)), [len(t[n]) for n in names])
        targets = np.concatenate([np.asarray(t[n]) for n in names])
        keep = _valid_rows(targets, ignore_index)
        classes = _scored_classes(targets.shape[1], ignore_index, background_index, None)
        y, vid = (targets, video_of) if keep is None else (targets[keep], video_of[keep])
        positives = [(c, y[:, c] > 0) for c in classes if (y[:, c] > 0).any()]
        if not positives:
            raise ValueError("bootstrap_map_difference: no scored class has a positive")
        diffs = []
        for scores in (a, b):
            x, _ = _check_pair(np.concatenate([np.asarray(scores[n]) for n in names]), targets, 2,
                               "bootstrap_map_difference")
            x = x if keep is None else x[keep]
            aps = [_resampled_ap(x[:, c], pos, vid, counts) for c, pos in positives]  # each (1 + R,)
            diffs.append(np.nanmean(np.stack(aps), axis=0))  # (1 + R,) mAP
        d = diffs[0] - diffs[1]
        per_run_full.append(d[0])
        per_run_boot.append(d[1:])
    boot = np.mean(per_run_boot, axis=0)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"difference": float(np.mean(per_run_full)), "low": float(lo), "high": float(hi), "level": level,
            "num_resamples": int(num_resamples), "num_videos": len(names),
            "p_not_above": float(np.mean(boot <= 0))}


# --------------------------------------------------------------------------------------------------------
# Calibrated AP (TVSeries)
# --------------------------------------------------------------------------------------------------------


def calibrated_average_precision(scores_1d: np.ndarray, labels_1d: np.ndarray) -> float:
    """Calibrated average precision (De Geest et al., ECCV 2016; TVSeries), as LSTR / TRN compute it.

    Definition: with ``w = #negatives / #positives`` of the class, sort the samples by DESCENDING score and
    take, at each rank ``r``, the calibrated precision ``cP_r = TP_r / (TP_r + FP_r / w)``; cAP is the mean
    of ``cP_r`` over the ranks of the positives. It is the precision one would get if the positive/negative
    ratio were 1:1, so it is comparable across classes with different priors.

    Ties: following LSTR's implementation (``np.argsort(-score)``), tied scores are NOT grouped into one
    threshold as in :func:`average_precision`: every sample has its own rank. Ties are broken by input
    order (stable sort), so the result with ties depends on the order of the samples (LSTR's unstable sort
    makes that order implementation-defined; here it is deterministic).
    Without negatives the calibrated precision is 1 everywhere (LSTR adds an epsilon to reach the same value).

    Args:
        scores_1d: ``(N,)`` scores of the class.
        labels_1d: ``(N,)`` ground truth; ``> 0`` is a positive.

    Returns:
        cAP in [0, 1]; nan when there is no positive.

    Raises:
        ValueError: on shape mismatch, empty input, or non-finite scores.
    """
    scores, labels = _check_pair(scores_1d, labels_1d, 1, "calibrated_average_precision")
    if scores.size == 0:
        raise ValueError("calibrated_average_precision: empty input")
    return float(_cap_rows(scores[None, :], (labels > 0)[None, :])[0])


def perframe_mcap(
    scores: np.ndarray,
    targets: np.ndarray,
    ignore_index: int | None = None,
    background_index: int | None = 0,
    class_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Per-frame mean calibrated AP (TVSeries protocol).

    Definition: remove the ``ignore_index`` chunks (none by default: TVSeries has no ignore class), then
    :func:`calibrated_average_precision` of each class 1..C-1 (all but ``background_index`` and
    ``ignore_index``) that has a positive; mcAP is their mean. All classes are sorted at once.

    Args:
        scores: ``(N, C)`` per-chunk scores.
        targets: ``(N, C)`` one-hot / multi-hot targets.
        ignore_index: column of the ignore class, or None.
        background_index: column of the background class, or None.
        class_ids: classes to score instead of the default set.

    Returns:
        ``{'mcAP': float, 'per_class_cAP': {class_index: cAP}}``.
    """
    scores, targets = _check_pair(scores, targets, 2, "perframe_mcap")
    keep = _valid_rows(targets, ignore_index)
    if keep is not None and keep.all():
        keep = None
    classes = _scored_classes(scores.shape[1], ignore_index, background_index, class_ids)
    per_class: dict[int, float] = {}
    if classes:
        positives = _take_classes(targets, classes, keep) > 0  # (K, N)
        has_pos = positives.any(axis=1)
        if has_pos.any():
            caps = _cap_rows(_take_classes(scores, classes, keep)[has_pos], positives[has_pos])
            per_class = {c: float(a) for c, a in zip(np.asarray(classes)[has_pos].tolist(), caps)}
    if not per_class:
        logger.warning("perframe_mcap: no scored class has a positive among %d chunks; mcAP is nan", len(scores))
    return {"mcAP": _nanmean(list(per_class.values())), "per_class_cAP": per_class}


# --------------------------------------------------------------------------------------------------------
# Per-stage AP (LSTR)
# --------------------------------------------------------------------------------------------------------


def _instance_stages(mask: np.ndarray, num_stages: int) -> np.ndarray:
    """Stage (0..num_stages-1) of every chunk of every maximal run of True in ``mask``, -1 elsewhere.

    Chunk ``i`` (0-based) of an instance of ``n`` chunks is in stage ``floor(i * num_stages / n)``: the
    instance is split into ``num_stages`` nearly equal parts; its first chunk is always stage 0 and, when
    ``n < num_stages``, some stages of that instance are empty.
    """
    stages = np.full(mask.shape[0], -1, dtype=np.int64)
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return stages
    lengths = ends - starts
    pos = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # index in instance
    n = np.repeat(lengths, lengths)
    stages[np.repeat(starts, lengths) + pos] = (pos * num_stages) // n
    return stages


def per_stage_ap(
    scores_by_video: Mapping[str, np.ndarray],
    targets_by_video: Mapping[str, np.ndarray],
    ignore_index: int | None = 21,
    num_stages: int = 10,
    background_index: int = 0,
    chunk_indices_by_video: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Per-stage AP (LSTR): how early in an action instance a detector fires.

    Definition: an action instance is a maximal run of consecutive chunks of one class in one video
    (``targets[:, c] > 0``). Chunk ``i`` of an instance of ``n`` chunks falls in stage
    ``floor(i * num_stages / n)`` (deciles for 10 stages; an instance shorter than ``num_stages`` chunks
    leaves some of its stages empty). For stage ``k`` and class ``c``, AP (:func:`average_precision`
    semantics, scores of column ``c``) over the pooled set of all background chunks (background target, no
    action, not ignored) as negatives plus the stage-``k`` chunks of every instance of ``c`` as positives;
    chunks of other actions, other stages and the ignore class are left out. The stage mAP is the mean over
    classes with positives in that stage.

    Args:
        scores_by_video: session -> ``(T, C)`` scores.
        targets_by_video: session -> ``(T, C)`` targets (same sessions).
        ignore_index: ignore class column (never scored, never background), or None.
        num_stages: number of stages per instance.
        background_index: background class column.
        chunk_indices_by_video: optional session -> indices of the chunks that are scored (a protocol from
            :func:`select_protocol`); instances and stages are still defined on the whole video.

    Returns:
        ``{'mAP': [num_stages floats], 'per_class': {class_index: [num_stages floats, nan where empty]}}``.
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    sessions = sorted(scores_by_video)
    if not sessions:
        raise ValueError("per_stage_ap: empty input")
    num_classes = np.asarray(scores_by_video[sessions[0]]).shape[1]
    classes = [c for c in range(num_classes) if c not in (background_index, ignore_index)]
    score_parts, stage_parts, bg_parts = [], [], []
    for name in sessions:
        scores, targets = _check_pair(scores_by_video[name], targets_by_video[name], 2, f"per_stage_ap[{name!r}]")
        if scores.shape[1] != num_classes:
            raise ValueError(f"per_stage_ap: session {name!r} has {scores.shape[1]} classes, expected {num_classes}")
        pos = targets[:, classes] > 0  # (T, K)
        stages = np.stack([_instance_stages(pos[:, i], num_stages) for i in range(len(classes))], axis=1)
        bg = (targets[:, background_index] > 0) & ~pos.any(axis=1)
        if ignore_index is not None:
            bg &= ~(targets[:, ignore_index] > 0)
        if chunk_indices_by_video is not None:
            idx = np.asarray(chunk_indices_by_video[name], dtype=np.int64)
            scores, stages, bg = scores[idx], stages[idx], bg[idx]
        score_parts.append(scores[:, classes])
        stage_parts.append(stages)
        bg_parts.append(bg)
    all_scores = np.concatenate(score_parts)  # (N, K)
    all_stages = np.concatenate(stage_parts)  # (N, K)
    all_bg = np.concatenate(bg_parts)  # (N,)
    per_class: dict[int, list[float]] = {}
    for i, c in enumerate(classes):
        col_stages = all_stages[:, i]
        if not (col_stages >= 0).any():
            continue
        neg_sorted = np.sort(all_scores[all_bg, i])
        per_class[c] = [_ap_pos_neg(all_scores[col_stages == k, i], neg_sorted) for k in range(num_stages)]
    stage_map = [_nanmean([aps[k] for aps in per_class.values()]) for k in range(num_stages)]
    return {"mAP": stage_map, "per_class": per_class}


# --------------------------------------------------------------------------------------------------------
# Anticipation
# --------------------------------------------------------------------------------------------------------


def anticipation_map(
    future_scores_by_video: Mapping[str, np.ndarray],
    targets_by_video: Mapping[str, np.ndarray],
    offset: int = 1,
    ignore_index: int | None = 21,
    background_index: int | None = 0,
    chunk_indices_by_video: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Per-step anticipation mAP of future (decoder) scores.

    Definition: ``future_scores[t, j]`` is the score vector issued at chunk ``t`` for decoder step ``j``
    (0-based). It is compared with the target of chunk ``t + j + offset``:

    * ``offset = 1`` for OadTR, whose first query predicts chunk ``t + 1`` (step j = 0..Q-1 <-> t+1..t+Q);
    * ``offset = 0`` for TRN, whose first decoder step predicts chunk ``t`` itself.

    Pairs whose target chunk is past the end of the video (``t + j + offset >= T``) are dropped; pairs whose
    target is the ignore class are removed; then :func:`perframe_map` over the pairs of all videos, per step.

    Args:
        future_scores_by_video: session -> ``(T, Q, C)`` future scores.
        targets_by_video: session -> ``(T, C)`` targets.
        offset: how many chunks ahead of ``t`` step 0 predicts (>= 0).
        ignore_index: ignore class column, or None.
        background_index: background class column (never scored), or None.
        chunk_indices_by_video: optional session -> indices of the issuing chunks ``t`` to use (a protocol).

    Returns:
        ``{'mAP': [Q floats], 'per_class': {class_index: [Q floats, nan where no positive]}}``.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    sessions = sorted(future_scores_by_video)
    if not sessions:
        raise ValueError("anticipation_map: empty input")
    first = np.asarray(future_scores_by_video[sessions[0]])
    if first.ndim != 3:
        raise ValueError(f"anticipation_map: future scores must be (T, Q, C), got {first.shape}")
    num_queries, num_classes = first.shape[1], first.shape[2]
    step_scores: list[list[np.ndarray]] = [[] for _ in range(num_queries)]
    step_targets: list[list[np.ndarray]] = [[] for _ in range(num_queries)]
    for name in sessions:
        future = np.asarray(future_scores_by_video[name], dtype=np.float64)
        if name not in targets_by_video:
            raise ValueError(f"anticipation_map: session {name!r} has future scores but no targets")
        targets = np.asarray(targets_by_video[name])
        T = targets.shape[0]
        if future.shape != (T, num_queries, num_classes) or targets.shape != (T, num_classes):
            raise ValueError(
                f"anticipation_map: session {name!r}: future scores {future.shape} do not match targets "
                f"{targets.shape} (expected ({T}, {num_queries}, {num_classes}))"
            )
        if not np.isfinite(future).all():
            bad = int((~np.isfinite(future)).sum())
            raise ValueError(f"anticipation_map: session {name!r} has {bad} NaN/Inf scores")
        issue = np.arange(T) if chunk_indices_by_video is None else np.asarray(chunk_indices_by_video[name], np.int64)
        for j in range(num_queries):
            t = issue[issue + j + offset < T]
            step_scores[j].append(future[t, j])
            step_targets[j].append(targets[t + j + offset])
    results = []
    for j in range(num_queries):
        scores = np.concatenate(step_scores[j])
        targets = np.concatenate(step_targets[j])
        results.append(perframe_map(scores, targets, ignore_index=ignore_index, background_index=background_index))
    classes = sorted({c for r in results for c in r["per_class_AP"]})
    per_class = {c: [r["per_class_AP"].get(c, math.nan) for r in results] for c in classes}
    return {"mAP": [r["mAP"] for r in results], "per_class": per_class}


# --------------------------------------------------------------------------------------------------------
# Optional post-processing (OFF by default)
# --------------------------------------------------------------------------------------------------------


def switch_cliffdiving(scores: np.ndarray) -> np.ndarray:
    """THUMOS'14 only: count CliffDiving as Diving (reference ``switch`` post-processing, off by default).

    Where ``score[:, 5] (CliffDiving) > score[:, 8] (Diving)`` set ``score[:, 8] = score[:, 5]``, i.e.
    ``score[:, 8] = max(score[:, 5], score[:, 8])``. Online (per chunk), but it uses the THUMOS annotation
    quirk that every CliffDiving instance is also a Diving instance; reports that use it must say so.

    Args:
        scores: ``(N, C)`` THUMOS scores (C >= 9).

    Returns:
        A new ``(N, C)`` array; the input is not modified.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    if scores.ndim != 2 or scores.shape[1] <= DIVING_INDEX:
        raise ValueError(f"switch_cliffdiving expects THUMOS (N, C>=9) scores, got shape {scores.shape}")
    scores[:, DIVING_INDEX] = np.maximum(scores[:, DIVING_INDEX], scores[:, CLIFFDIVING_INDEX])
    return scores


def smooth_max(scores_by_video: Mapping[str, np.ndarray], radius: int = 2) -> dict[str, np.ndarray]:
    """Temporal max filter per video (reference ``smooth`` post-processing, off by default).

    ``out[t] = max(scores[t - radius .. t + radius])`` per class, the window clipped at the video ends
    (a 5-chunk max for ``radius = 2``).

    NOTE: this looks ``radius`` chunks into the FUTURE, so it is not online; numbers computed with it are
    not online action detection results and must be reported as such.

    Args:
        scores_by_video: session -> ``(T, C)`` scores.
        radius: half width of the window, in chunks.

    Returns:
        session -> smoothed ``(T, C)`` array (new arrays).
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    out: dict[str, np.ndarray] = {}
    for name, scores in scores_by_video.items():
        scores = np.asarray(scores, dtype=np.float64)
        T = scores.shape[0]
        smoothed = scores.copy()
        for shift in range(1, min(radius, max(T - 1, 0)) + 1):
            np.maximum(smoothed[shift:], scores[:-shift], out=smoothed[shift:])  # past neighbour
            np.maximum(smoothed[:-shift], scores[shift:], out=smoothed[:-shift])  # future neighbour
        out[name] = smoothed
    return out


# --------------------------------------------------------------------------------------------------------
# Protocols and the top-level evaluation
# --------------------------------------------------------------------------------------------------------


def select_protocol(num_chunks_T: int, protocol: str = "all", window: int = 64, num_queries: int = 8) -> np.ndarray:
    """Indices of the chunks of one video that a protocol scores.

    * ``"all"`` (TRN, LSTR; the honest one): every chunk ``0..T-1``; early chunks see a short/padded history.
    * ``"windows"`` (OadTR reference): exactly the chunks the reference test loop scores. It takes the
      windows ``[end - L, end)`` for ``end in range(L, T - Q)`` and scores the window's last chunk
      ``end - 1``, so ``t = L - 1 .. T - Q - 2``: ``T - L - Q`` chunks of a video of ``T`` chunks (none
      when ``T <= L + Q``); it skips the first ``L - 1`` and the last ``Q + 1`` chunks. On THUMOS'14 test
      (213 videos, 225,222 chunks, every video longer than 72 chunks) with ``L = 64``, ``Q = 8`` that is
      225,222 - 213 x 72 = 209,886 chunks, before the Ambiguous ones are dropped. The chunk set depends
      on ``L`` and ``Q``, so "windows" figures of models with different windows are not comparable:
      every report names the window, and ``eval.window`` fixes one for all models.

    Args:
        num_chunks_T: number of chunks ``T`` of the video.
        protocol: ``"all"`` or ``"windows"``.
        window: encoder window length ``L`` (``"windows"`` only).
        num_queries: number of decoder queries ``Q`` (``"windows"`` only).

    Returns:
        Sorted int64 chunk indices.
    """
    T = int(num_chunks_T)
    if T < 0:
        raise ValueError(f"num_chunks_T must be >= 0, got {T}")
    if protocol == "all":
        return np.arange(T, dtype=np.int64)
    if protocol == "windows":
        if window < 1 or num_queries < 0:
            raise ValueError(f"windows protocol needs window >= 1 and num_queries >= 0, got {window}, {num_queries}")
        return np.arange(window - 1, max(T - num_queries - 1, window - 1), dtype=np.int64)  # end - 1, end in range(L, T - Q)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def _few(names: Sequence[str], k: int = 5) -> str:
    names = sorted(names)
    more = f" and {len(names) - k} more" if len(names) > k else ""
    return ", ".join(repr(n) for n in names[:k]) + more


def _validate(
    pred_scores: Mapping[str, np.ndarray],
    gt_targets: Mapping[str, np.ndarray],
    class_names: Sequence[str] | None,
    ignore_index: int | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    if not pred_scores or not gt_targets:
        raise ValueError(
            f"empty input: {len(pred_scores)} sessions with scores and {len(gt_targets)} sessions with targets"
        )
    only_pred = set(pred_scores) - set(gt_targets)
    only_gt = set(gt_targets) - set(pred_scores)
    if only_pred or only_gt:
        parts = []
        if only_pred:
            parts.append(f"{len(only_pred)} sessions have scores but no targets ({_few(list(only_pred))})")
        if only_gt:
            parts.append(f"{len(only_gt)} sessions have targets but no scores ({_few(list(only_gt))})")
        raise ValueError("session sets differ: " + "; ".join(parts))
    scores_out: dict[str, np.ndarray] = {}
    targets_out: dict[str, np.ndarray] = {}
    num_classes: int | None = None
    for name in sorted(pred_scores):
        scores = np.asarray(pred_scores[name], dtype=np.float64)
        targets = np.asarray(gt_targets[name], dtype=np.float64)
        if scores.ndim != 2 or targets.ndim != 2:
            raise ValueError(
                f"session {name!r}: scores and targets must be (T, C), got {scores.shape} and {targets.shape}"
            )
        if scores.shape[1] != targets.shape[1]:
            raise ValueError(
                f"session {name!r}: class count mismatch, scores have {scores.shape[1]} columns but targets "
                f"{targets.shape[1]}"
            )
        if scores.shape != targets.shape:
            raise ValueError(f"session {name!r}: scores shape {scores.shape} != targets shape {targets.shape}")
        if num_classes is None:
            num_classes = scores.shape[1]
        elif scores.shape[1] != num_classes:
            raise ValueError(
                f"session {name!r}: class count mismatch, {scores.shape[1]} columns but other sessions have "
                f"{num_classes}"
            )
        bad = int((~np.isfinite(scores)).sum())
        if bad:
            raise ValueError(f"session {name!r}: {bad} scores are NaN or Inf")
        scores_out[name] = scores
        targets_out[name] = targets
    assert num_classes is not None
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class count mismatch: {len(class_names)} class_names for {num_classes} score columns")
    if ignore_index is not None and not 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index {ignore_index} out of range for {num_classes} classes")
    if sum(s.shape[0] for s in scores_out.values()) == 0:
        raise ValueError(f"empty input: all {len(scores_out)} sessions have 0 chunks")
    return scores_out, targets_out, num_classes


def _json_float(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def evaluate_predictions(
    pred_scores: Mapping[str, np.ndarray],
    gt_targets: Mapping[str, np.ndarray],
    metric: str = "AP",
    ignore_index: int | None = 21,
    protocol: str = "all",
    window: int = 64,
    num_queries: int = 8,
    postprocess: Sequence[str] = (),
    future_scores: Mapping[str, np.ndarray] | None = None,
    future_offset: int = 1,
    per_stage: bool = True,
    class_names: Sequence[str] | None = None,
    background_index: int = 0,
) -> dict[str, Any]:
    """Validate a prediction set and compute the report of one evaluation.

    Steps: validate; apply ``postprocess`` in order (``"switch"`` = :func:`switch_cliffdiving`, ``"smooth"``
    = :func:`smooth_max`; none by default, and the report lists those used); pick the chunks of each video
    with :func:`select_protocol`; pool them over videos (sessions in sorted order) and compute
    :func:`perframe_map` (``metric="AP"``) or :func:`perframe_mcap` (``metric="cAP"``); optionally
    :func:`per_stage_ap` (always AP) and, with ``future_scores``, :func:`anticipation_map` on the same
    chunks (post-processing is not applied to future scores).

    Args:
        pred_scores: session -> ``(T, C)`` scores (softmax probabilities).
        gt_targets: session -> ``(T, C)`` targets.
        metric: ``"AP"`` (THUMOS, HDD) or ``"cAP"`` (TVSeries).
        ignore_index: ignore class column (21 for THUMOS), or None (TVSeries, HDD).
        protocol: ``"all"`` or ``"windows"``.
        window: window length for ``"windows"``.
        num_queries: number of future chunks required after a scored chunk for ``"windows"``.
        postprocess: names from :data:`POSTPROCESSORS`.
        future_scores: optional session -> ``(T, Q, C)`` future scores.
        future_offset: see :func:`anticipation_map` (1 for OadTR, 0 for TRN).
        per_stage: whether to compute per-stage AP.
        class_names: optional names of the C classes; per-class results are then keyed by name.
        background_index: background class column.

    Returns:
        A JSON-ready dict (nan written as None): ``metric``, ``mAP`` (AP) or ``mcAP`` (cAP), ``per_class_AP``
        (per-class AP or cAP), ``per_stage`` (``{'mAP': [...], 'per_class': {...}}`` or None),
        ``anticipation`` (only with ``future_scores``), ``protocol`` (plus ``window`` and ``num_queries`` for
        ``"windows"``), ``postprocess`` (list of the post-processing names applied), ``num_chunks_scored``,
        ``num_videos``.

    Raises:
        ValueError: empty input, sessions present in one dict only, shape or class count mismatch, NaN/Inf
            scores, unknown metric / protocol / post-processing.
    """
    if metric not in ("AP", "cAP"):
        raise ValueError(f"unknown metric {metric!r}; expected 'AP' or 'cAP'")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if isinstance(postprocess, str):
        postprocess = (postprocess,)
    unknown = [p for p in postprocess if p not in POSTPROCESSORS]
    if unknown:
        raise ValueError(f"unknown postprocess {unknown}; expected names from {POSTPROCESSORS}")
    scores_by_video, targets_by_video, num_classes = _validate(pred_scores, gt_targets, class_names, ignore_index)
    sessions = sorted(scores_by_video)

    for step in postprocess:
        if step == "switch":
            scores_by_video = {k: switch_cliffdiving(v) for k, v in scores_by_video.items()}
        elif step == "smooth":
            scores_by_video = smooth_max(scores_by_video)
    if postprocess:
        logger.info("evaluate_predictions: post-processing %s applied (not the default)", list(postprocess))

    chunks = {k: select_protocol(len(targets_by_video[k]), protocol, window, num_queries) for k in sessions}
    num_scored = int(sum(len(v) for v in chunks.values()))
    if num_scored == 0:
        raise ValueError(f"protocol {protocol!r} leaves no chunk to score in {len(sessions)} sessions")
    scores = np.concatenate([scores_by_video[k][chunks[k]] for k in sessions])
    targets = np.concatenate([targets_by_video[k][chunks[k]] for k in sessions])

    def key(c: int) -> str | int:
        return class_names[c] if class_names is not None else c

    def per_class_json(d: Mapping[int, Any]) -> dict:
        return {
            key(c): ([_json_float(x) for x in v] if isinstance(v, list) else _json_float(v)) for c, v in d.items()
        }

    report: dict[str, Any] = {"metric": metric}
    if metric == "AP":
        res = perframe_map(scores, targets, ignore_index=ignore_index, background_index=background_index)
        report["mAP"] = _json_float(res["mAP"])
        report["per_class_AP"] = per_class_json(res["per_class_AP"])
    else:
        res = perframe_mcap(scores, targets, ignore_index=ignore_index, background_index=background_index)
        report["mcAP"] = _json_float(res["mcAP"])
        report["per_class_AP"] = per_class_json(res["per_class_cAP"])

    report["per_stage"] = None
    if per_stage:
        stage = per_stage_ap(
            scores_by_video,
            targets_by_video,
            ignore_index=ignore_index,
            background_index=background_index,
            chunk_indices_by_video=chunks,
        )
        report["per_stage"] = {
            "mAP": [_json_float(x) for x in stage["mAP"]],
            "per_class": per_class_json(stage["per_class"]),
        }
    if future_scores is not None:
        missing = set(sessions) - set(future_scores)
        extra = set(future_scores) - set(sessions)
        if missing or extra:
            raise ValueError(
                f"future_scores sessions differ from pred_scores: missing {_few(list(missing))}"
                if missing
                else f"future_scores has sessions without targets: {_few(list(extra))}"
            )
        for k in sessions:
            f = np.asarray(future_scores[k])
            if f.ndim != 3 or f.shape[0] != len(targets_by_video[k]) or f.shape[2] != num_classes:
                raise ValueError(
                    f"session {k!r}: future scores shape {f.shape} does not match (T={len(targets_by_video[k])}, "
                    f"Q, C={num_classes})"
                )
        ant = anticipation_map(
            future_scores,
            targets_by_video,
            offset=future_offset,
            ignore_index=ignore_index,
            background_index=background_index,
            chunk_indices_by_video=chunks,
        )
        report["anticipation"] = {
            "offset": future_offset,
            "mAP": [_json_float(x) for x in ant["mAP"]],
            "per_class": per_class_json(ant["per_class"]),
        }
    report["protocol"] = protocol
    if protocol == "windows":
        report["window"] = window
        report["num_queries"] = num_queries
    report["postprocess"] = list(postprocess)
    report["num_chunks_scored"] = num_scored
    report["num_videos"] = len(sessions)
    return report


def evaluate_protocols(
    pred_scores: Mapping[str, np.ndarray],
    gt_targets: Mapping[str, np.ndarray],
    protocols: Sequence[str] = ("all", "windows"),
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_predictions` under several protocols; the first is the headline.

    A secondary protocol that cannot be computed (e.g. ``"windows"`` when every video is shorter than
    the window) is reported as ``{'protocol': name, 'error': reason}`` instead of failing the whole
    evaluation; the headline protocol's errors are raised.
    """
    reports: dict[str, dict[str, Any]] = {}
    for i, protocol in enumerate(protocols):
        try:
            reports[protocol] = evaluate_predictions(pred_scores, gt_targets, protocol=protocol, **kwargs)
        except ValueError as e:
            if i == 0 or "leaves no chunk" not in str(e):
                raise
            logger.warning("protocol %r not reported: %s", protocol, e)
            reports[protocol] = {"protocol": protocol, "error": str(e)}
    return reports
