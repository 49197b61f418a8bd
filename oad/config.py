"""Where the tools find their Hydra configs: ``configs/`` at the root of the repository that holds this
package (a checkout on ``PYTHONPATH`` or an editable install).

Config choices that depend on other choices live in the configs themselves: the model size follows the
data because every real dataset's config (``configs/data/*.yaml``) overrides the ``size`` group, and the
recipe is ``recipe/${model}_${size}``.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"


def register_configs() -> None:
    """Configs derived from the model registry (:mod:`oad.models.registry`), in Hydra's ConfigStore:
    ``leaderboard_models/all`` (every registered model, the leaderboard's default ``models`` list).
    Entry points and tests call this before composing; calling it again is harmless."""
    from hydra.core.config_store import ConfigStore

    from oad.models import registry

    models = [{"name": n, "model": n, "overrides": []} for n in registry.names()]
    ConfigStore.instance().store(group="leaderboard_models", name="all", node={"models": models}, package="_global_")


__all__ = ["CONFIG_DIR", "REPO", "register_configs"]
