"""Online step of LSTR (:class:`oad.models.lstr.LSTR`): one chunk per call, the reference batch mode's score.

Chunk ``t`` is scored as :meth:`LSTR.forward_video <oad.models.lstr.LSTR.forward_video>` scores it: from the
work window ``ws = max(0, t - W + 1) .. t`` (a shorter first window while ``t < W``; the decoder is causal, so
this is the reference's first window) and that window's long memory (:meth:`LSTR.long_memory_indices`:
anchored at chunk 0 until full, then ``ws - L, ws - L + 4, .., ws - 4``, a grid that moves by one chunk each
step).

What is kept per stream: for each of the last ``L + W`` chunks the first compression stage's per-chunk terms
(the 16 learned queries' scores against the chunk's key, ``H x 16`` floats, and its value projection,
``d`` floats; the positional and bias terms of the ``N`` key slots are constants, as the stage's queries are),
and the work head's output of the last ``W`` chunks. So each chunk goes through the feature heads and the
key/value projections once.

What is recomputed every step (the memories are re-encoded: the long grid moves and every work token changes
position), counted at paper size (``d = 1024``, ``N = 512``, ``W = 32``, ``ffn = 1024``, 16 then 32 queries,
``in_dim = 3072``, 16 heads), batch 1, a multiply-add = 2 FLOPs (``torch.utils.flop_counter``):

- the new chunk: both feature heads 12.6 M, its stage-1 key/value projections and scores 4.2 M;
- stage-1 attention over the ``N`` gathered keys (weights times values; the scores are gathered):
  ``2 x 16 x 512 x 1024`` = 16.8 M, the only term that grows with ``N``;
- the rest of the compression (stage 1's output projection and FFN on 16 tokens, stage 2's two layers on 32
  queries, whose first self-attention block is a constant): 1.04 G;
- the work decoder (2 layers on 32 tokens; the last layer for the newest row only) and classifier: 0.95 G;
- total 2.03 GFLOP per chunk and stream. A per-window reference forward (the feature heads of all
  ``N + W`` chunks and the long memory's projections every step) is 8.39 GFLOP.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from oad.online.base import OnlineStep


class LSTRStep(OnlineStep):
    """LSTR for ``n`` streams stepped together, equal to ``LSTR.forward_video`` on each stream."""

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype):
        super().__init__(net, device, dtype)
        self.net = copy.deepcopy(net).to(device=device, dtype=dtype).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.consts = self.net.stage1_constants()
        self.ring = self.net.long_memory + self.net.work_memory  # chunks that a window's long memory may use
        self.n = 0

    def start(self, n: int) -> None:
        net = self.net
        H, Q1 = net.num_heads, self.consts.q.shape[1]
        kw = {"device": self.device, "dtype": self.dtype}
        self.n, self.t = n, 0
        self.scores = torch.zeros(n, self.ring, H, Q1, **kw)  # chunk c at slot c % ring
        self.values = torch.zeros(n, self.ring, net.d_model, **kw)
        self.work = torch.zeros(n, net.work_memory, net.d_model, **kw)  # work-head outputs, chunk c at c % W

    @torch.no_grad()
    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net, consts, t, W = self.net, self.consts, self.t, self.net.work_memory
        if x.shape[0] != self.n:
            raise ValueError(f"expected {self.n} streams, got {x.shape[0]}")
        scores, values = net.long_parts(net.feature_head_long(x), consts)  # (n, H, Q1), (n, d)
        self.scores[:, t % self.ring] = scores
        self.values[:, t % self.ring] = values
        self.work[:, t % W] = net.feature_head_work(x)

        ws = max(0, t - W + 1)
        idx, valid = net.long_memory_indices(torch.tensor([ws]))  # (1, N)
        slots = (idx[0] % self.ring).to(self.device)
        attn = net.stage1_attend(self.scores[:, slots], self.values[:, slots],
                                 valid.to(self.device).expand(self.n, -1), consts)
        memory = net.compress_from_attention(attn, consts)  # (n, M, d)
        chunks = torch.arange(ws, t + 1, device=self.device) % W
        logits = net.decode(net.work_tokens(self.work[:, chunks]), memory, last_only=True)  # (n, C)
        self.t += 1
        return logits, logits.new_zeros(self.n, 0, logits.shape[-1])


__all__ = ["LSTRStep"]
