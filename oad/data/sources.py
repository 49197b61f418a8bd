"""Data sources: where a split's videos come from, plus the dataset facts the evaluation needs.

A source is any object with ``class_names``, ``ignore_index``, ``metric`` ('AP' or 'cAP'), ``fps`` and
``load(split) -> list[Video]``. Readers of the public layouts live in ``oad.data.readers``; the built-in
synthetic data is ``SyntheticSource``. Hydra's ``data.source`` config instantiates one.
"""

from __future__ import annotations

from typing import Protocol

from oad.data.base import Video


class Source(Protocol):
    class_names: list[str]
    ignore_index: int | None
    metric: str
    fps: float

    def load(self, split: str) -> list[Video]: ...


class SyntheticSource:
    """The built-in THUMOS-style synthetic dataset (see ``oad.data.synthetic``), nothing to download.

    Args:
        num_videos: videos per split, e.g. ``{'train': 48, 'val': 12, 'test': 24}``.
        rgb_dim, flow_dim: feature sizes of the two streams.
        seed: dataset seed (splits are drawn from it independently).
        length_scale: scales video lengths (shorter videos for quick demos).
        evidence: scales the strength of the class evidence in the features.
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

    def load(self, split: str) -> list[Video]:
        from oad.data.synthetic import make_synthetic_split

        if split not in self.num_videos:
            raise KeyError(f"synthetic data has no split {split!r}; splits: {sorted(self.num_videos)}")
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
