"""Online step of MAT (:class:`oad.models.mat.MAT`): one chunk per call, equal to ``MAT.forward_video``.

Chunk ``t`` is scored as :meth:`MAT.forward_video <oad.models.mat.MAT.forward_video>` scores it: the last work
row of the last refinement of the window ``ws = max(0, t - W + 1) .. t`` with that window's long memory
(:meth:`MAT.long_memory_indices`), grouped or not by the window's own padding (the per-sample rule); its
anticipation rows are the future logits.

What is kept per stream: the long feature head's output of the last ``L + W`` chunks (the chunks a window's
long memory may use) and the work head's output of the last ``W`` chunks, so each chunk goes through the
two feature heads once.

What is recomputed every step: everything after the feature heads, for the one window ending at ``t``
(the long-memory compression of all ``N`` gathered tokens, the encoder, the work decoder, the future
generation and the circular refinements). Nothing cheaper is exact: the top-k attention's kept set depends
on every key of a query, the memory groups move with the window start, and every work token changes
position each step. This is a plain re-encode of one window per chunk minus the feature heads of its
``N + W`` chunks; its cost does not depend on the video length.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from oad.online.base import OnlineStep


class MATStep(OnlineStep):
    """MAT for ``n`` streams stepped together, equal to ``MAT.forward_video`` on each stream.

    No int8 path (the runner refuses int8): with its linear layers on int8 weights
    (:func:`oad.online.quantized.quantize_linear`) the quantization noise moves keys across the top-k
    cut-offs; on the tests' tiny model the scores then moved by up to 0.44 and the top class changed on
    17-27% of the chunks.
    """

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        super().__init__(net, device, dtype, int8)
        self.ring = self.net.long_memory + self.net.work_memory  # chunks a window's long memory may use
        self.n = 0

    def start(self, n: int) -> None:
        net, kw = self.net, {"device": self.device, "dtype": self.dtype}
        self.n, self.t = n, 0
        self.long = torch.zeros(n, self.ring, net.d_model, **kw)  # long-head outputs, chunk c at c % ring
        self.work = torch.zeros(n, net.work_memory, net.d_model, **kw)  # work-head outputs, chunk c at c % W

    @torch.no_grad()
    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net, t, W = self.net, self.t, self.net.work_memory
        if x.shape[0] != self.n:
            raise ValueError(f"expected {self.n} streams, got {x.shape[0]}")
        self.long[:, t % self.ring] = net.feature_head_long(x)
        self.work[:, t % W] = net.feature_head_work(x)
        ws = max(0, t - W + 1)
        idx, valid = net.long_memory_indices(torch.tensor([ws]))  # (1, N)
        long_tokens = self.long[:, (idx[0] % self.ring).to(self.device)]  # (n, N, d)
        work = self.work[:, torch.arange(ws, t + 1, device=self.device) % W]  # (n, t - ws + 1, d)
        out = net.forward_tokens(long_tokens, valid.to(self.device).expand(self.n, -1),
                                 net.pos_encoding(work, 0)).work[-1]  # (n, t - ws + 1 + A, C)
        self.t += 1
        last = t - ws
        return out[:, last], out[:, last + 1:]


__all__ = ["MATStep"]
