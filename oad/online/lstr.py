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
import torch.nn.functional as F
from torch import Tensor, nn

from oad.models.lstr import MultiheadAttention
from oad.online.base import OnlineStep
from oad.online.quantized import check_int8_device, quantize_linear, quantized_layer


class Int8MultiheadAttention(MultiheadAttention):
    """LSTR's attention with int8 query/key/value projections (``q_proj``, ``k_proj``, ``v_proj``: the rows
    of ``in_proj_weight``, quantized per output channel as :func:`oad.online.quantized.quantize_linear`
    quantizes a layer). The float ``in_proj_weight``/``in_proj_bias`` stay for :meth:`projections`, which
    the input-independent stage-1 terms and the per-chunk long-memory keys/values read."""

    @classmethod
    def convert(cls, m: MultiheadAttention) -> Int8MultiheadAttention:
        (wq, bq), (wk, bk), (wv, bv) = m.projections()
        m.__class__ = cls
        m.q_proj, m.k_proj, m.v_proj = (quantized_layer(w, b) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
        return m

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        B, Lq, d = query.shape
        S, H = key.shape[1], self.num_heads
        # (B, L, d) -> (B, H, L, d/H); the same products as MultiheadAttention.forward, on int8 weights
        q = self.q_proj(query).reshape(B, Lq, H, d // H).transpose(1, 2)
        k = self.k_proj(key).reshape(B, S, H, d // H).transpose(1, 2)
        v = self.v_proj(value).reshape(B, S, H, d // H).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, d))  # (B, H, Lq, d/H) -> (B, Lq, d)


def quantize_lstr(net: nn.Module) -> nn.Module:
    """An int8 copy of an LSTR or TeSTra (``net`` is left alone): :func:`~oad.online.quantized.quantize_linear`
    (feature heads, output projections, FFNs, classifier) and the attention in-projections
    (:class:`Int8MultiheadAttention`). Float32 remain: norms, learned queries, positions, and the products
    the model writes on the raw in-projection weights (``projections()``): the first compression stage's
    constant query/slot terms and the per-chunk long-memory keys/values (``LSTR.long_parts``, 2 ``d x d``)."""
    q = quantize_linear(net)
    for m in list(q.modules()):
        if type(m) is MultiheadAttention:
            Int8MultiheadAttention.convert(m)
    return q


class LSTRStep(OnlineStep):
    """LSTR for ``n`` streams stepped together, equal to ``LSTR.forward_video`` on each stream.

    With ``int8`` (CPU, float32) the step runs a :func:`quantize_lstr` copy."""

    supports_int8 = True

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        super().__init__(net, device, dtype)
        if int8:
            check_int8_device(device, type(net).__name__)
            self.net = quantize_lstr(net)
            self.implementation = f"{type(self).__name__} int8 dynamic ({self.net.int8_engine})"
        else:
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


__all__ = ["Int8MultiheadAttention", "LSTRStep", "quantize_lstr"]
