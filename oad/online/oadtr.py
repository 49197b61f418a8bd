"""The online step of OadTR: the window ending at the new chunk, re-encoded (``O(L)`` per chunk).

Two implementations of the same function: the plain :class:`oad.online.window.WindowStep` (the model's
own modules over a ring buffer of projected chunks) and, on the CPU where PyTorch ships the oneDNN ops,
the hand-fused engine of :mod:`oad.online.fused_cpu` (faster at batch 1 and at 16 streams,
``docs/benchmarks.md``). Both equal ``OadTR.forward_video`` chunk by chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from oad.online.base import OnlineStep
from oad.online.fused_cpu import FusedOadTREngine, can_prepack
from oad.online.window import WindowStep


class OadTRStep(OnlineStep):
    """OadTR's step: the fused CPU engine where available, else the plain window step.

    Args:
        net: a trained ``OadTR``.
        device, dtype: where and in which dtype the step runs.
        fused: use the hand-fused engine (None: on the CPU). Off the CPU the plain step is the default.
        prepack: the fused engine's weights in oneDNN's blocked layout through PyTorch's private
            ``torch.ops.mkldnn`` ops (None: wherever this torch build has them; without them the fused
            engine runs on public ops only).
    """

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, fused: bool | None = None,
                 prepack: bool | None = None):
        super().__init__(net, device, dtype)
        available = can_prepack(device, dtype)
        self.fused = device.type == "cpu" if fused is None else bool(fused)
        if prepack and not available:
            raise ValueError(f"prepack=True needs oneDNN on the CPU (with bf16 support for bf16), not device {device}")
        if not len(net.decoder):
            self.fused = False  # the fused engine needs the decoder; the plain step runs any OadTR
        if self.fused:
            self.prepack = available if prepack is None else bool(prepack)
            self.impl: OnlineStep | FusedOadTREngine = FusedOadTREngine(net, device, dtype, self.prepack)
            self.implementation = "fused" + (" oneDNN prepacked" if self.prepack else "")
        else:
            self.prepack = False
            self.impl = WindowStep(net, device, dtype)
            self.implementation = "plain"

    def start(self, n: int) -> None:
        self.impl.start(n)

    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.impl.step(x)

    def prime(self, x: Tensor) -> None:
        self.impl.prime(x)
