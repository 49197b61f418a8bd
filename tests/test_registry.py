"""The model registry (``oad/models/registry.py``): every registered model composes at every size and
has what the shared tests need; a new model is its files and nothing else (shown in a scratch copy of
the repository, where a copy of the linear floor under a new name appears in every list)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from oad.models import registry
from oad.models.base import OnlineModel
from tests.conftest import REPO, compose_cfg, net_on_meta


@pytest.mark.parametrize("size", ["demo", "paper"])
@pytest.mark.parametrize("name", registry.names())
def test_every_model_composes_at_every_size(name, size, tmp_path):
    """``tools/train.py model=<name> size=<size>`` composes and builds the network (on the meta device)."""
    cfg = compose_cfg("train", [f"model={name}", f"size={size}"], tmp_path)
    net = net_on_meta(cfg)
    assert type(net) is registry.get(name).cls and isinstance(net, OnlineModel)
    assert net.in_dim == 3072 and net.num_classes == 22
    assert cfg.criterion._target_ and cfg.optimizer._target_ and cfg.trainer.max_epochs >= 1


@pytest.mark.parametrize("name", registry.names())
def test_every_model_has_what_the_shared_tests_need(name):
    entry = registry.get(name)
    assert entry.config and "_target_" not in entry.config
    net = registry.tiny_model(name, in_dim=16, num_classes=7)
    assert not net.training and net.in_dim == 16 and net.num_classes == 7
    assert sum(p.numel() for p in net.parameters()) < 500_000  # tiny
    assert entry.paper_variants()  # at least one benchmark row
    tol = entry.cls.int8_tolerance
    assert tol is None or set(tol) == {"fp32", "offline"}


def test_registry_errors_are_clear():
    with pytest.raises(KeyError, match=r"unknown model 'nope': expected one of \[.*'linear'"):
        registry.get("nope")
    assert registry.reference_models({"linear_encoding.weight"})[0].name == "oadtr"
    assert {e.name for e in registry.reference_models({"feature_head_long.input_linear.0.weight"})} == {"lstr", "testra"}
    assert registry.reference_models({"foo"}) == []


def _copy_repository(dst):
    ignore = shutil.ignore_patterns(".git", ".venv", "outputs", "multirun", "__pycache__", "*.egg-info", ".pytest_cache")
    for part in ("oad", "configs", "tools", "tests", "datasets"):
        shutil.copytree(REPO / part, dst / part, ignore=ignore)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, dst / f)


def _add_model_by_copying_the_linear_floor(root):
    """What a contributor does: a model file, its model config and recipes; no other file touched."""
    src = (root / "oad" / "models" / "linear.py").read_text()
    (root / "oad" / "models" / "linear_copy.py").write_text(re.sub(r"\bChunkLinear\b", "ChunkLinearCopy", src))
    cfg = (root / "configs" / "model" / "linear.yaml").read_text()
    (root / "configs" / "model" / "linear_copy.yaml").write_text(
        cfg.replace("oad.models.linear.ChunkLinear", "oad.models.linear_copy.ChunkLinearCopy"))
    for size in ("demo", "paper"):
        shutil.copy(root / "configs" / "recipe" / f"linear_{size}.yaml", root / "configs" / "recipe" / f"linear_copy_{size}.yaml")


@pytest.mark.slow
def test_a_new_model_is_its_files_and_nothing_else(tmp_path):
    root = tmp_path / "repo"
    _copy_repository(root)
    _add_model_by_copying_the_linear_floor(root)
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> str:
        out = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-2000:])
        return out.stdout

    # the leaderboard's default model list, the benchmarks' lists
    job = run("tools/leaderboard.py", "--cfg", "job")
    assert re.search(r"name: linear_copy\n\s+model: linear_copy", job), job
    assert "linear_copy" in run("tools/bench.py", "--list-models")
    assert re.search(r"^linear_copy: ", run("tools/gpu_check.py", "--list-models"), flags=re.MULTILINE)
    # the shared parametrised tests collect it: streaming == offline, int8 vs fp32, export, composition
    collected = run("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/test_streaming.py",
                    "tests/test_int8.py", "tests/test_export.py", "tests/test_registry.py")
    for test in ("test_streaming.py::test_streaming_equals_offline_scoring[linear_copy",
                 "test_int8.py::test_int8_step_is_close_to_fp32[linear_copy",
                 "test_export.py::test_exported_step_matches_pytorch[linear_copy",
                 "test_registry.py::test_every_model_composes_at_every_size[linear_copy"):
        assert test in collected, test
    # and they pass for it (streaming == offline, the composition at both sizes)
    run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_streaming.py::test_streaming_equals_offline_scoring",
        "tests/test_registry.py", "-k", "linear_copy and not a_new_model")
