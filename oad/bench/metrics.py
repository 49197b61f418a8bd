"""Benchmark of ``oad.metrics.perframe_map`` against the reference way (a scikit-learn call per class).

Builds a THUMOS'14-test-sized random problem (225,222 chunks x 22 classes: one-hot targets in runs, about
1/3 action chunks, about 2% Ambiguous; softmax scores with some signal), times both ways (best of 3 each,
Ambiguous removal included in both), checks that every per-class AP agrees to 1e-9, and prints the times,
their ratio and the machine. Scores are float32, as network outputs are; the float64 case (scores that are
not exactly representable in float32) is timed as well.

Run: ``python tools/bench_metrics.py``
"""

from __future__ import annotations

import os
import platform
import time
import warnings

import numpy as np
import sklearn
from sklearn.metrics import average_precision_score

from oad.metrics import perframe_map

NUM_CHUNKS = 225_222  # THUMOS'14 test set, 4 chunks per second
NUM_CLASSES = 22
IGNORE_INDEX = 21
REPEATS = 3


def make_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels in runs (background 2-35 s, actions 1-15 s, short Ambiguous runs) and softmax scores."""
    rng = np.random.default_rng(seed)
    labels = np.empty(NUM_CHUNKS, dtype=np.int64)
    t = 0
    while t < NUM_CHUNKS:
        u = rng.random()
        if u < 0.05:
            c, length = IGNORE_INDEX, rng.integers(2, 30)
        elif u < 0.55:
            c, length = int(rng.integers(1, 21)), rng.integers(4, 60)
        else:
            c, length = 0, rng.integers(8, 140)
        labels[t : t + length] = c
        t += int(length)
    targets = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    logits = rng.normal(size=(NUM_CHUNKS, NUM_CLASSES)) + 3.0 * targets  # (N, C)
    logits[:, IGNORE_INDEX] = -1e9  # the scoring head has no Ambiguous output
    scores = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores = (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)
    return scores, targets


def sklearn_loop(scores: np.ndarray, targets: np.ndarray) -> dict[int, float]:
    """The reference: drop Ambiguous chunks, then one ``average_precision_score`` call per class."""
    keep = targets[:, IGNORE_INDEX] == 0
    scores, targets = scores[keep], targets[keep]
    out = {}
    for c in range(1, IGNORE_INDEX):
        if targets[:, c].any():
            out[c] = float(average_precision_score(targets[:, c], scores[:, c]))
    return out


def best_of(fn, *args) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    warnings.simplefilter("ignore")
    scores32, targets = make_problem()
    # float64 scores that are not exact float32 values (e.g. a softmax computed in float64).
    scores64 = scores32.astype(np.float64) * (1 + 1e-12)
    n_action = int(((targets[:, 1:IGNORE_INDEX]).sum()))
    n_amb = int(targets[:, IGNORE_INDEX].sum())
    print(f"problem: {NUM_CHUNKS} chunks x {NUM_CLASSES} classes, {n_action} action chunks "
          f"({n_action / NUM_CHUNKS:.1%}), {n_amb} Ambiguous ({n_amb / NUM_CHUNKS:.1%}); best of {REPEATS}")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs visible; python {platform.python_version()}, numpy {np.__version__}, "
          f"scikit-learn {sklearn.__version__}")
    for label, scores in (("float32 scores", scores32), ("float64 scores", scores64)):
        t_ours, ours = best_of(perframe_map, scores, targets)
        t_ref, ref = best_of(sklearn_loop, scores, targets)
        assert set(ours["per_class_AP"]) == set(ref), "class sets differ"
        worst = max(abs(ours["per_class_AP"][c] - ref[c]) for c in ref)
        assert worst <= 1e-9, f"AP differs by {worst}"
        print(f"{label}: perframe_map {t_ours:.3f} s | sklearn per-class loop {t_ref:.3f} s | "
              f"ratio {t_ours / t_ref:.2f} | mAP {ours['mAP']:.6f} | max |dAP| {worst:.1e} over {len(ref)} classes")

