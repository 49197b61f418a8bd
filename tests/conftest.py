"""Shared fixtures: the project's own test data (``tests/fixtures``: reference cases, real THUMOS'14
label arrays, split files), Hydra composition of the real configs with CPU-only, tiny settings and
outputs under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"

# At most 2 torch threads per test process; under pytest-xdist (``bash run.sh test`` runs one worker per
# core) the cores are shared among the workers, so that they do not oversubscribe the machine.
torch.set_num_threads(max(1, min(2, torch.get_num_threads() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))


def pytest_collection_modifyitems(config, items):
    """The test files holding ``slow`` tests first, each file's tests in their order. ``bash run.sh test``
    hands whole files to the pytest-xdist workers in this order (``--dist loadfile --no-loadscope-reorder``),
    so the long files start at once and the short ones fill in at the end: the workers finish together."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within a group is kept


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch thread, restoring the count afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fixture_file(*parts: str) -> Path:
    """A file of ``tests/fixtures`` (shipped with the repository: a missing one is an error, not a skip)."""
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(f"test fixture {p.relative_to(REPO)} is missing from the repository")
    return p


@pytest.fixture
def thumos_val_labels() -> dict:
    import numpy as np

    with np.load(REPO / "datasets" / "thumos14" / "thumos14_val_labels.npz") as z:
        return {k: z[k] for k in z.files}


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path):
    """Compose a real config as the tools do, with outputs in ``output_dir`` and Hydra's runtime set."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from oad.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


# Tiny settings shared by the training tests: a few short synthetic videos, one CPU process.
TINY = [
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.source.num_videos={train: 6, val: 2, test: 3}",
    "data.source.length_scale=0.15",
]


def net_on_meta(cfg, in_dim: int = 3072, num_classes: int = 22):
    """The network a composed training config builds, on the meta device (no memory), with the feature
    size, stream sizes (RGB 2/3, flow 1/3, as THUMOS' 2048 + 1024) and class count the data would give
    (the facts ``build_net_config`` reads from it)."""
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from oad.tasks import build_net_config

    with torch.device("meta"):
        dm = SimpleNamespace(in_dim=in_dim, num_classes=num_classes, stream_dims=(2 * in_dim // 3, in_dim - 2 * in_dim // 3))
        return instantiate(build_net_config(cfg, dm))
