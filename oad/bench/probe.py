"""A linear probe of how much temporal context pays on a dataset (used to calibrate the synthetic data).

A multinomial logistic regression (scikit-learn) is trained per chunk on one split and scored on another
with the THUMOS'14 per-frame mAP (:func:`oad.metrics.perframe_map`: Ambiguous chunks removed, classes
1..20 with positives), for a causal input built from the features of chunks ``<= t``
(``datasets/synthetic/check_difficulty.py``; ``tests/test_data_synthetic.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from oad.data.base import Video
from oad.metrics import perframe_map

__all__ = ["causal_mean", "linear_probe_map"]


def causal_mean(x: np.ndarray, k: int | None) -> np.ndarray:
    """Mean of the last ``k`` chunks (all past chunks when ``k`` is None) at every t, ``(T, d)`` float32."""
    c = np.cumsum(x, axis=0, dtype=np.float64)
    t = np.arange(len(x))
    if k is None:
        return (c / (t + 1)[:, None]).astype(np.float32)
    lo = t - k
    prev = np.where(lo[:, None] >= 0, c[np.maximum(lo, 0)], 0.0)
    return ((c - prev) / np.minimum(t + 1, k)[:, None]).astype(np.float32)


def linear_probe_map(train: Sequence[Video], test: Sequence[Video], make_input: Callable[[np.ndarray], np.ndarray],
                     max_iter: int = 300, ignore_index: int = 21) -> float:
    """Per-frame mAP on ``test`` of a logistic regression trained per chunk on ``train``.

    ``make_input`` maps a video's ``(T, D)`` features to the ``(T, F)`` probe inputs (causal ones only, to
    stay online). Training drops the ``ignore_index`` chunks; inputs are standardised on the train split.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr = np.concatenate([make_input(v.features()) for v in train])
    ytr = np.concatenate([v.targets.argmax(1) for v in train])
    xte = np.concatenate([make_input(v.features()) for v in test])
    targets = np.concatenate([v.targets for v in test])
    keep = ytr != ignore_index
    scaler = StandardScaler().fit(xtr[keep])
    clf = LogisticRegression(max_iter=max_iter).fit(scaler.transform(xtr[keep]), ytr[keep])
    proba = np.zeros(targets.shape)
    proba[:, clf.classes_] = clf.predict_proba(scaler.transform(xte))
    return float(perframe_map(proba, targets, ignore_index=ignore_index, background_index=0)["mAP"])
