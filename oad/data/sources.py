"""Data sources: where a split's videos come from, plus the dataset facts the evaluation needs.

A source is any object with ``class_names``, ``ignore_index``, ``metric`` ('AP' or 'cAP'), ``fps`` and
``load(split) -> list[Video]``. Readers of the public layouts live in ``oad.data.readers``; the built-in
synthetic data is ``SyntheticSource``. Hydra's ``data.source`` config instantiates one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from oad.data.base import Video


class Source(Protocol):
    class_names: list[str]
    ignore_index: int | None
    metric: str
    fps: float

    def load(self, split: str) -> list[Video]: ...


def _primary_class(labels) -> int:
    """A video's most frequent action class (1..20), 0 for a video without one."""
    import numpy as np

    counts = np.bincount(labels, minlength=22)[1:21]
    return int(counts.argmax()) + 1 if counts.any() else 0


def _real_label_splits(path: str, num_videos: dict[str, int], seed: int,
                       stratify: bool = True) -> dict[str, tuple[list[str], list]]:
    """``{split: (names, labels)}``: the videos of a label file dealt to the splits (disjoint), in the
    order of ``num_videos`` (a clear error naming the file when it is missing, malformed or too small).

    ``stratify`` (default): the videos are grouped by their primary class (:func:`_primary_class`; THUMOS'14
    videos mostly show one action), each group and the class order shuffled with ``seed``, and every split
    takes its videos one class at a time, round-robin, the next split continuing the cycle where the
    previous one stopped: a split of at least as many videos as there are classes holds every class, so a
    test class is never missing from training (with a plain shuffle, 20 training videos of THUMOS'14's 200
    left 6 of the 17 classes of a 30-video test split without a training video: docs/benchmarks.md
    section 11). ``stratify=False``: the videos shuffled with ``seed`` and dealt in order.
    """
    import numpy as np

    from oad.config import REPO
    from oad.data.readers import DataError

    file = Path(path)
    if not file.is_absolute() and not file.exists():
        file = REPO / file
    try:
        with np.load(file) as z:
            videos = {k: np.asarray(z[k]) for k in sorted(z.files)}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot be read as an .npz of per-chunk labels ({e})") from e
    bad = [k for k, v in videos.items() if v.ndim != 1 or v.size == 0 or v.min() < 0 or v.max() > 21]
    if bad:
        raise DataError(f"{file}: expected one 1-d array of class labels 0..21 per video; {bad[:3]} are not")
    need = sum(num_videos.values())
    if need > len(videos):
        raise DataError(f"{file}: {len(videos)} videos, the splits ask for {need} ({num_videos})")
    names = list(videos)
    rng = np.random.default_rng([seed, 7])
    if not stratify:
        order = [names[i] for i in rng.permutation(len(names))]
    else:
        groups: dict[int, list[str]] = {}
        for k in names:
            groups.setdefault(_primary_class(videos[k]), []).append(k)
        queues = [[g[i] for i in rng.permutation(len(g))] for g in (groups[c] for c in sorted(groups))]
        queues = [queues[i] for i in rng.permutation(len(queues))]
        order = []
        while any(queues):  # round-robin over the classes: one video of each class per round
            order += [q.pop(0) for q in queues if q]
    out, at = {}, 0
    for split, n in num_videos.items():
        chosen = order[at:at + n]
        out[split] = (chosen, [videos[k].astype(np.int64) for k in chosen])
        at += n
    return out


class SyntheticSource:
    """The built-in THUMOS-style synthetic dataset (see ``oad.data.synthetic``), nothing to download.

    Args:
        num_videos: videos per split, e.g. ``{'train': 48, 'val': 12, 'test': 24}``.
        rgb_dim, flow_dim: feature sizes of the two streams.
        seed: dataset seed (splits are drawn from it independently).
        length_scale: scales video lengths (shorter videos for quick demos).
        evidence: scales the strength of the class evidence in the features.
        real_labels: an ``.npz`` of per-chunk class labels, one array per video (e.g. the real THUMOS'14
            validation labels shipped in ``datasets/thumos14/thumos14_val_labels.npz``; a relative path is
            read from the working directory, else from the repository): features are synthesised on
            these labels instead of drawn ones, dealt to the splits in the order of ``num_videos`` (disjoint),
            stratified by class (see ``real_label_split``); ``length_scale`` is then ignored.
        real_label_split: ``stratified`` (default: every split takes the classes in turn, so a split of
            at least 20 videos holds every class) or ``random`` (a plain shuffle with ``seed``).
        **knobs: the generator's other knobs (``noise``, ``noise_ar``, ``drift``, ``dim_scale``,
            ``video_offset``, ``shift``, ``relu``: :func:`oad.data.synthetic.make_synthetic_split`); their
            defaults are the built-in dataset.
    """

    ignore_index = 21
    metric = "AP"
    fps = 4.0

    def __init__(
        self,
        num_videos: dict[str, int],
        rgb_dim: int = 64,
        flow_dim: int = 32,
        seed: int = 0,
        length_scale: float = 1.0,
        evidence: float = 1.0,
        real_labels: str | None = None,
        real_label_split: str = "stratified",
        **knobs,
    ):
        import inspect

        from oad.data.synthetic import THUMOS_CLASS_NAMES, make_synthetic_split

        allowed = set(inspect.signature(make_synthetic_split).parameters) - {
            "split", "num_videos", "rgb_dim", "flow_dim", "seed", "length_scale", "evidence", "labels"}
        unknown = sorted(set(knobs) - allowed)
        if unknown:
            raise TypeError(f"synthetic data: unknown options {unknown}; the generator's knobs are {sorted(allowed)}")
        self.knobs = dict(knobs)

        self.num_videos = dict(num_videos)
        self.rgb_dim, self.flow_dim, self.seed = rgb_dim, flow_dim, seed
        self.length_scale, self.evidence = length_scale, evidence
        self.class_names = list(THUMOS_CLASS_NAMES)
        if real_label_split not in ("stratified", "random"):
            raise ValueError(f"real_label_split must be 'stratified' or 'random', got {real_label_split!r}")
        self.real_label_split = real_label_split
        self.real_labels = _real_label_splits(real_labels, self.num_videos, seed,
                                              stratify=real_label_split == "stratified") if real_labels else None

    def load(self, split: str) -> list[Video]:
        from oad.data.synthetic import make_synthetic_split

        if split not in self.num_videos:
            raise KeyError(f"synthetic data has no split {split!r}; splits: {sorted(self.num_videos)}")
        if self.real_labels is not None:
            names, labels = self.real_labels[split]
            videos = make_synthetic_split(split, len(labels), rgb_dim=self.rgb_dim, flow_dim=self.flow_dim,
                                          seed=self.seed, evidence=self.evidence, labels=labels, **self.knobs)
            for v, name in zip(videos, names):
                v.name = name
            return videos
        return make_synthetic_split(
            split,
            self.num_videos[split],
            rgb_dim=self.rgb_dim,
            flow_dim=self.flow_dim,
            seed=self.seed,
            length_scale=self.length_scale,
            evidence=self.evidence,
            **self.knobs,
        )
