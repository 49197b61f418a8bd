"""Where the tools find their Hydra configs: ``configs/`` at the root of the repository that holds this
package (a checkout on ``PYTHONPATH`` or an editable install).

Config choices that depend on other choices live in the configs themselves: the model size follows the
data because every real dataset's config (``configs/data/*.yaml``) overrides the ``size`` group, and the
recipe is ``recipe/${model}_${size}``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"


class ConfigError(ValueError):
    """Config values that cannot work, each named by its key (``data.batch_size=0: ...``)."""


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Lightning 2's trainer precisions (lightning.fabric.connector._PRECISION_INPUT)
TRAINER_PRECISIONS = ("16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true", "transformer-engine",
                      "transformer-engine-float16", "16", "32", "64", "bf16", 16, 32, 64)

# (key, test of a value that is set, what the value must be): checked when present and not null
VALUE_CHECKS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("data.batch_size", lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    ("data.num_workers", lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    ("trainer.max_epochs", lambda v: _whole(v) and (v >= 1 or v == -1), "a whole number >= 1 (-1: no limit)"),
    ("trainer.precision", lambda v: v in TRAINER_PRECISIONS, f"one of {', '.join(map(str, TRAINER_PRECISIONS[:8]))}"),
    ("trainer.accumulate_grad_batches", lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    ("rate", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a number > 0 (chunks/s)"),
    ("batch_chunks", lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    ("checkpoint.test_weights", lambda v: v in ("final", "best"), "final or best"),
)


def _missing(node: Any, prefix: str = "") -> list[str]:
    """The keys still ``???`` in a config, without resolving interpolations."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    found = []
    for key in keys:
        name = f"{prefix}{key}" if isinstance(node, DictConfig) else f"{prefix.rstrip('.')}[{key}]"
        if OmegaConf.is_missing(node, key):
            found.append(name)
        elif not OmegaConf.is_interpolation(node, key) and isinstance(node[key], (DictConfig, ListConfig)):
            found += _missing(node[key], f"{name}.")
    return found


def check_config(cfg: Any) -> None:
    """Check a composed config before anything is built from it: no mandatory value (``???``) left
    unset, and the values of :data:`VALUE_CHECKS` that it holds valid. The tools call it right after
    composing (:mod:`oad.cli`).

    Raises:
        ConfigError: naming every bad key, its value and what it must be.
    """
    from omegaconf import OmegaConf

    problems = [f"{key}: not set (give {key}=... on the command line)" for key in _missing(cfg)]
    for key, valid, need in VALUE_CHECKS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None and not valid(value):
            problems.append(f"{key}={value!r}: must be {need}")
    if problems:
        raise ConfigError("config: " + "; ".join(problems))


def register_configs() -> None:
    """Configs derived from the model registry (:mod:`oad.models.registry`), in Hydra's ConfigStore:
    ``leaderboard_models/all`` (every registered model, the leaderboard's default ``models`` list).
    Entry points and tests call this before composing; calling it again is harmless."""
    from hydra.core.config_store import ConfigStore

    from oad.models import registry

    models = [{"name": n, "model": n, "overrides": []} for n in registry.names()]
    ConfigStore.instance().store(group="leaderboard_models", name="all", node={"models": models}, package="_global_")


__all__ = ["CONFIG_DIR", "REPO", "ConfigError", "TRAINER_PRECISIONS", "VALUE_CHECKS", "check_config", "register_configs"]
