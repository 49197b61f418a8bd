"""Fit the label statistics of the synthetic THUMOS-style generator to the real THUMOS'14 labels.

Run by hand; the package never reads these files. It prints the constants that are pasted into
``oad/data/synthetic.py`` (its "fitted" block), says whether the module still holds them, and compares
real and generated label statistics (length quantiles, background share, class shares, instance
lengths) so the fit can be checked::

    .venv/bin/python datasets/synthetic/fit_stats.py [path/to/thumos14_val_labels.npz]

Input: one int array per session (the 200 THUMOS'14 validation videos, used for training in the
field), per-chunk class at 4 chunks/s: 0 Background, 1..20 actions, 21 Ambiguous.

What is fitted (all lengths in chunks):
- class sets: how many videos contain exactly one action class (per class) and which pairs occur;
- per class: number of instances in a video (lognormal count: pooled SD of log, mean matched per class),
  instance length (lognormal mu/sigma of the run length, clipped to the observed min/max);
- CricketBowling -> CricketShot chaining in videos that have both (the shot directly follows the bowl);
- background: lead (before the first action) and tail (after the last) lengths, with the share of
  videos where they are empty, clipped to the observed maximum, and the gaps between actions as a
  two-level lognormal: a video's mean log gap = a + b log(number of action units) + N(0, s_between),
  gaps ~ LN(that, s_within) clipped to [1, max]; the intercept a is then set so that the expected total
  gap length over the real videos is the real one (the plain fit overshoots through the lognormal tails);
- Ambiguous: share of videos with any, runs per such video (geometric), run length, and where the runs
  sit (right after an action, right before one, or inside a background stretch).
A "run" is a maximal stretch of one label, so back-to-back instances of one class count as one.

Not fitted, chosen in the generator: counts are clipped at twice the most seen (``COUNT_CLIP``; at the
observed maximum the class shares come out too low), and the primary class of a video is drawn in
shuffled blocks of 20 (THUMOS'14 has ~10 videos per class; small demo splits then cover every class).
With these, 2000 generated videos give background 0.70 (real 0.695), length quantiles within ~15 % of
the real ones and per-class chunk shares close to the real ones (printed at the end).
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parents[1] / "thumos14" / "thumos14_val_labels.npz"
ACTIONS = range(1, 21)


def runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal constant runs as (label, start, length)."""
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, len(labels)]
    return [(int(labels[s]), int(s), int(e - s)) for s, e in zip(starts, ends)]


def lognormal_fit(x) -> tuple[float, float]:
    lx = np.log(np.asarray(x, dtype=float))
    return float(lx.mean()), float(lx.std())


def label_stats(videos: list[np.ndarray]) -> dict:
    """Summary statistics used both to fit and to compare real and generated labels."""
    allc = np.concatenate(videos)
    share = np.bincount(allc, minlength=22) / len(allc)
    lengths = np.array([len(v) for v in videos])
    inst = defaultdict(list)
    videos_with = Counter()
    for v in videos:
        rr = runs(v)
        for c, _, n in rr:
            if 1 <= c <= 20:
                inst[c].append(n)
        for c in set(v.tolist()) - {0, 21}:
            videos_with[c] += 1
    return {
        "share": share,
        "lengths": lengths,
        "instances": inst,
        "videos_with": videos_with,
        "amb_videos": float(np.mean([np.any(v == 21) for v in videos])),
    }


def fit(videos: list[np.ndarray]) -> dict:
    n_videos = len(videos)
    solo = Counter()
    pairs = Counter()
    counts = defaultdict(list)
    lengths = defaultdict(list)
    lead, tail, amb_len, amb_runs = [], [], [], []
    amb_after = amb_before = 0
    gap_x, gap_mu, gap_dev, gap_n, gap_total, all_gaps = [], [], [], [], [], []
    chain = Counter()  # in videos with both 6 and 7: 'both' = 6 directly followed by 7
    for v in videos:
        rr = runs(v)
        classes = sorted(set(v.tolist()) - {0, 21})
        if len(classes) == 1:
            solo[classes[0]] += 1
        else:
            pairs[tuple(classes)] += 1
        per_class = Counter(c for c, _, _ in rr if 1 <= c <= 20)
        for c, n in per_class.items():
            counts[c].append(n)
        for c, _, n in rr:
            if 1 <= c <= 20:
                lengths[c].append(n)
        lead.append(rr[0][2] if rr[0][0] == 0 else 0)
        tail.append(rr[-1][2] if rr[-1][0] == 0 else 0)
        gaps = [n for i, (c, _, n) in enumerate(rr) if c == 0 and 0 < i < len(rr) - 1]
        all_gaps.extend(gaps)
        if len(gaps) >= 2:
            lg = np.log(gaps)
            gap_x.append(np.log(len(gaps) + 1))  # log number of action units
            gap_mu.append(lg.mean())
            gap_n.append(len(gaps))
            gap_total.append(sum(gaps))
            gap_dev.extend(lg - lg.mean())
        n_amb = 0
        for i, (c, _, n) in enumerate(rr):
            if c != 21:
                continue
            n_amb += 1
            amb_len.append(n)
            amb_after += i > 0 and 1 <= rr[i - 1][0] <= 20
            amb_before += i + 1 < len(rr) and 1 <= rr[i + 1][0] <= 20
        if n_amb:
            amb_runs.append(n_amb)
        if {6, 7} <= set(classes):
            labels_only = [c for c, _, _ in rr if 1 <= c <= 20 or c == 0]
            i = 0
            while i < len(labels_only):
                c = labels_only[i]
                if c == 6 and i + 1 < len(labels_only) and labels_only[i + 1] == 7:
                    chain["both"] += 1
                    i += 2
                    continue
                if c == 6:
                    chain["first_only"] += 1
                elif c == 7:
                    chain["second_only"] += 1
                i += 1

    # Count lognormal: the SD of log count is pooled over classes (10 videos per class is few); the
    # per-class mu is then set so that the mean count matches (mu = log mean - SD^2 / 2), since the mean
    # decides how many chunks of the class there are.
    dev = []
    for c in ACTIONS:
        lc = np.log(counts[c])
        dev.extend(lc - lc.mean())
    count_sd = float(np.sqrt(np.sum(np.square(dev)) / (len(dev) - len(ACTIONS))))
    count_mu = {c: float(np.log(np.mean(counts[c])) - count_sd**2 / 2) for c in ACTIONS}

    lead, tail = np.array(lead), np.array(tail)
    # Videos with many actions have shorter gaps: log-gap mean of a video = a + b log(units) + N(0, s_b);
    # s_b is the residual SD less the sampling noise of a mean over n gaps.
    within = float(np.sqrt(np.sum(np.square(gap_dev)) / (len(gap_dev) - len(gap_mu))))
    slope, intercept = np.polyfit(gap_x, gap_mu, 1)
    resid = np.array(gap_mu) - (intercept + slope * np.array(gap_x))
    between = float(np.sqrt(max(0.0, resid.var() - np.mean(within**2 / np.array(gap_n)))))
    # The lognormal tails make the mean gap too long with the fitted intercept; set the intercept so that
    # the expected total of gaps over the real videos equals the real total (method of moments).
    spread = np.exp(slope * np.array(gap_x) + (between**2 + within**2) / 2)
    intercept = float(np.log(np.sum(np.array(gap_total)) / np.sum(np.array(gap_n) * spread)))
    n_chain = sum(chain.values())
    return {
        "n_videos": n_videos,
        "solo": solo,
        "pairs": pairs,
        "count_mu": count_mu,
        "count_sd": count_sd,
        "count_max": {c: max(counts[c]) for c in ACTIONS},
        "length": {c: (*lognormal_fit(lengths[c]), min(lengths[c]), max(lengths[c])) for c in ACTIONS},
        "lead": (float(np.mean(lead == 0)), *lognormal_fit(lead[lead > 0]), int(lead.max())),
        "tail": (float(np.mean(tail == 0)), *lognormal_fit(tail[tail > 0]), int(tail.max())),
        "gap": (float(intercept), float(slope), between, within, int(max(all_gaps))),
        "amb_video": len(amb_runs) / n_videos,
        "amb_runs_mean": float(np.mean(amb_runs)),
        "amb_len": (*lognormal_fit(amb_len), min(amb_len), max(amb_len)),
        "amb_after": amb_after / len(amb_len),
        "amb_before": amb_before / len(amb_len),
        "chain": {k: v / n_chain for k, v in chain.items()},
    }


CLASS_NAMES = (
    "BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving", "CricketBowling",
    "CricketShot", "Diving", "FrisbeeCatch", "GolfSwing", "HammerThrow", "HighJump", "JavelinThrow",
    "LongJump", "PoleVault", "Shotput", "SoccerPenalty", "TennisSwing", "ThrowDiscus", "VolleyballSpiking",
)  # fmt: skip  (classes 1..20, THUMOS'14 order; for the comments only)


def constants_block(f: dict, real: dict) -> str:
    """The fitted constants as Python source, in the form ``oad/data/synthetic.py`` holds them."""
    out = ["CLASS_TABLE = (",
           "    # solo_videos, count_log_mu, count_max, len_log_mu, len_log_sigma, len_min, len_max"]
    for c in ACTIONS:
        mu, sd, lo, hi = f["length"][c]
        out.append(f"    ({f['solo'][c]:2d}, {f['count_mu'][c]:.2f}, {f['count_max'][c]:3d}, "
                   f"{mu:.2f}, {sd:.2f}, {lo:2d}, {hi:3d}),  # {c} {CLASS_NAMES[c - 1]}")
    out.append(")")
    out.append(f"PAIR_VIDEOS = {dict(sorted(f['pairs'].items()))}")
    out.append(f"COUNT_LOG_SIGMA = {f['count_sd']:.2f}")
    ch = f["chain"]
    out.append("CHAIN = {(6, 7): (%.2f, %.2f, %.2f)}  # bowl then shot, bowl alone, shot alone"
               % (ch.get("both", 0), ch.get("first_only", 0), ch.get("second_only", 0)))
    out.append("LEAD = (%.3f, %.2f, %.2f, %d)  # P(empty), log mu, log sigma, max" % f["lead"])
    out.append("TAIL = (%.3f, %.2f, %.2f, %d)" % f["tail"])
    out.append("GAP = (%.2f, %.3f, %.2f, %.2f, %d)  # a, b, s_b, s_w, max" % f["gap"])
    out.append("AMBIGUOUS_RUNS = dict(p_video=%.3f, runs_mean=%.2f, len_log_mu=%.2f, len_log_sigma=%.2f, "
               "len_min=%d, len_max=%d, p_after=%.2f, p_before=%.2f)"
               % (f["amb_video"], f["amb_runs_mean"], *f["amb_len"], f["amb_after"], f["amb_before"]))
    q = np.round(np.percentile(real["lengths"], [10, 25, 50, 75, 90])).astype(int)
    out.append(f"VIDEO_LENGTH_QUANTILES = {tuple(q.tolist())}  # 10/25/50/75/90 %")
    out.append("BACKGROUND_SHARE = %.3f" % real["share"][0])
    out.append("AMBIGUOUS_SHARE = %.3f" % real["share"][21])
    return "\n".join(out)


def check_pasted(block: str) -> None:
    """Say whether the constants in oad/data/synthetic.py are the ones just fitted."""
    try:
        from oad.data import synthetic
    except ImportError:
        print("(oad not importable: cannot compare with oad/data/synthetic.py)")
        return
    fitted: dict = {}
    exec(block, fitted)
    stale = [k for k in fitted if not k.startswith("__") and getattr(synthetic, k, None) != fitted[k]]
    print("oad/data/synthetic.py:", "holds these constants" if not stale else f"differs in {stale}")


def print_summary(name: str, s: dict) -> None:
    q = np.percentile(s["lengths"], [10, 25, 50, 75, 90])
    print(f"{name}: videos {len(s['lengths'])}, length mean {s['lengths'].mean():.0f} quantiles "
          f"{np.round(q).astype(int).tolist()}, background {s['share'][0]:.3f}, ambiguous "
          f"{s['share'][21]:.3f} (in {s['amb_videos']:.2f} of videos)")
    print("  class share x1000:", np.round(1000 * s["share"][1:21]).astype(int).tolist())
    med = [int(np.median(s["instances"][c])) if s["instances"][c] else 0 for c in ACTIONS]
    print("  median instance length:", med)


def main(path: Path) -> None:
    data = np.load(path)
    videos = [data[k].astype(np.int64) for k in sorted(data.files)]
    real = label_stats(videos)
    block = constants_block(fit(videos), real)
    print(f"# ---- fitted on {path.name} ({len(videos)} videos); paste into oad/data/synthetic.py ----")
    print(block)
    print()
    check_pasted(block)
    print_summary("real", real)
    try:
        from oad.data.synthetic import make_synthetic_labels
    except ImportError:
        return
    for scale in (1.0, 0.4):
        gen = make_synthetic_labels("train", 2000, seed=0, length_scale=scale)
        print_summary(f"synthetic (length_scale {scale})", label_stats(gen))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
