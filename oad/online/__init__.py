"""Online detection: the runner (:class:`OnlineDetector`), the per-model steps it calls, and online
action events (:class:`EventDetector`).

- :mod:`oad.online.base`: the step interfaces (the online step, and its exportable form for
  :mod:`oad.export`); :mod:`oad.online.runner`: the runner;
- steps: :mod:`~oad.online.window` (window models), :mod:`~oad.online.oadtr` (OadTR, with the CPU
  engine of :mod:`~oad.online.fused_cpu`), :mod:`~oad.online.recurrent` (TRN), and one module per
  further model; a model's exportable step sits in the module of its online step;
- :mod:`oad.online.pool`: many independent streams (open, close, reset, skip) batched through one model;
- :mod:`oad.online.events`: events from per-chunk probabilities.
"""

from oad.online.base import OnlineStep
from oad.online.events import EventDetector
from oad.online.fused_cpu import can_prepack
from oad.online.pool import StreamPool
from oad.online.runner import OnlineDetector, StepOutput

__all__ = ["EventDetector", "OnlineDetector", "OnlineStep", "StepOutput", "StreamPool", "can_prepack"]
