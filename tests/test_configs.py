"""Configs without traps: the model size follows the data, the loss comes with the model, every tool shares
one Hydra block, every experiment file states its published figure and names streams its layout's release
ships, and every example command in a config comment or the README composes (a multirun's every job)."""

from __future__ import annotations

import importlib.util
import itertools
import re
import shlex

import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from oad.data.readers import RELEASED_STREAMS
from oad.models import registry
from oad.models.base import count_parameters
from tests.conftest import REPO, compose_cfg, net_on_meta

EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))
OWN_MODELS = {"oadtr_sw"}  # ours: their experiment files have no published figure
TOOL_CONFIGS = {"train": "train", "eval": "eval", "stream": "stream", "export": "export",
                "extract_features": "extract", "leaderboard": "leaderboard"}


MODELS = registry.names()
REAL_DATA = sorted(p.stem for p in (REPO / "configs" / "data").glob("*.yaml") if p.stem != "synthetic")
PRIMARY = ("train", "eval", "stream", "export", "extract", "leaderboard")


def test_real_data_gets_the_paper_model_and_the_built_in_data_the_demo_one(tmp_path):
    real = compose_cfg("train", ["data=thumos14", "data.root=/data/thumos"], tmp_path)
    assert real.size == "paper" and count_parameters(net_on_meta(real)) == 74_700_844  # paper OadTR, in_dim 3072
    assert real.optimizer.lr == 1e-4 and real.data.batch_size == 128 and real.trainer.max_epochs == 4
    # size= on the command line wins, before or after the data
    for overrides in (["data=thumos14", "data.root=/data/thumos", "size=demo"],
                      ["size=demo", "data=thumos14", "data.root=/data/thumos"]):
        demo = compose_cfg("train", overrides, tmp_path)
        assert demo.size == "demo" and demo.model.d_model == 128 and count_parameters(net_on_meta(demo)) < 2_000_000
    built_in = compose_cfg("train", [], tmp_path)
    assert built_in.size == "demo" and built_in.model.d_model == 128
    assert compose_cfg("train", ["size=paper"], tmp_path).model.d_model == 1024
    # an experiment sets its own size, whatever the data
    assert compose_cfg("train", ["experiment=oadtr_tsn_kinetics_thumos14", "data=synthetic"], tmp_path).size == "paper"


@pytest.mark.parametrize("data", REAL_DATA)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_follows_every_dataset_to_its_size(model, data, tmp_path):
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_cfg("train", [f"model={model}", f"data={data}", "data.root=/r"], tmp_path)
    assert cfg.size == "paper" and HydraConfig.get().runtime.choices.recipe == f"{model}_paper"
    cfg = compose_cfg("train", [f"model={model}"], tmp_path)
    assert cfg.size == "demo" and HydraConfig.get().runtime.choices.recipe == f"{model}_demo"


@pytest.mark.parametrize("model", MODELS)
def test_the_loss_comes_with_the_model_whatever_the_size(model, tmp_path):
    """configs/model/<name>.yaml names its criterion (configs/criterion/); no recipe sets one."""
    demo, paper = (compose_cfg("train", [f"model={model}", f"size={s}"], tmp_path).criterion for s in ("demo", "paper"))
    assert demo == paper and get_class(demo._target_).__module__ == "oad.losses"
    expected = {"oadtr": 0.5, "oadtr_sw": 0.5, "linear": 0.5, "trn": 1.0}  # OadCriterion's future weight
    if model in expected:
        assert demo._target_ == "oad.losses.OadCriterion" and demo.future_weight == expected[model]
    recipes = sorted((REPO / "configs" / "recipe").glob("*.yaml"))
    assert recipes and not [p.name for p in recipes if re.search(r"^criterion:", p.read_text(), flags=re.M)]


@pytest.mark.parametrize("name", PRIMARY)
def test_every_tool_shares_one_hydra_block(name, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    text = (REPO / "configs" / f"{name}.yaml").read_text()
    assert "- hydra: default" in text and not re.search(r"^hydra:", text, flags=re.M)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(name, overrides=["ckpt_path=x"] if name in ("stream", "export") else [], return_hydra_config=True)
    h = OmegaConf.to_container(cfg.hydra, resolve=False)
    assert h["run"]["dir"] == "${paths.log_dir}/${task_name}/${now:%Y-%m-%d_%H-%M-%S}"
    assert h["sweep"]["dir"] == "${paths.log_dir}/${task_name}/multirun_${now:%Y-%m-%d_%H-%M-%S}"
    assert h["job"]["chdir"] is False and cfg.hydra.job.name == cfg.task_name == name


@pytest.mark.parametrize("logger", sorted(p.stem for p in (REPO / "configs" / "logger").glob("*.yaml")))
def test_logger_options_name_lightning_loggers(logger, tmp_path):
    cfg = compose_cfg("train", [f"logger={logger}"], tmp_path)
    entries = list((cfg.get("logger") or {}).values())
    assert (logger == "none") == (not entries)
    for entry in entries:
        cls = get_class(entry._target_)
        assert cls.__module__.startswith("lightning.pytorch.loggers")
        package = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}.get(logger)
        if package is None or importlib.util.find_spec(package) is not None:  # installed: it builds
            made = instantiate(entry)
            assert isinstance(made, cls) and str(tmp_path) in str(made.save_dir)  # in the run dir


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_states_its_published_figure_and_names_released_streams(name, tmp_path):
    cfg = compose_cfg("train", [f"experiment={name}", "data.root=/data/x"], tmp_path)
    pub = cfg.published
    if name.split("_kinetics")[0] in OWN_MODELS:  # ours: nothing published to claim
        assert pub is None
    else:
        assert pub.method and pub.source and pub.features
        assert pub.metric in ("mAP", "mcAP") and pub.protocol in ("all", "windows")
        assert 0 < float(pub.figure) < 100
        # the metric of the data is the published one
        assert (cfg.data.source.dataset.lower() == "tvseries") == (pub.metric == "mcAP")
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


def _jobs(args: list[str]) -> list[list[str]]:
    """The overrides of every job of a command line: one job, or with ``-m`` every combination of the
    comma-separated choices (Hydra's basic sweeper)."""
    if "-m" not in args and "--multirun" not in args:
        return [args]
    args = [a for a in args if a not in ("-m", "--multirun")]
    choices = [[f"{a.split('=', 1)[0]}={v}" for v in a.split("=", 1)[1].split(",")]
               if "=" in a and "," in a and not re.search(r"[\[{(\"']", a) else [a] for a in args]
    return [list(job) for job in itertools.product(*choices)]


def _examples(text: str) -> list[tuple[str, list[str]]]:
    """``(tool, overrides)`` of every job of every ``python tools/<tool>.py ...`` command in ``text``."""
    out = []
    for line in text.splitlines():
        m = re.search(r"python tools/(\w+)\.py(.*)$", line)
        if not m or m.group(1) not in TOOL_CONFIGS:
            continue
        args = m.group(2).split(" #")[0].strip().rstrip("`\\").strip()
        args = re.sub(r"<[^>]*>", "placeholder", args)  # <dir>, <ckpt>: a value the user types
        out += [(m.group(1), job) for job in _jobs(shlex.split(args))]
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
    cfg = compose_cfg(TOOL_CONFIGS[tool], args, tmp_path)
    if tool == "train":
        assert cfg.model._target_ and cfg.data._target_ and cfg.optimizer._target_
