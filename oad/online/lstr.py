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
position):

- the new chunk: both feature heads, its stage-1 key/value projections and scores;
- stage-1 attention over the ``N`` gathered keys (weights times values; the scores are gathered), the only
  term that grows with ``N``;
- the rest of the compression (stage 1's output projection and FFN on its queries, stage 2's two layers on
  its queries, whose first self-attention block is a constant);
- the work decoder (the last layer for the newest row only) and the classifier.

A per-window reference forward (the feature heads of all ``N + W`` chunks and the long memory's projections
every step) costs several times as much. FLOPs and timings per chunk at paper size: ``docs/benchmarks.md``.

:class:`LSTRFamilyStep` is what LSTR's step and TeSTra's (:mod:`oad.online.testra`) share: the copy, the
feature heads and the work window, the compression and the decoder; they differ in how the first stage's
attention over the long memory is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oad.models.lstr import MultiheadAttention
from oad.online.base import OnlineStep
from oad.online.quantized import quantize_linear, quantized_layer


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


class LSTRFamilyStep(OnlineStep):
    """The step of LSTR and its subclasses for ``n`` streams stepped together: the network is copied (with
    ``int8``, a :func:`quantize_lstr` copy: CPU, float32), the first stage's constant terms are computed
    once, and every chunk goes through the feature heads once.

    Subclasses keep the long memory's per-chunk terms as they need and implement :meth:`stage1`; a model
    whose windows also read ``lookback`` earlier work chunks (CMeRT's context) and score them otherwise
    sets :attr:`lookback` and overrides :meth:`score`.
    """

    lookback = 0  # work chunks before the window that the scoring reads too

    quantize = staticmethod(quantize_lstr)
    stream_state = {"work": 0}
    counters = ("t",)

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        super().__init__(net, device, dtype, int8)
        with torch.no_grad():
            self.consts = self.net.stage1_constants()
        self.n = 0

    def start(self, n: int) -> None:
        net = self.net
        self.n, self.t = n, 0
        self.span = self.lookback + net.work_memory  # work-head outputs a window reads, chunk c at c % span
        self.work = torch.zeros(n, self.span, net.d_model, device=self.device, dtype=self.dtype)

    def stage1(self, t: int, ws: int, scores: Tensor, values: Tensor) -> Tensor:
        """Take chunk ``t``'s long-memory terms (``scores (n, H, Q1)``, ``values (n, d)``) and return the first
        compression stage's attention output ``(n, Q1, d)`` (before ``out_proj``) of window ``ws``."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net, consts, t, W = self.net, self.consts, self.t, self.net.work_memory
        if x.shape[0] != self.n:
            raise ValueError(f"expected {self.n} streams, got {x.shape[0]}")
        scores, values = net.long_parts(net.feature_head_long(x), consts)  # (n, H, Q1), (n, d)
        self.work[:, t % self.span] = net.feature_head_work(x)
        ws = max(0, t - W + 1)
        memory = net.compress_from_attention(self.stage1(t, ws, scores, values), consts)  # (n, M, d)
        # the lookback chunks before the window (chunk 0 where there are none), then the window
        chunks = torch.arange(ws - self.lookback, t + 1, device=self.device).clamp(min=0) % self.span
        logits, future = self.score(self.work[:, chunks], memory)
        self.t += 1
        return logits, future

    def score(self, work: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        """The last chunk's logits ``(n, C)`` and future logits ``(n, Q, C)`` from the window's work-head
        outputs ``(n, lookback + W', d)`` and the compressed long memory ``(n, M, d)``."""
        logits = self.net.decode(self.net.work_tokens(work), memory, last_only=True)  # (n, C)
        return logits, logits.new_zeros(self.n, 0, logits.shape[-1])


class LSTRStep(LSTRFamilyStep):
    """LSTR for ``n`` streams stepped together, equal to ``LSTR.forward_video`` on each stream: the long
    memory's per-chunk terms of the last ``L + W`` chunks, gathered for every window."""

    stream_state = {**LSTRFamilyStep.stream_state, "scores": 0, "values": 0}

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        super().__init__(net, device, dtype, int8)
        self.ring = self.net.long_memory + self.net.work_memory  # chunks that a window's long memory may use

    def start(self, n: int) -> None:
        super().start(n)
        H, Q1 = self.net.num_heads, self.consts.q.shape[1]
        kw = {"device": self.device, "dtype": self.dtype}
        self.scores = torch.zeros(n, self.ring, H, Q1, **kw)  # chunk c at slot c % ring
        self.values = torch.zeros(n, self.ring, self.net.d_model, **kw)

    def stage1(self, t: int, ws: int, scores: Tensor, values: Tensor) -> Tensor:
        net = self.net
        self.scores[:, t % self.ring] = scores
        self.values[:, t % self.ring] = values
        idx, valid = net.long_memory_indices(torch.tensor([ws]))  # (1, N)
        slots = (idx[0] % self.ring).to(self.device)
        return net.stage1_attend(self.scores[:, slots], self.values[:, slots],
                                 valid.to(self.device).expand(self.n, -1), self.consts)


__all__ = ["Int8MultiheadAttention", "LSTRFamilyStep", "LSTRStep", "quantize_lstr"]
