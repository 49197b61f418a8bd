"""Tasks behind the thin entry points in ``tools/``: each builds everything from a Hydra config, runs
it and returns its results, so tests call them directly.

- :func:`train` (``tools/train.py``), :func:`evaluate` (``tools/eval.py``), :func:`stream`
  (``tools/stream.py``);
- :mod:`oad.tasks.lit_module`: the one LightningModule; :mod:`oad.tasks.scoring`: whole-video scores;
- :mod:`oad.tasks.report`: the tables, the headline line and the plots.
"""

from oad.tasks.common import build_datamodule, build_net_config
from oad.tasks.evaluation import evaluate
from oad.tasks.report import format_report, headline
from oad.tasks.training import train

__all__ = ["build_datamodule", "build_net_config", "evaluate", "format_report", "headline", "train"]
