"""Configs without traps: the model size follows the data, every experiment file states its published
figure and names streams its layout's release ships, and every example command in a config comment or
the README composes."""

from __future__ import annotations

import re
import shlex

import pytest
import torch
from hydra.utils import instantiate

from oad.config import with_default_size
from oad.data.readers import RELEASED_STREAMS
from oad.models.base import count_parameters
from oad.tasks import build_net_config
from tests.conftest import REPO, compose_cfg

EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))
TOOL_CONFIGS = {"train": "train", "eval": "eval", "stream": "stream", "export": "export",
                "extract_features": "extract", "leaderboard": "leaderboard"}


def _net_on_meta(cfg, in_dim: int = 3072, num_classes: int = 22):
    class _DM:  # the two facts build_net_config reads from the data
        pass

    dm = _DM()
    dm.in_dim, dm.num_classes = in_dim, num_classes
    with torch.device("meta"):
        return instantiate(build_net_config(cfg, dm))


def test_real_data_gets_the_paper_model_and_the_built_in_data_the_demo_one(tmp_path):
    real = compose_cfg("train", with_default_size(["data=thumos14", "data.root=/data/thumos"]), tmp_path)
    assert count_parameters(_net_on_meta(real)) == 74_700_844  # paper-size OadTR at in_dim 3072
    assert real.optimizer.lr == 1e-4 and real.data.batch_size == 128 and real.trainer.max_epochs == 4
    demo = compose_cfg("train", with_default_size(["data=thumos14", "data.root=/data/thumos", "size=demo"]), tmp_path)
    assert demo.model.d_model == 128 and count_parameters(_net_on_meta(demo)) < 2_000_000
    built_in = compose_cfg("train", with_default_size([]), tmp_path)
    assert built_in.model.d_model == 128
    assert with_default_size(["experiment=oadtr_tsn_kinetics_thumos14"]) == ["experiment=oadtr_tsn_kinetics_thumos14"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_states_its_published_figure_and_names_released_streams(name, tmp_path):
    cfg = compose_cfg("train", [f"experiment={name}", "data.root=/data/x"], tmp_path)
    pub = cfg.published
    assert pub.method and pub.source and pub.features
    assert pub.metric in ("mAP", "mcAP") and pub.protocol in ("all", "windows")
    assert 0 < float(pub.figure) < 100
    layout = cfg.data.layout
    dataset = next(k for k in RELEASED_STREAMS[layout] if k.lower() == str(cfg.data.source.dataset).lower())
    released = RELEASED_STREAMS[layout][dataset]
    if layout == "oadtr":
        names = set(cfg.data.source.streams or ["rgb", "flow"]) if dataset != "HDD" else set(
            cfg.data.source.oadtr.streams)
    else:
        streams = cfg.data.source[layout].streams
        assert streams, f"{name}: name the {layout}-layout streams (the release's folders) explicitly"
        names = set(streams.values())
    assert names and names <= released, f"{name}: {sorted(names - released)} are not streams of the {layout} release"
    # the metric of the data is the published one
    assert (cfg.data.source.dataset.lower() == "tvseries") == (pub.metric == "mcAP")


def _examples(text: str) -> list[tuple[str, list[str]]]:
    """``(tool, overrides)`` of every ``python tools/<tool>.py ...`` command in ``text``."""
    out = []
    for line in text.splitlines():
        m = re.search(r"python tools/(\w+)\.py(.*)$", line)
        if not m or m.group(1) not in TOOL_CONFIGS:
            continue
        args = m.group(2).split(" #")[0].strip().rstrip("`\\").strip()
        args = re.sub(r"<[^>]*>", "placeholder", args)  # <dir>, <ckpt>: a value the user types
        out.append((m.group(1), shlex.split(args)))
    return out


def _documented_examples() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "configs").rglob("*.yaml"))]:
        for tool, args in _examples(path.read_text()):
            found.append((str(path.relative_to(REPO)), tool, args))
    return found


EXAMPLES = _documented_examples()


def test_examples_are_found():
    files = {f for f, _, _ in EXAMPLES}
    assert "README.md" in files and "configs/train.yaml" in files and len(EXAMPLES) >= 20


@pytest.mark.parametrize("where, tool, args", EXAMPLES, ids=[f"{f}:{' '.join(a)[:60]}" for f, _, a in EXAMPLES])
def test_documented_example_composes(where, tool, args, tmp_path):
    overrides = with_default_size(args) if tool == "train" else args
    cfg = compose_cfg(TOOL_CONFIGS[tool], overrides, tmp_path)
    if tool == "train":
        assert cfg.model._target_ and cfg.data._target_ and cfg.optimizer._target_
