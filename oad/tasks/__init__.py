"""Tasks behind the thin entry points in ``tools/``: each builds everything from a Hydra config, runs
it and returns its results, so tests call them directly.

- :func:`train` (``tools/train.py``), :func:`evaluate` (``tools/eval.py``), :func:`stream`
  (``tools/stream.py``);
- :mod:`oad.tasks.lit_module`: the one LightningModule; :mod:`oad.tasks.scoring`: whole-video scores;
- :mod:`oad.tasks.report`: the tables, the headline line and the plots.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported when first used (PEP 562): `oad.tasks.streaming` (tools/stream.py) then starts without Lightning
# and its metrics stack, seconds sooner.
_HOMES = {"build_datamodule": "common", "build_net_config": "common", "evaluate": "evaluation",
          "format_report": "report", "headline": "report", "train": "training"}

__all__ = ["build_datamodule", "build_net_config", "evaluate", "format_report", "headline", "train"]

if TYPE_CHECKING:
    from oad.tasks.common import build_datamodule, build_net_config
    from oad.tasks.evaluation import evaluate
    from oad.tasks.report import format_report, headline
    from oad.tasks.training import train


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
