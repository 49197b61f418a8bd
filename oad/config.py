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

__all__ = ["CONFIG_DIR", "REPO"]
