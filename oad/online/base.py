"""The online-step interface: what every model's streaming step implements.

An online step holds the state one model needs between chunks (a ring buffer, a recurrent state, a
key/value cache, running sums) for ``N`` streams stepped together, and turns the newest chunk of every
stream into its logits. :class:`oad.online.OnlineDetector` is the only caller: it validates inputs,
moves them to the run device and dtype, and turns logits into probabilities.

A model names its step class in ``online_step`` (``"module:Class"``), so the runner never tests which
model it holds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class OnlineStep:
    """Base class of the per-model online steps.

    Args:
        net: the trained network (not modified: a step copies or casts what it keeps).
        device: where the step runs.
        dtype: the run dtype of the inputs and of the kept weights (float32 or bfloat16).

    Subclasses implement :meth:`start` and :meth:`step`; :meth:`prime` defaults to stepping.
    """

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype

    def start(self, n: int) -> None:
        """Forget every stream and start ``n`` new ones (zero history)."""
        raise NotImplementedError

    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (N, in_dim)`` newest chunk of every stream -> ``logits (N, C)``, ``future_logits (N, Q, C)``."""
        raise NotImplementedError

    def prime(self, x: Tensor) -> None:
        """Feed ``x (N, T, in_dim)`` past chunks without scoring them (same state as stepping them)."""
        for t in range(x.shape[1]):
            self.step(x[:, t])
