"""Online step of MAT (:class:`oad.models.mat.MAT`): one chunk per call, equal to ``MAT.forward_video``.

Chunk ``t`` is scored as :meth:`MAT.forward_video <oad.models.mat.MAT.forward_video>` scores it: the last work
row of the last refinement of the window ``ws = max(0, t - W + 1) .. t`` with that window's long memory
(:meth:`MAT.long_memory_indices`), grouped or not by the window's own padding (the per-sample rule); its
anticipation rows are the future logits.

What is kept per stream: for each of the last ``L + W`` chunks (those a window's long memory may use) the
compression's key and value of the chunk (the long memory has no positional encoding, so a chunk's key and
value are the same in every window), and the work head's output of the last ``W`` chunks. So each chunk goes
through the feature heads and the key/value projections once. Kept once for all streams: the learned queries'
first self-attention blocks (compression, generation, first future fusion) and the compression queries'
projections (:class:`oad.models.mat.Constants`).

What is recomputed every step, for the one window ending at ``t``: the compression's attention over the ``N``
gathered keys (top-k per query, in groups or not) and the rest of its layer, the encoder, the work decoder,
the future generation and the circular refinements. Nothing more is exact to cache: the top-k attention's
kept set depends on every key of a query, the groups move with the window start, and every work token
changes position each step. At the THUMOS size (float32, one CPU thread of a shared machine) a step is
6.3 GFLOP per chunk and stream, 125 ms at batch 1 (1.4 s for 16 streams); a plain re-encode of the window
(``MAT.forward`` on its ``N + W`` chunks) is 11.2 GFLOP, 196 ms; caching only the feature heads' outputs,
8.3 GFLOP.
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

    stream_state = {"keys": 0, "values": 0, "work": 0}
    counters = ("t",)

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        super().__init__(net, device, dtype, int8)
        self.ring = self.net.long_memory + self.net.work_memory  # chunks a window's long memory may use
        with torch.no_grad():
            self.consts = self.net.inference_constants()
        self.n = 0

    def start(self, n: int) -> None:
        net, kw = self.net, {"device": self.device, "dtype": self.dtype}
        self.n, self.t = n, 0
        self.keys = torch.zeros(n, self.ring, net.d_model, **kw)  # compression keys, chunk c at c % ring
        self.values = torch.zeros(n, self.ring, net.d_model, **kw)
        self.work = torch.zeros(n, net.work_memory, net.d_model, **kw)  # work-head outputs, chunk c at c % W

    @torch.no_grad()
    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net, t, W = self.net, self.t, self.net.work_memory
        if x.shape[0] != self.n:
            raise ValueError(f"expected {self.n} streams, got {x.shape[0]}")
        self.keys[:, t % self.ring], self.values[:, t % self.ring] = net.long_kv(net.feature_head_long(x))
        self.work[:, t % W] = net.feature_head_work(x)
        ws = max(0, t - W + 1)
        idx, valid = net.long_memory_indices(torch.tensor([ws]))  # (1, N)
        slots = (idx[0] % self.ring).to(self.device)
        work = self.work[:, torch.arange(ws, t + 1, device=self.device) % W]  # (n, t - ws + 1, d)
        out = net.forward_kv(self.keys[:, slots], self.values[:, slots], valid.to(self.device).expand(self.n, -1),
                             net.pos_encoding(work, 0), self.consts).work[-1]  # (n, t - ws + 1 + A, C)
        self.t += 1
        last = t - ws
        return out[:, last], out[:, last + 1:]


__all__ = ["MATStep"]
