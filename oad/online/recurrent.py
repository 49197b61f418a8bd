"""The online step of recurrent models (TRN): the state carried from chunk to chunk, and its exportable
form with the state as explicit inputs and outputs (:class:`TRNExportStep`, :mod:`oad.export`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from oad.online.base import ExportStep, OnlineStep
from oad.online.quantized import quantize_linear


class RecurrentStep(OnlineStep):
    """TRN and any model with ``init_state(n, device, dtype)`` and ``step(x, state) -> (logits, future,
    state)``: carries the recurrent state (a copy of the network in the run dtype).

    With ``int8`` (CPU, float32) the copy is :func:`oad.online.quantized.quantize_linear`'s: int8 linear
    layers and LSTM cells (dynamic quantization), state and everything else float32. :meth:`prime` steps
    through every chunk (the state needs them all)."""

    quantize = staticmethod(quantize_linear)
    int8_label = "recurrent"
    stream_state = {"state": 0}  # the model's state tensors, (N, ...) each; no counter: any streams merge

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        super().__init__(net, device, dtype, int8)
        self.state: Any = None

    def start(self, n: int) -> None:
        self.state = self.net.init_state(n, device=self.device, dtype=self.dtype)

    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, future, self.state = self.net.step(x, self.state)
        return logits, future


class TRNExportStep(ExportStep):
    """One online TRN step with the recurrent state as explicit inputs and outputs:
    ``(features (N, in_dim), h (N, H), c (N, H), future_input (N, in_dim)) -> (scores (N, C),
    future_scores (N, Q, C), h, c, future_input)``; the state starts at zeros.

    Args:
        net: a trained ``TRN`` (or any model with ``init_state``/``step`` and a 3-tensor state); copied,
            eval mode.
        ignore_index: class left out of the softmax, or None.
    """

    input_names = ("features", "h", "c", "future_input")
    output_names = ("scores", "future_scores", "next_h", "next_c", "next_future_input")
    state_first = False

    def __init__(self, net: nn.Module, ignore_index: int | None = 21):
        super().__init__(net, ignore_index)
        self.hidden_dim = net.hidden_dim

    def forward(self, features: Tensor, h: Tensor, c: Tensor, future_input: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """
        Args:
            features: ``(N, in_dim)`` the new chunk.
            h, c: ``(N, H)`` encoder LSTM state; future_input: ``(N, in_dim)`` the decoder's anticipated
                features from the previous step.
        Returns:
            ``scores (N, C)``, ``future_scores (N, Q, C)`` and the new ``h``, ``c``, ``future_input``.
        """
        logits, future, (h, c, future_input) = self.net.step(features, (h, c, future_input))
        return (*self.probabilities(logits, future), h, c, future_input)

    def init_state(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(h, c, future_input)`` before the first chunk of ``n`` streams."""
        return tuple(self.net.init_state(n, device=self.class_bias.device, dtype=torch.float32))


__all__ = ["RecurrentStep", "TRNExportStep"]
