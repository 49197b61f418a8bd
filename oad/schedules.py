"""Learning-rate schedules the recipes name that PyTorch does not ship.

A schedule factory that takes ``total_steps`` gets the run's optimizer steps from the trainer
(``trainer.estimated_stepping_batches``, :class:`oad.tasks.lit_module.OadLitModule`).
"""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_epochs: float, max_epochs: float,
                  warmup_start: float = 0.3) -> torch.optim.lr_scheduler.LambdaLR:
    """LSTR's schedule, stepped every optimizer step ``i`` of ``I = total_steps``:
    ``lr x w(i) x (1 + cos(pi i / I)) / 2`` with ``w`` rising linearly from ``warmup_start`` to 1 over the
    first ``warmup_epochs / max_epochs`` of the run (the cosine runs during the warm-up too)."""
    total = max(1, int(total_steps))
    warm = total * float(warmup_epochs) / max(float(max_epochs), 1e-9)

    def factor(i: int) -> float:
        w = 1.0 if warm <= 0 or i >= warm else warmup_start + (1.0 - warmup_start) * i / warm
        return w * 0.5 * (1.0 + math.cos(math.pi * min(i, total) / total))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
