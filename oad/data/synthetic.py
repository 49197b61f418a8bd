"""Built-in THUMOS-style synthetic dataset: seeded, deterministic, needs no files.

Used by the demos, the tests and any run without the real features. Each call returns ``list[Video]``
with two streams (``rgb`` then ``flow``) and 22-column one-hot targets in THUMOS'14 order
(0 Background, 1..20 actions, 21 Ambiguous) at 4 chunks/s, like the public releases.

Labels
    A video is a sequence of background stretches, action instances and a few Ambiguous runs, drawn
    from statistics fitted on the real per-chunk labels of the 200 THUMOS'14 validation videos by
    ``datasets/synthetic/fit_stats.py`` (the numbers are pasted below; nothing is read at run time):
    the class set of a video (one class, sometimes a pair; CricketBowling is usually followed at once
    by CricketShot), instances per class (lognormal count), instance lengths (lognormal per class,
    clipped to the observed range), background before/between/after the actions (lognormal, the gap
    scale drawn per video, shorter in videos with many actions), and Ambiguous runs (in ~1/6 of the
    videos, some touching an action). The primary class of a video is drawn in shuffled blocks of 20,
    so every 20 consecutive videos of a split (0-19, 20-39, ...) cover all 20 classes.
    ``length_scale`` < 1 shortens videos by drawing fewer instances (and Ambiguous runs) and a shorter
    lead/tail; action and gap lengths stay realistic, so the background share stays near the real 0.69
    (0.69 at 1, 0.66 at 0.3).

Features (the same for both splits up to the draw; the class directions come from a fixed seed)
    Per stream, chunk ``t`` of a video with class set K is a sum of
      * scene: ``a_scene * sum_{c in K} S[c]``, constant over the whole video: the history says what
        the video is about, but it is also there in the background, so alone it cannot place actions;
      * action: ``a_act * g_i * A[c]`` during instance i of class c (g_i ~ U(0.6, 1.4) per instance),
        and half of it (for the video's lowest class) during Ambiguous runs;
      * pre-action: ``a_pre * r * P[c]`` with r ramping 0 -> 1 over the ``PRE_CHUNKS`` (3 s) before an
        instance of class c starts: anticipation is possible;
      * actionness: ``a_actn * u`` (one class-agnostic direction) during actions, half in Ambiguous;
      * nuisance: a per-video drift correlated over seconds (Gaussian knots every ``DRIFT_CHUNKS`` = 4 s,
        linearly interpolated, not scaled by ``evidence``): it does not average out over a short
        window, a long history does remove it;
      * noise: i.i.d. N(0, 1) per dimension, which dominates a single chunk (all directions are unit
        vectors, so the amplitudes are per-chunk signal-to-noise ratios).
    RGB carries mostly scene and action, flow mostly action, pre-action and actionness (partly
    redundant, as with the two-stream TSN features). ``evidence`` multiplies all signal amplitudes.
    Class identity in a single chunk is weak; the recent past and the long history add up to much more.
    ``datasets/synthetic/check_difficulty.py`` measures it with a logistic regression per chunk (40 train,
    20 test videos, length_scale 0.5, THUMOS per-frame mAP): one chunk 0.28, mean of the last 16
    chunks 0.34 (it blurs the action boundaries), chunk + means of the last 4 and 16 chunks 0.56, that
    plus the mean of the whole history 0.62 (other seeds and sizes within a few points), leaving
    temporal models room above both.

Determinism: video ``i`` of a split depends only on ``(seed, split, i)`` and the arguments, so the first
videos of a larger draw equal a smaller draw; labels do not depend on the feature arguments.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

from oad.data.base import Video

THUMOS_CLASS_NAMES = (
    "Background", "BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving",
    "CricketBowling", "CricketShot", "Diving", "FrisbeeCatch", "GolfSwing", "HammerThrow", "HighJump",
    "JavelinThrow", "LongJump", "PoleVault", "Shotput", "SoccerPenalty", "TennisSwing", "ThrowDiscus",
    "VolleyballSpiking", "Ambiguous",
)  # fmt: skip
NUM_CLASSES = 22
AMBIGUOUS = 21
FPS = 4

# ---- fitted on the 200 THUMOS'14 validation videos by datasets/synthetic/fit_stats.py (chunks) ----
# Per action class 1..20: videos with this class alone (the weights of the class sets, with PAIR_VIDEOS),
# instances per video (lognormal: mu here, sigma pooled below; mu matches the mean count), the most
# instances seen in a video, instance length lognormal (mu, sigma of log) and observed min/max.
# fmt: off
CLASS_TABLE = (
    # solo_videos, count_log_mu, count_max, len_log_mu, len_log_sigma, len_min, len_max
    (10, 0.50,   6, 2.92, 0.36,  9,  41),  # 1 BaseballPitch
    (10, 2.91,  57, 2.28, 0.48,  3,  32),  # 2 BasketballDunk
    (10, 1.62,  15, 2.69, 0.68,  3,  46),  # 3 Billiards
    (10, 0.96,   8, 4.04, 0.63, 14, 591),  # 4 CleanAndJerk
    (10, 2.07,  38, 2.71, 0.54,  2,  58),  # 5 CliffDiving
    ( 4, 1.87,  41, 1.83, 0.62,  1,  67),  # 6 CricketBowling
    ( 3, 1.94,  41, 1.76, 0.57,  2,  75),  # 7 CricketShot
    (10, 2.99, 125, 2.71, 0.51,  3,  88),  # 8 Diving
    ( 9, 1.58,  28, 2.64, 0.77,  3,  84),  # 9 FrisbeeCatch
    (10, 0.50,   5, 3.37, 1.07,  2, 453),  # 10 GolfSwing
    (10, 2.50,  93, 3.54, 0.32,  7,  84),  # 11 HammerThrow
    (10, 2.74,  71, 3.11, 0.46,  5,  89),  # 12 HighJump
    (10, 2.48,  25, 3.36, 0.31, 11,  65),  # 13 JavelinThrow
    (10, 2.19,  41, 3.47, 0.47, 11, 114),  # 14 LongJump
    ( 9, 1.94,  45, 3.60, 0.44, 16, 328),  # 15 PoleVault
    ( 9, 1.47,  21, 3.10, 0.54,  6,  87),  # 16 Shotput
    (10, 1.38,  32, 2.74, 0.42,  5,  41),  # 17 SoccerPenalty
    ( 9, 1.38,  11, 2.28, 0.71,  1,  59),  # 18 TennisSwing
    (10, 1.22,  26, 3.40, 0.76, 11, 490),  # 19 ThrowDiscus
    (10, 2.11,  38, 2.15, 0.70,  2,  94),  # 20 VolleyballSpiking
)
# fmt: on
PAIR_VIDEOS = {(1, 9): 1, (6, 7): 13, (10, 18): 1, (14, 15): 1, (16, 19): 1}  # videos with two classes
COUNT_LOG_SIGMA = 0.97
COUNT_CLIP = 2  # counts are clipped to [1, COUNT_CLIP * count_max]
# In videos with both: P(CricketBowling directly followed by CricketShot), P(bowl alone), P(shot alone).
CHAIN = {(6, 7): (0.67, 0.18, 0.15)}
LEAD = (0.060, 3.85, 1.51, 1191)  # background before the first action: P(empty), log mu, log sigma, max
TAIL = (0.005, 3.95, 1.51, 3131)  # background after the last action
# Gaps between action units: a video's log-gap mean is a + b * log(units) + N(0, s_b) (videos with many
# actions have shorter gaps), and its gaps ~ LN(that mean, s_w) clipped to [1, max]; (a, b, s_b, s_w, max).
GAP = (3.80, -0.375, 0.93, 1.05, 593)
AMBIGUOUS_RUNS = dict(p_video=0.175, runs_mean=2.51, len_log_mu=2.87, len_log_sigma=1.08, len_min=1,
                      len_max=235, p_after=0.10, p_before=0.17)  # p_*: run touches an action end/start
# Facts of the real labels the generator is checked against (tests, fit_stats.py).
VIDEO_LENGTH_QUANTILES = (184, 405, 752, 1142, 2252)  # 10/25/50/75/90 %, chunks
BACKGROUND_SHARE = 0.695
AMBIGUOUS_SHARE = 0.013

# ---- feature design (not fitted; chosen so that temporal context pays, see check_difficulty.py) ----
PROTOTYPE_SEED = 14  # class directions: fixed, shared by all splits and seeds
PRE_CHUNKS = 12  # pre-action ramp length (3 s)
DRIFT_CHUNKS = 16  # spacing of the drift knots (4 s)
GAIN_RANGE = (0.6, 1.4)  # per-instance amplitude factor
# Per-chunk amplitudes in units of the noise SD, per stream (rgb, flow); all but drift scale with
# `evidence`. Tuned with check_difficulty.py (40/20 videos, length_scale 0.5): one chunk gives a linear
# classifier a per-frame mAP near 0.28, causal context of 16 chunks near 0.56.
AMPLITUDES = {
    "scene": (1.2, 0.6),
    "action": (1.2, 1.2),
    "pre": (0.8, 1.6),
    "actionness": (0.8, 1.4),
    "drift": (0.5, 0.4),
}


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def _video_rng(seed: int, split: str, index: int, part: int) -> np.random.Generator:
    return np.random.default_rng([seed, _split_code(split), index, part])


def _lognormal_int(rng: np.random.Generator, mu: float, sigma: float, lo: int, hi: int, size=None):
    return np.clip(np.rint(rng.lognormal(mu, sigma, size)), lo, hi).astype(np.int64)


def _class_set_options(primary: int) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """The class sets that contain ``primary`` and their probabilities (fitted video counts)."""
    sets = [(c,) for c in range(1, 21)] + list(PAIR_VIDEOS)
    weights = [row[0] for row in CLASS_TABLE] + list(PAIR_VIDEOS.values())
    options = [(s, w) for s, w in zip(sets, weights) if primary in s]
    p = np.array([w for _, w in options], dtype=float)
    return [s for s, _ in options], p / p.sum()


def _primary_class(seed: int, split: str, index: int) -> int:
    """Primary classes come in shuffled blocks of 20, so every 20 videos of a split cover all classes
    (small demo splits would otherwise miss some); THUMOS'14 has ~10 videos of every class."""
    block = np.random.default_rng([seed, _split_code(split), index // 20, 2]).permutation(20) + 1
    return int(block[index % 20])


def expected_video_share() -> np.ndarray:
    """Expected fraction of videos containing each class (index 0..21; 0 and 21 left at 0)."""
    share = np.zeros(NUM_CLASSES)
    for primary in range(1, 21):
        for s, w in zip(*_class_set_options(primary)):
            share[list(s)] += w / 20
    return share


def _scaled(rng: np.random.Generator, n: int, length_scale: float, least: int = 1) -> int:
    """``n * length_scale`` rounded at random (keeps the mean), at least ``least``."""
    return max(least, int(np.floor(n * length_scale + rng.random())))


def _video_segments(rng: np.random.Generator, primary: int, length_scale: float) -> tuple[list[int], list[int]]:
    """One video as (labels, lengths) of consecutive segments."""
    sets, p = _class_set_options(primary)
    classes = sets[rng.choice(len(sets), p=p)]
    # Units are instances, or chains of instances with no gap between them, placed in random order.
    # Counts are drawn at full length (they set the gap scale), then thinned by length_scale.
    units: list[list[int]] = []
    full_units = 0
    for c in classes[:1] if classes in CHAIN else classes:
        _, mu, top = CLASS_TABLE[c - 1][:3]
        n = int(_lognormal_int(rng, mu, COUNT_LOG_SIGMA, 1, COUNT_CLIP * top))
        full_units += n
        if classes in CHAIN:
            probs = np.array(CHAIN[classes])
            kinds = rng.choice(3, size=_scaled(rng, n, length_scale), p=probs / probs.sum())
            units.extend([list(classes), [classes[0]], [classes[1]]][k] for k in kinds)
        else:
            units.extend([c] for _ in range(_scaled(rng, n, length_scale)))
    order = rng.permutation(len(units))
    units = [units[i] for i in order]

    def background(spec, scale=1.0) -> int:
        p_empty, mu, sigma, top = spec
        if rng.random() < p_empty:
            return 0
        return max(1, int(np.rint(min(rng.lognormal(mu, sigma), top) * scale)))

    gap_mu = GAP[0] + GAP[1] * np.log(full_units) + rng.normal(0.0, GAP[2])
    labels = [0]
    lengths = [background(LEAD, length_scale)]
    for i, unit in enumerate(units):
        if i:
            labels.append(0)
            lengths.append(int(_lognormal_int(rng, gap_mu, GAP[3], 1, GAP[4])))
        for c in unit:
            _, _, _, mu, sigma, lo, hi = CLASS_TABLE[c - 1]
            labels.append(c)
            lengths.append(int(_lognormal_int(rng, mu, sigma, lo, hi)))
    labels.append(0)
    lengths.append(background(TAIL, length_scale))

    a = AMBIGUOUS_RUNS
    if rng.random() < a["p_video"]:
        for _ in range(_scaled(rng, int(rng.geometric(1.0 / a["runs_mean"])), length_scale, least=0)):
            n = int(_lognormal_int(rng, a["len_log_mu"], a["len_log_sigma"], a["len_min"], a["len_max"]))
            u = rng.random()
            actions = [i for i, c in enumerate(labels) if 1 <= c <= 20]
            if u < a["p_after"] + a["p_before"]:
                i = actions[rng.integers(len(actions))]
                at = i + 1 if u < a["p_after"] else i
                labels.insert(at, AMBIGUOUS)
                lengths.insert(at, n)
            else:  # inside a background stretch, at a uniform position
                bg = [i for i, c in enumerate(labels) if c == 0 and lengths[i] > 0]
                if not bg:
                    continue
                i = bg[rng.integers(len(bg))]
                cut = int(rng.integers(lengths[i] + 1))
                labels[i:i + 1] = [0, AMBIGUOUS, 0]
                lengths[i:i + 1] = [cut, n, lengths[i] - cut]
    return labels, lengths


def _labels(seed: int, split: str, index: int, length_scale: float) -> np.ndarray:
    rng = _video_rng(seed, split, index, 0)
    labels, lengths = _video_segments(rng, _primary_class(seed, split, index), length_scale)
    return np.repeat(np.array(labels, dtype=np.int64), lengths)


def make_synthetic_labels(split: str, num_videos: int, *, seed: int = 0, length_scale: float = 1.0) -> list[np.ndarray]:
    """Per-chunk class labels (int64, values 0..21) of the videos ``make_synthetic_split`` returns."""
    if length_scale <= 0:
        raise ValueError(f"length_scale must be positive, got {length_scale}")
    return [_labels(seed, split, i, length_scale) for i in range(num_videos)]


@lru_cache(maxsize=16)
def class_prototypes(dim: int, stream: int) -> dict[str, np.ndarray]:
    """Fixed unit directions of one stream: ``scene``, ``action``, ``pre`` (22, dim; rows 0 and 21 zero)
    and ``actionness`` (dim,), float32, read-only. Depend only on ``(dim, stream)``, never on the split
    or seed."""
    rng = np.random.default_rng([PROTOTYPE_SEED, dim, stream])

    def unit(n: int) -> np.ndarray:
        v = rng.standard_normal((n, dim))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    out = {}
    for key in ("scene", "action", "pre"):
        m = np.zeros((NUM_CLASSES, dim), dtype=np.float32)
        m[1:21] = unit(20)
        out[key] = m
    out["actionness"] = unit(1)[0]
    for v in out.values():
        v.flags.writeable = False
    return out


def _instance_table(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, class) of the maximal runs of action classes 1..20."""
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, len(labels)]
    cls = labels[starts]
    keep = (cls >= 1) & (cls <= 20)
    return starts[keep], ends[keep], cls[keep]


def _features(labels: np.ndarray, rng: np.random.Generator, dims: tuple[int, ...], evidence: float,
              noise: float = 1.0, noise_ar: float = 0.0, drift: float = 1.0):
    """The streams of one video, ``(T, dim)`` float32 each, from its labels (see the module docstring)."""
    T = len(labels)
    starts, ends, cls = _instance_table(labels)
    classes = np.unique(cls)
    # Shared by the streams: per chunk, the class whose action signal is on (0: none) and its strength.
    gain = rng.uniform(*GAIN_RANGE, size=len(cls))
    in_action = (labels >= 1) & (labels <= 20)
    ambiguous = labels == AMBIGUOUS
    action_class = np.where(in_action, labels, 0)
    action_class[ambiguous] = classes[0] if classes.size else 0
    action_gain = np.zeros(T, dtype=np.float32)
    action_gain[in_action] = np.repeat(gain, ends - starts)  # action chunks in time order
    action_gain[ambiguous] = 0.5
    actionness = (in_action + 0.5 * ambiguous).astype(np.float32)  # (T,)
    pre = np.zeros((T, NUM_CLASSES), dtype=np.float32)
    ramp = np.arange(1, PRE_CHUNKS + 1) / PRE_CHUNKS
    for s, c in zip(starts, cls):
        lo = max(0, s - PRE_CHUNKS)
        pre[lo:s, c] = np.maximum(pre[lo:s, c], ramp[PRE_CHUNKS - (s - lo):])
    scene = np.zeros(NUM_CLASSES, dtype=np.float32)
    scene[classes] = 1.0

    knots = np.arange(0, T + DRIFT_CHUNKS, DRIFT_CHUNKS)
    pos = np.arange(T) / DRIFT_CHUNKS
    i0 = np.floor(pos).astype(np.int64)
    w = (pos - i0).astype(np.float32)[:, None]  # (T, 1) weight of the next knot
    streams = []
    for k, dim in enumerate(dims):
        proto = class_prototypes(dim, k)
        amp = {name: np.float32(evidence * v[k]) for name, v in AMPLITUDES.items() if name != "drift"}
        x = rng.standard_normal((T, dim), dtype=np.float32)  # noise
        if noise_ar:
            x = _ar1(x, noise_ar)
        if noise != 1.0:
            x *= np.float32(noise)
        x += amp["scene"] * (scene @ proto["scene"])  # (dim,) broadcast over T
        x += (amp["action"] * action_gain)[:, None] * proto["action"][action_class]  # (T, dim)
        x += amp["pre"] * (pre @ proto["pre"])  # (T, 22) @ (22, dim) -> (T, dim)
        x += amp["actionness"] * actionness[:, None] * proto["actionness"]
        # Drift: Gaussian knots linearly interpolated (its SD dips between knots; fine for a nuisance).
        kv = rng.standard_normal((len(knots), dim), dtype=np.float32) * np.float32(drift * AMPLITUDES["drift"][k])
        x += (1 - w) * kv[i0] + w * kv[i0 + 1]
        streams.append(x)
    return tuple(streams)


def _ar1(e: np.ndarray, rho: float) -> np.ndarray:
    """Unit-variance AR(1) noise over time from i.i.d. ``e (T, dim)``: ``n_t = rho n_{t-1} + sqrt(1 - rho^2) e_t``,
    ``n_0 = e_0`` (stationary from the start)."""
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"noise_ar must be in [0, 1), got {rho}")
    out = np.empty_like(e)
    out[0] = e[0]
    b = np.float32(np.sqrt(1.0 - rho * rho))
    r = np.float32(rho)
    for t in range(1, len(e)):
        out[t] = r * out[t - 1] + b * e[t]
    return out


@lru_cache(maxsize=16)
def dimension_scales(dim: int, stream: int, spread: float) -> np.ndarray:
    """Fixed per-dimension scales of one stream, lognormal with ``spread`` the SD of their log (read-only)."""
    v = np.exp(spread * np.random.default_rng([PROTOTYPE_SEED, dim, stream, 1]).standard_normal(dim)).astype(np.float32)
    v.flags.writeable = False
    return v


def release_like(streams: tuple[np.ndarray, ...], rng: np.random.Generator, *, dim_scale: float, video_offset: float,
                 shift: float, relu: bool) -> tuple[np.ndarray, ...]:
    """The statistics real feature releases have and unit-variance noise has not: per-dimension scales
    (lognormal, ``dim_scale`` the SD of their log: norms far from 1 per dimension), a per-video offset
    (N(0, ``video_offset``^2) per dimension, the same over the whole video), a constant ``shift`` and,
    with ``relu``, non-negative post-ReLU values. ``x' = max(0, s * x + o_video + shift)``."""
    out = []
    for k, x in enumerate(streams):
        x = x * dimension_scales(x.shape[1], k, dim_scale) if dim_scale else x
        if video_offset:
            x = x + np.float32(video_offset) * rng.standard_normal(x.shape[1], dtype=np.float32)
        if shift:
            x = x + np.float32(shift)
        out.append(np.maximum(x, 0, dtype=np.float32) if relu else x)
    return tuple(out)


def make_synthetic_split(
    split: str,
    num_videos: int,
    *,
    rgb_dim: int = 64,
    flow_dim: int = 32,
    seed: int = 0,
    length_scale: float = 1.0,
    evidence: float = 1.0,
    noise: float = 1.0,
    noise_ar: float = 0.0,
    drift: float = 1.0,
    dim_scale: float = 0.0,
    video_offset: float = 0.0,
    shift: float = 0.0,
    relu: bool = False,
    labels: list[np.ndarray] | None = None,
) -> list[Video]:
    """Draw ``num_videos`` synthetic THUMOS-style videos of one split.

    The defaults are the built-in dataset; the other knobs make datasets that differ from it where
    recipes can break (``tools/prepare_data.py synthetic`` writes them out in the LSTR layout).

    Args:
        split: any name; different names give different videos (e.g. ``train``, ``test``).
        num_videos: how many videos.
        rgb_dim: size of the first stream.
        flow_dim: size of the second stream.
        seed: base seed; the same arguments always give the same videos.
        length_scale: < 1 for shorter videos (fewer instances, shorter lead/tail); 1 matches THUMOS'14.
        evidence: multiplies every signal amplitude (0 gives pure nuisance and noise): how much a chunk tells.
        noise: SD of the per-chunk noise (1: the amplitudes are per-chunk signal-to-noise ratios).
        noise_ar: AR(1) coefficient of that noise over time: 0 is i.i.d. (a window averages it out), 0.9
            is correlated over ~10 chunks (a short window cannot).
        drift: multiplies the slow per-video drift (correlated over seconds; only a long history removes it).
        dim_scale, video_offset, shift, relu: the feature statistics of real releases
            (:func:`release_like`); all off by default.
        labels: per-chunk class labels (int, 0..21) to synthesise features for, e.g. the real THUMOS'14
            labels, instead of drawing them (``num_videos`` and ``length_scale`` then ignored).

    Returns:
        Videos named ``synthetic_<split>_<index:04d>`` with streams ``(rgb (T, rgb_dim), flow
        (T, flow_dim))`` float32 and one-hot targets ``(T, 22)`` float32.
    """
    if labels is None:
        labels = make_synthetic_labels(split, num_videos, seed=seed, length_scale=length_scale)
    eye = np.eye(NUM_CLASSES, dtype=np.float32)
    videos = []
    for i, y in enumerate(labels):
        streams = _features(y, _video_rng(seed, split, i, 1), (rgb_dim, flow_dim), evidence, noise, noise_ar, drift)
        if dim_scale or video_offset or shift or relu:
            streams = release_like(streams, _video_rng(seed, split, i, 3), dim_scale=dim_scale,
                                   video_offset=video_offset, shift=shift, relu=relu)
        videos.append(
            Video(
                name=f"synthetic_{split}_{i:04d}",
                streams=streams,
                targets=eye[y],
                meta={"fps": FPS, "source": "synthetic", "split": split, "seed": seed,
                      "class_names": THUMOS_CLASS_NAMES},
            )
        )
    return videos
