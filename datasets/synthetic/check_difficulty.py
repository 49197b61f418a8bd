"""How much temporal context pays on the synthetic dataset: a linear baseline check, run by hand.

A multinomial logistic regression (scikit-learn) is trained per chunk on the train split and scored on the
test split with the THUMOS'14 per-frame mAP (Ambiguous chunks removed, AP of classes 1..20 that have
positives, mean), for different causal inputs of chunk t:

- ``single``: the features of chunk t alone;
- ``mean16``: the mean of chunks t-15..t;
- ``multi``: chunk t, the mean of t-3..t and the mean of t-15..t, concatenated;
- ``multi+hist``: ``multi`` plus the mean of all chunks 0..t (the long history that reveals the scene).

All inputs are online (chunks <= t only; the first chunks average what exists). The design goal is a
weak single chunk (mAP ~0.15-0.35) and a clearly better, but not saturated, causal context
(~0.45-0.75), leaving room for neural temporal models above both::

    .venv/bin/python datasets/synthetic/check_difficulty.py [--train 40] [--test 20] [--length-scale 0.5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler

from oad.data.synthetic import AMBIGUOUS, make_synthetic_split


def causal_mean(x: np.ndarray, k: int | None) -> np.ndarray:
    """Mean of the last ``k`` chunks (all past chunks when ``k`` is None) at every t, (T, d)."""
    c = np.cumsum(x, axis=0, dtype=np.float64)
    t = np.arange(len(x))
    if k is None:
        return (c / (t + 1)[:, None]).astype(np.float32)
    lo = t - k
    prev = np.where(lo[:, None] >= 0, c[np.maximum(lo, 0)], 0.0)
    return ((c - prev) / np.minimum(t + 1, k)[:, None]).astype(np.float32)


INPUTS = {
    "single": lambda x: x,
    "mean16": lambda x: causal_mean(x, 16),
    "multi": lambda x: np.concatenate([x, causal_mean(x, 4), causal_mean(x, 16)], axis=1),
    "multi+hist": lambda x: np.concatenate([x, causal_mean(x, 4), causal_mean(x, 16), causal_mean(x, None)], 1),
}


def thumos_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """Per-frame mAP, THUMOS'14 rule: drop Ambiguous chunks, mean AP over classes 1..20 with positives."""
    keep = labels != AMBIGUOUS
    scores, labels = scores[keep], labels[keep]
    aps = [average_precision_score(labels == c, scores[:, c]) for c in range(1, 21) if np.any(labels == c)]
    return float(np.mean(aps))


def evaluate(train, test, make_input, max_iter: int = 300) -> float:
    xtr = np.concatenate([make_input(v.features()) for v in train])
    ytr = np.concatenate([v.targets.argmax(1) for v in train])
    xte = np.concatenate([make_input(v.features()) for v in test])
    yte = np.concatenate([v.targets.argmax(1) for v in test])
    keep = ytr != AMBIGUOUS
    scaler = StandardScaler().fit(xtr[keep])
    clf = LogisticRegression(max_iter=max_iter, C=1.0).fit(scaler.transform(xtr[keep]), ytr[keep])
    proba = np.zeros((len(xte), 22))
    proba[:, clf.classes_] = clf.predict_proba(scaler.transform(xte))
    return thumos_map(proba, yte)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=40)
    p.add_argument("--test", type=int, default=20)
    p.add_argument("--length-scale", type=float, default=0.5)
    p.add_argument("--evidence", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inputs", nargs="+", default=list(INPUTS))
    a = p.parse_args()
    kw = dict(seed=a.seed, length_scale=a.length_scale, evidence=a.evidence)
    t0 = time.time()
    train = make_synthetic_split("train", a.train, **kw)
    test = make_synthetic_split("test", a.test, **kw)
    n_tr = sum(v.num_chunks for v in train)
    n_te = sum(v.num_chunks for v in test)
    print(f"{a.train} train videos ({n_tr} chunks), {a.test} test videos ({n_te} chunks), "
          f"length_scale {a.length_scale}, evidence {a.evidence}, seed {a.seed}: generated in "
          f"{time.time() - t0:.2f} s")
    for name in a.inputs:
        t0 = time.time()
        m = evaluate(train, test, INPUTS[name])
        print(f"  {name:>11s}: per-frame mAP {m:.3f}  ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
