"""The tools as users type them, in a fresh interpreter: Hydra's flags before or after the overrides, the
model size following the data (train, leaderboard, a multirun over two datasets), ``logger=tensorboard``
writing event files that TensorBoard reads back, and the console scripts of pyproject.toml running the
same functions as tools/*.py."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY
from tests.test_data_readers import make_videos, write_lstr


def run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python <args>`` with this checkout's ``oad``; fails the test on a non-zero exit."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def tool(name: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return run([str(REPO / "tools" / f"{name}.py"), *args], cwd, timeout)


def shown_config(name: str, args: list[str], cwd: Path) -> dict:
    """The config ``--cfg all`` prints (the job's keys and Hydra's, with its runtime choices)."""
    return yaml.safe_load(tool(name, *args, cwd=cwd).stdout)


REAL = ["data=thumos14", "data.root=/data/thumos"]


@pytest.mark.parametrize("args, size", [
    (["--cfg", "all", *REAL], "paper"),
    ([*REAL, "--cfg", "all"], "paper"),  # the reported trap: flags after the overrides
    (["--cfg", "all", *REAL, "size=demo"], "demo"),
    (["size=demo", *REAL, "--cfg", "all"], "demo"),
    (["--cfg", "all"], "demo"),
])
def test_train_flags_before_or_after_the_overrides(args, size, tmp_path):
    cfg = shown_config("train", args, tmp_path)
    assert cfg["size"] == size and cfg["hydra"]["runtime"]["choices"]["recipe"] == f"oadtr_{size}"
    assert cfg["model"]["d_model"] == (1024 if size == "paper" else 128)
    assert cfg["optimizer"]["lr"] == (1e-4 if size == "paper" else 5e-4)  # the recipe's


@pytest.mark.parametrize("args, size", [
    (["size=demo", *REAL, "--cfg", "job"], "demo"),  # `size` is a config group there too
    (["--cfg", "job", *REAL, "size=paper"], "paper"),
    (["--cfg", "job", *REAL], "paper"),  # no size: it follows the data
    (["--cfg", "job"], "demo"),
])
def test_leaderboard_size_on_its_command_line(args, size, tmp_path):
    assert shown_config("leaderboard", args, tmp_path)["size"] == size


def test_help_after_the_overrides_shows_the_composed_config(tmp_path):
    out = tool("train", *REAL, "--help", cwd=tmp_path).stdout
    assert "== Configuration groups ==" in out and "logger: csv, mlflow, none, tensorboard, wandb" in out
    assert "\nsize: paper\n" in out


@pytest.fixture
def thumos_root(tmp_path, thumos_val_labels) -> Path:
    """A tiny THUMOS'14 in the LSTR layout: the real labels of 8 videos of 40..89 chunks (5 train, 3 test),
    random 16 + 8-d features."""
    sessions = sorted(thumos_val_labels)[:8]
    videos = make_videos(thumos_val_labels, sessions, [40 + 7 * i for i in range(8)])
    return write_lstr(tmp_path / "thumos", videos, {"train": sessions[:5], "test": sessions[5:]})


def test_multirun_over_two_datasets_gives_each_its_size(tmp_path, thumos_root):
    """``-m data=synthetic,thumos14`` (the flag last): two real one-step runs, demo on the built-in
    data, paper on THUMOS'14 (``++data.root`` is accepted, and unused, by the synthetic data)."""
    sweep = tmp_path / "multirun"
    tool("train", "model=linear", "data=synthetic,thumos14", f"++data.root={thumos_root}", "data.val_split=null",
         "trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", f"hydra.sweep.dir={sweep}", "-m", cwd=tmp_path, timeout=600)
    recipes = {}
    for job in ("0", "1"):
        choices = yaml.safe_load((sweep / job / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"]
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["recipe"] == f"linear_{choices['size']}"  # what the run trained with
        recipes[choices["data"]] = metrics["recipe"]
        assert (sweep / job / "train.log").is_file()  # the job is named after the task
    assert recipes == {"synthetic": "linear_demo", "thumos14": "linear_paper"}


def test_tensorboard_logger_writes_event_files_tensorboard_reads(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    tool("train", "logger=tensorboard", *TINY, f"hydra.run.dir={out}", cwd=tmp_path)
    (version,) = (out / "tensorboard").iterdir()
    assert list(version.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(version))
    events.Reload()
    assert "train/loss_epoch" in events.Tags()["scalars"] and "val/mAP" in events.Tags()["scalars"]
    (loss,) = events.Scalars("train/loss_epoch")  # one epoch
    assert 0.0 < loss.value < 10.0
    assert not (out / "logs").exists()  # the CSV logger is the default, not an addition
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "metrics.json").is_file()


# -- console scripts -------------------------------------------------------------------------------------
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def _imported_main(path: Path) -> str:
    """``module:function`` that a thin tools/*.py wrapper imports and calls."""
    (imp,) = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ImportFrom) and n.module.startswith("oad")]
    return f"{imp.module}:{imp.names[0].name}"


def test_every_tool_is_a_console_script_of_the_same_function():
    targets = set(SCRIPTS.values())
    for path in sorted((REPO / "tools").glob("*.py")):
        assert _imported_main(path) in targets, f"{path.name}: no console script runs {_imported_main(path)}"
    for name, target in SCRIPTS.items():
        module, func = target.split(":")
        assert name.startswith("oad-") and callable(getattr(importlib.import_module(module), func)), name


@pytest.mark.parametrize("script, args", [("oad-train", [*REAL, "--cfg", "job"]),
                                          ("oad-leaderboard", ["size=demo", *REAL, "--cfg", "job"])])
def test_console_script_function_finds_the_configs_from_anywhere(script, args, tmp_path):
    """What the installed script does (``sys.exit(<function>())``), run outside the repository."""
    module, func = SCRIPTS[script].split(":")
    code = (f"import sys; from {module} import {func}; sys.argv = {[script, *args]!r}; "
            f"sys.exit({func}())")
    cfg = yaml.safe_load(run(["-c", code], tmp_path).stdout)
    assert cfg["size"] == ("paper" if script == "oad-train" else "demo") and cfg["data"]["root"] == "/data/thumos"


def test_plain_console_scripts_answer_help_and_usage(capsys):
    from oad.cli import CONVERT_USAGE, convert, prepare
    from oad.data.prepare import USAGE

    assert prepare(["--help"]) == 0 and USAGE in capsys.readouterr().out
    assert convert(["only_one_path"]) == 2 and CONVERT_USAGE in capsys.readouterr().err
