"""Config choices that depend on other choices, where Hydra's defaults list cannot express them.

The model size follows the data: the built-in synthetic data trains the small demo models (minutes on
a CPU), a real dataset the paper-size ones, unless ``size=...`` is given. Hydra cannot choose one
group's option from another's (``size`` from ``data``) while the recipe is itself chosen from
``${model}_${size}``, so the entry points add the ``size`` override before composing
(:func:`with_default_size`) and say at start-up which size and recipe they run.
"""

from __future__ import annotations

from collections.abc import Sequence

BUILT_IN_DATA = ("synthetic",)


def _choice(overrides: Sequence[str], group: str) -> str | None:
    for o in overrides:
        key, sep, value = o.lstrip("+~").partition("=")
        if sep and key == group:
            return value
    return None


def default_size(overrides: Sequence[str]) -> str:
    """``paper`` for a real dataset (``data=thumos14|tvseries|hdd|...``), ``demo`` for the built-in data."""
    data = _choice(overrides, "data")
    return "demo" if data in (None, *BUILT_IN_DATA) else "paper"


def with_default_size(overrides: Sequence[str]) -> list[str]:
    """``overrides`` plus ``size=<default_size>`` unless a size (or an experiment, which sets its own)
    is chosen already."""
    overrides = list(overrides)
    if _choice(overrides, "size") is not None or _choice(overrides, "experiment") is not None:
        return overrides
    return [*overrides, f"size={default_size(overrides)}"]


def register_configs() -> None:
    """Configs derived from the model registry (:mod:`oad.models.registry`), in Hydra's ConfigStore:
    ``leaderboard_models/all`` (every registered model, the leaderboard's default ``models`` list).
    Entry points and tests call this before composing; calling it again is harmless."""
    from hydra.core.config_store import ConfigStore

    from oad.models import registry

    models = [{"name": n, "model": n, "overrides": []} for n in registry.names()]
    ConfigStore.instance().store(group="leaderboard_models", name="all", node={"models": models}, package="_global_")
