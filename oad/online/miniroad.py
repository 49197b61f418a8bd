"""The MiniROAD online step: the GRU state of ``N`` streams, one chunk at a time.

:class:`MiniROADStep` computes :meth:`oad.models.miniroad.MiniROAD.step` (eval mode: no dropout) with the
GRU cell written out on the copied weights -- one ``F.linear`` for the input gates, one for the hidden
gates, as ``nn.GRU`` defines them (gates ``r, z, n`` in that row order):

    r = sigmoid(W_ir e + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz e + b_iz + W_hz h + b_hz)
    n = tanh(W_in e + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

At batch 1 a step only streams the weights (63 MB in float32 at paper size) through matrix-vector
products, and ``nn.GRU`` on a length-1 sequence adds its per-call overhead: measured at paper size, the
written-out cell was faster than ``MiniROAD.step`` (``nn.GRU``), ``torch.gru_cell`` and oneDNN-prepacked
weights (the step's timings: ``docs/benchmarks.md``).
:meth:`prime` runs ``layer1`` over all the past chunks at once and ``nn.GRU`` over them,
skipping the classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oad.online.base import OnlineStep
from oad.online.quantized import quantize_linear


class MiniROADStep(OnlineStep):
    """Online step of :class:`oad.models.miniroad.MiniROAD`: carries the GRU state of ``N`` streams.

    Args:
        net: the trained ``MiniROAD`` (not modified: a deep copy in eval mode, cast to ``dtype`` on
            ``device``, is kept).
        device: where the step runs.
        dtype: run dtype of the inputs and of the kept weights.
        int8: int8 weights (CPU, float32; :mod:`oad.online.quantized`): the step runs the modules of a
            ``quantize_linear`` copy (``MiniROAD.step``: int8 ``layer1`` and classifier, PyTorch's dynamic
            quantized GRU) instead of the written-out cell, whose raw weights int8 has not.

    Attributes:
        h: ``(num_layers, N, H)`` GRU state after the last chunk (None before :meth:`start`).
    """

    quantize = staticmethod(quantize_linear)
    int8_label = "MiniROAD.step"
    stream_state = {"h": 1}  # (num_layers, N, H); no counter: any streams merge

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        super().__init__(net, device, dtype, int8)
        self.h: Tensor | None = None
        self.num_layers, self.hidden_dim = self.net.num_layers, self.net.hidden_dim
        self.num_classes = self.net.num_classes
        if int8:
            return
        lin, norm = self.net.layer1[0], self.net.layer1[1]
        self.embed = (lin.weight, lin.bias)
        self.norm = (norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        gru = self.net.gru
        # per layer: (W_ih (3H, E or H), b_ih (3H,), W_hh (3H, H), b_hh (3H,))
        self.cells = [
            tuple(getattr(gru, f"{name}_l{k}") for name in ("weight_ih", "bias_ih", "weight_hh", "bias_hh"))
            for k in range(gru.num_layers)
        ]
        cls = self.net.f_classification[0]
        self.cls = (cls.weight, cls.bias)

    def start(self, n: int) -> None:
        """Forget every stream and start ``n`` new ones from the zero state."""
        self.h = torch.zeros(self.num_layers, n, self.hidden_dim, device=self.device, dtype=self.dtype)

    def _embed(self, x: Tensor) -> Tensor:
        """``layer1`` in eval mode: ``(..., D) -> (..., E)``."""
        return torch.relu(F.layer_norm(F.linear(x, *self.embed), *self.norm))

    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (N, D)`` newest chunk of every stream -> ``logits (N, C)``, ``future_logits (N, 0, C)``."""
        if self.h is None:
            raise RuntimeError("MiniROADStep.step before start(n)")
        if self.int8:
            logits, self.h = self.net.step(x, self.h)  # the quantized modules
            return logits, logits.new_zeros(logits.shape[0], 0, self.num_classes)
        inp = self._embed(x)  # (N, D) -> (N, E)
        new_h = []
        for (w_ih, b_ih, w_hh, b_hh), h in zip(self.cells, self.h):
            gi = F.linear(inp, w_ih, b_ih)  # (N, 3H)
            gh = F.linear(h, w_hh, b_hh)  # (N, 3H)
            i_r, i_z, i_n = gi.chunk(3, dim=1)  # 3 x (N, H)
            h_r, h_z, h_n = gh.chunk(3, dim=1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            inp = n + z * (h - n)  # (1 - z) * n + z * h; the next layer's input
            new_h.append(inp)
        self.h = torch.stack(new_h)  # num_layers x (N, H) -> (num_layers, N, H)
        logits = F.linear(torch.relu(inp), *self.cls)  # (N, C)
        return logits, logits.new_zeros(logits.shape[0], 0, self.num_classes)

    def prime(self, x: Tensor) -> None:
        """Feed ``x (N, T, D)`` past chunks without scoring them: ``layer1`` at once, then the GRU."""
        if self.h is None:
            raise RuntimeError("MiniROADStep.prime before start(n)")
        if x.shape[1] == 0:
            return
        e = self.net.layer1(x) if self.int8 else self._embed(x)  # (N, T, D) -> (N, T, E)
        _, self.h = self.net.gru(e, self.h)  # (N, T, E) -> h (num_layers, N, H)


__all__ = ["MiniROADStep"]
