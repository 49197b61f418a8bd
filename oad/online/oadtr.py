"""The online step of OadTR: the window ending at the new chunk, re-encoded (``O(L)`` per chunk).

Two implementations of the same function: the plain :class:`oad.online.window.WindowStep` (the model's
own modules over a ring buffer of projected chunks) and, on the CPU where PyTorch ships the oneDNN ops,
the hand-fused engine of :mod:`oad.online.fused_cpu` (faster at batch 1 and at 16 streams,
``docs/benchmarks.md``). Both equal ``OadTR.forward_video`` chunk by chunk. Both also run on int8 weights
(``int8=True``, CPU only; :mod:`oad.online.quantized`), the fused one by default.

Its exportable form (TorchScript, ONNX) is the window models' :class:`oad.online.window.WindowExportStep`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from oad.online.base import OnlineStep
from oad.online.fused_cpu import FusedOadTREngine, can_prepack
from oad.online.quantized import quantize_linear, quantized_engine
from oad.online.window import WindowStep


class OadTRStep(OnlineStep):
    """OadTR's step: the fused CPU engine where available, else the plain window step (each keeps its own
    copy of the weights).

    Args:
        net: a trained ``OadTR``.
        device, dtype: where and in which dtype the step runs (float32 for int8).
        fused: use the hand-fused engine (None: on the CPU). Off the CPU the plain step is the default.
        prepack: the fused engine's weights in oneDNN's blocked layout through PyTorch's private
            ``torch.ops.mkldnn`` ops (None: wherever this torch build has them; without them the fused
            engine runs on public ops only).
        int8: int8 weights, dynamic quantization (CPU only, :mod:`oad.online.quantized`): the fused engine
            over fbgemm-packed int8 weights (the default), or with ``fused=False`` the plain window step
            over a ``quantize_linear`` copy of the model (its own modules, the same int8 weights).
    """

    quantize = staticmethod(quantize_linear)  # the plain step's copy; the fused engine packs each weight alike
    copies_net = False
    stream_state = {"impl": 0}  # the engine's own state

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, fused: bool | None = None,
                 prepack: bool | None = None, int8: bool = False):
        super().__init__(net, device, dtype, int8)
        if int8 and prepack:
            raise ValueError("prepack=True is oneDNN's float32/bf16 weight layout; int8 uses fbgemm's packed "
                             "int8 weights (leave prepack unset)")
        available = not int8 and can_prepack(device, dtype)
        if prepack and not available:
            raise ValueError(f"prepack=True needs oneDNN on the CPU (with bf16 support for bf16), not device {device}")
        # the fused engine needs the decoder; the plain step runs any OadTR
        self.fused = (device.type == "cpu" if fused is None else bool(fused)) and len(net.decoder) > 0
        if self.fused:
            self.prepack = available if prepack is None else bool(prepack)
            self.impl: OnlineStep | FusedOadTREngine = FusedOadTREngine(net, device, dtype, self.prepack, int8)
            self.implementation = ("fused" + (" oneDNN prepacked" if self.prepack else "")
                                   + (f" int8 dynamic ({quantized_engine()})" if int8 else ""))
        else:
            self.prepack = False
            self.impl = WindowStep(net, device, dtype, int8)
            self.implementation = self.impl.implementation if int8 else "plain"

    def start(self, n: int) -> None:
        self.impl.start(n)

    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.impl.step(x)

    def prime(self, x: Tensor) -> None:
        self.impl.prime(x)


__all__ = ["OadTRStep"]
