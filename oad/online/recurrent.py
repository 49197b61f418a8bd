"""The online step of recurrent models (TRN): the state carried from chunk to chunk."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from oad.online.base import OnlineStep
from oad.online.quantized import check_int8_device, quantize_linear


class RecurrentStep(OnlineStep):
    """TRN and any model with ``init_state(n, device, dtype)`` and ``step(x, state) -> (logits, future,
    state)``: carries the recurrent state (a copy of the network in the run dtype).

    With ``int8`` (CPU, float32) the copy is :func:`oad.online.quantized.quantize_linear`'s: int8 linear
    layers and LSTM cells (dynamic quantization), state and everything else float32."""

    supports_int8 = True

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        super().__init__(net, device, dtype)
        if int8:
            check_int8_device(device, type(net).__name__)
            self.net = quantize_linear(net)
            self.implementation = f"recurrent int8 dynamic ({self.net.int8_engine})"
        else:
            self.net = copy.deepcopy(net).eval().requires_grad_(False).to(device=device, dtype=dtype)
        self.state: Any = None

    def start(self, n: int) -> None:
        self.state = self.net.init_state(n, device=self.device, dtype=self.dtype)

    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, future, self.state = self.net.step(x, self.state)
        return logits, future

    def prime(self, x: Tensor) -> None:
        for t in range(x.shape[1]):  # (N, T, D): the state needs every chunk
            self.step(x[:, t])


