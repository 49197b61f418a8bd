"""LSTR: Long Short-Term Transformer for online action detection (Xu et al., NeurIPS 2021, arXiv 2107.03377).

Two memories of the past feed a transformer decoder. The *long* memory holds ``N`` chunks sampled every
``long_stride`` chunks from the last ``long_memory`` chunks before the work window; it is compressed in
two stages by learned queries (16 queries cross-attend to the ``N`` tokens, then 32 queries to those 16)
into 32 tokens. The *work* memory, the last ``W`` chunks, is decoded with causal self-attention and
cross-attention to the compressed memory; every work token is classified.

Faithful to the reference code (github.com/amazon-science/long-short-term-transformer, ``models/lstr.py``
and ``models/transformer/``): same layers (post-norm decoder layers, ``in_proj_weight``/``in_proj_bias``
attention, sinusoidal positional encoding added to both memories, long rows ``0..N-1`` and work rows
``N..N+W-1``), same parameter names (``from_reference`` loads a checkpoint's ``model_state_dict`` with no
rename), and the reference's batch-mode inference (``forward_video``, ``LSTRBatchInferenceDataLayer``).
Differences:

- Inputs are the concatenated chunk features (RGB then flow, ``in_dim``) instead of two tensors; the
  long-memory padding mask may be boolean (True for real tokens) or additive as in the reference.
- A video shorter than the work memory ``W`` is scored as one shorter first window (the reference gives
  such videos no windows, hence zero scores). The work decoder is causal, so this equals the reference's
  first window on the right-padded video.
- ``forward_video`` is the reference batch mode computed once per video: the feature heads and the
  first compression stage's key/value projections run once per chunk (projections are linear, so a
  window's keys are the per-chunk projections plus a per-slot positional term), and windows are batched.
  Only the last decoder layer's last row is computed for windows that score only their last chunk.
- Only the configuration the reference supports for inference is built: a long memory, learned-query
  compression stages (``ENC_MODULE`` entries ``[q, layers, True]``) and a decoder with final LayerNorms.

:class:`oad.models.testra.TeSTra` (ECCV 2022) is the same network with a temporal kernel in the first
compression stage; it reuses everything here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oad.models.base import OnlineModel


# -- layers (reference ``models/transformer``) -----------------------------------------------------------
class PositionalEncoding(nn.Module):
    """Sinusoidal table ``pe (max_len, 1, d)`` (the reference buffer layout), added then dropout."""

    def __init__(self, d_model: int, dropout: float, max_len: int = 5000):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(1))  # (max_len, d) -> (max_len, 1, d)

    def rows(self, start: int, length: int) -> Tensor:
        """Rows ``start .. start+length-1`` of the table, ``(length, d)``."""
        if start + length > self.pe.shape[0]:
            raise ValueError(f"positions up to {start + length} exceed the table of {self.pe.shape[0]}")
        return self.pe[start:start + length, 0]

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """``x (B, L, d)`` -> ``dropout(x + pe[offset : offset + L])``."""
        return self.dropout(x + self.rows(offset, x.shape[1]))


class MultiheadAttention(nn.Module):
    """Reference attention: fused ``in_proj_weight (3d, d)``/``in_proj_bias`` (rows q, k, v), ``out_proj``.

    Masks are additive biases broadcastable to ``(B, H, Lq, S)``; dropout acts on the attention weights.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.d_model, self.num_heads, self.dropout = d_model, num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def projections(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """``((w_q, b_q), (w_k, b_k), (w_v, b_v))`` views of the fused projection."""
        w, b = self.in_proj_weight.chunk(3), self.in_proj_bias.chunk(3)
        return (w[0], b[0]), (w[1], b[1]), (w[2], b[2])

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        B, Lq, d = query.shape
        S, H = key.shape[1], self.num_heads
        (wq, bq), (wk, bk), (wv, bv) = self.projections()
        if query is key and key is value:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        # (B, L, d) -> (B, H, L, d/H)
        q = q.reshape(B, Lq, H, d // H).transpose(1, 2)
        k = k.reshape(B, S, H, d // H).transpose(1, 2)
        v = v.reshape(B, S, H, d // H).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, d))  # (B, H, Lq, d/H) -> (B, Lq, d)


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}  # the reference's ``ACTIVATION`` names


class DecoderLayer(nn.Module):
    """Reference ``TransformerDecoderLayer`` (post-norm, ReLU FFN by default).

    ``x = LN1(x + SA(x)); x = LN2(x + CA(x, memory)); x = LN3(x + lin2(act(lin1 x)))``. ``attention`` (class
    attribute) is the class of both attentions (MAT: top-k attention).
    """

    attention = MultiheadAttention

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float, activation: str = "relu"):
        super().__init__()
        self.self_attn = self.attention(d_model, num_heads, dropout)
        self.multihead_attn = self.attention(d_model, num_heads, dropout)
        self.activation = ACTIVATIONS[activation]
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def self_block(self, x: Tensor, bias: Tensor | None = None, last_only: bool = False) -> Tensor:
        """``LN1(x + SA(x))``; with ``last_only`` only the last row (causal masks: it sees every row)."""
        if last_only:
            q = x[:, -1:]
            return self.norm1(q + self.dropout1(self.self_attn(q, x, x)))
        return self.norm1(x + self.dropout1(self.self_attn(x, x, x, bias)))

    def cross_block(self, x: Tensor, memory: Tensor, bias: Tensor | None = None) -> Tensor:
        """Cross-attention and FFN: ``LN3(y + FFN(y))`` with ``y = LN2(x + CA(x, memory))``."""
        x = self.norm2(x + self.dropout2(self.multihead_attn(x, memory, memory, bias)))
        return self.norm3(x + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x))))))

    def forward(self, x: Tensor, memory: Tensor, self_bias: Tensor | None = None,
                memory_bias: Tensor | None = None, last_only: bool = False) -> Tensor:
        if last_only and memory_bias is not None:
            memory_bias = memory_bias[..., -1:, :]
        return self.cross_block(self.self_block(x, self_bias, last_only), memory, memory_bias)


class Decoder(nn.Module):
    """Reference ``TransformerDecoder``: a stack of ``layer`` (class attribute, :class:`DecoderLayer`) and a
    final LayerNorm.

    Every layer is drawn on its own. The references deep-copy one layer into each stack and then redraw only
    ``nn.Linear`` weights, so their stacked layers start with the same attention projections and biases;
    oad does not copy that (it trains MAT better, docs/benchmarks.md section 27), and their checkpoints load
    either way.
    """

    layer = DecoderLayer

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float, num_layers: int,
                 activation: str = "relu"):
        super().__init__()
        self.layers = nn.ModuleList(
            self.layer(d_model, num_heads, ffn_dim, dropout, activation) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, memory: Tensor, self_bias: Tensor | None = None,
                memory_bias: Tensor | None = None, last_only: bool = False) -> Tensor:
        """``last_only`` computes only the last row in the last layer (valid for causal ``self_bias``)."""
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, self_bias, memory_bias, last_only and i == len(self.layers) - 1)
        return self.norm(x)


class FeatureHead(nn.Module):
    """Reference ``BaseFeatureHead`` (two-stream, linear enabled): ``relu(Linear(in_dim, d))``."""

    def __init__(self, in_dim: int, d_model: int):
        super().__init__()
        self.input_linear = nn.Sequential(nn.Linear(in_dim, d_model), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.input_linear(x)


def causal_bias(n: int, *, device=None, dtype=torch.float32) -> Tensor:
    """``(n, n)`` additive mask: 0 on and below the diagonal, -inf above (reference subsequent mask)."""
    return torch.full((n, n), float("-inf"), device=device, dtype=dtype).triu(1)


def padding_bias(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``(B, S)`` bool (True = real) or additive float mask -> additive bias ``(B, 1, 1, S)``."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask.to(dtype)[:, None, None, :]


def memory_indices(work_start: Tensor, num_long: int, long_memory: int, long_stride: int) -> tuple[Tensor, Tensor]:
    """The reference test sampler's long memories (``LSTRBatchInferenceDataLayer``, LSTR and MAT).

    ``arange(max(0, ws - long_memory), ws)[::long_stride]`` (anchored at chunk 0 until the memory is full),
    left-padded with chunk 0 up to ``num_long``; the padding mask hides every slot before the last one
    holding chunk 0.

    Args:
        work_start: ``(K,)`` int64 window starts ``ws >= 0``.
        num_long: long-memory slots ``N``.
        long_memory: long-memory span in chunks.
        long_stride: sampling stride.

    Returns:
        ``indices (K, N)`` int64 and ``valid (K, N)`` bool.
    """
    N, L, s = num_long, long_memory, long_stride
    ws = work_start.long()[:, None]
    n = torch.clamp((ws + s - 1) // s, max=N)  # real samples
    base = torch.clamp(ws - L, min=0)
    j = torch.arange(N, device=ws.device)[None]
    off = j - (N - n)
    indices = torch.where(off >= 0, base + s * off, torch.zeros_like(off))
    valid = j >= N - torch.clamp(n, min=1)
    return indices, valid


class TwoStreamFeatureHead(nn.Module):
    """The two-stream feature head of LSTR's forks MAT and CMeRT (reference ``BaseFeatureHead`` with the
    linear layers on): RGB and flow each through ``Linear -> LayerNorm -> ReLU`` to ``d_model``,
    concatenated, then ``Linear(2 d, d) -> LayerNorm -> ReLU`` (``input_linear``).

    Args:
        visual_dim: width of the RGB part (the first ``visual_dim`` input columns).
        motion_dim: width of the flow part (the rest).
        d_model: output width.
    """

    def __init__(self, visual_dim: int, motion_dim: int, d_model: int):
        super().__init__()
        self.visual_dim = visual_dim

        def block(i: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(i, d_model), nn.LayerNorm(d_model), nn.ReLU(inplace=True))

        self.visual_linear = block(visual_dim)
        self.motion_linear = block(motion_dim)
        self.input_linear = block(2 * d_model)

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., visual_dim + motion_dim)`` -> ``(..., d_model)``."""
        visual, motion = x[..., : self.visual_dim], x[..., self.visual_dim:]
        return self.input_linear(torch.cat((self.visual_linear(visual), self.motion_linear(motion)), dim=-1))


class Stage1(NamedTuple):
    """Input-independent pieces of the first compression stage, for the inference paths.

    Attributes:
        tgt: ``(Q1, d)`` the learned queries after their self-attention block (a constant in eval).
        q: ``(H, Q1, d/H)`` their cross-attention query projections, scaled by ``(d/H)^-1/2``.
        slot_score: ``(N, H, Q1)`` score term of each key slot (LSTR: positional encoding and key bias),
            or None.
        slot_value: ``(N, d)`` value term of each key slot (LSTR: positional encoding and value bias), or None.
        log_weight: ``(N,)`` additive kernel term of each key slot (TeSTra Laplace), or None.
        stage_tgt: for each later stage, ``(Q_i, d)`` its learned queries after its first layer's
            self-attention block (also constants).
    """

    tgt: Tensor
    q: Tensor
    slot_score: Tensor | None
    slot_value: Tensor | None
    log_weight: Tensor | None
    stage_tgt: tuple[Tensor, ...]


class LSTR(OnlineModel):
    """Long Short-Term Transformer.

    Args:
        in_dim: input feature size per chunk (RGB then flow, concatenated; 3072 on THUMOS).
        num_classes: classes including Background (and Ambiguous for THUMOS).
        d_model: width (the feature heads' output size).
        num_heads: attention heads of every layer.
        ffn_dim: FFN hidden size.
        dropout: dropout of positional encodings, residual branches, FFNs and attention weights.
        long_memory: long-memory span in chunks (2048 = 512 s at 4 chunks/s).
        long_stride: long-memory sampling stride; ``N = long_memory // long_stride`` tokens.
        work_memory: work-memory length ``W`` in chunks.
        enc_queries: learned queries of each compression stage.
        enc_layers: decoder layers of each compression stage.
        dec_layers: layers of the work decoder.
        max_len: rows of the positional table (reference 5000).
    """

    num_queries = 0  # no anticipation queries: ``future`` outputs have zero steps
    future_offset = 1
    online_step = "oad.online.lstr:LSTRStep"
    samples = "oad.data.samples:lstr_memory_windows"  # work windows with their long memories, all supervised
    long_pe = True  # positional encoding on the long memory (TeSTra: no)
    include_work = False  # the decoder also attends to the work tokens (TeSTra: yes)

    # registry (oad/models/registry.py): the tests' tiny instance (long memory 16 chunks = 4 tokens, work
    # memory 4: test videos are longer than both, and shorter), int8 bounds, benchmark rows
    tiny = dict(d_model=32, num_heads=4, ffn_dim=48, long_memory=16, work_memory=4, enc_queries=(4, 4))
    tiny_init_norms = False  # post-norm layers keep LayerNorm at 1/0
    int8_tolerance = {"fp32": 0.06, "offline": 0.08}
    paper_variants = {"LSTR (long 2048)": {}}

    @staticmethod
    def recognises_reference(names: set[str]) -> bool:
        # TeSTra's checkpoints have the same names: the converter then asks for arch=lstr|testra. MAT's and
        # CMeRT's two-stream feature heads also have an input_linear (after visual_linear/motion_linear).
        return ("feature_head_long.input_linear.0.weight" in names
                and "feature_head_long.visual_linear.0.weight" not in names)

    def __init__(
        self,
        *,
        in_dim: int,
        num_classes: int = 22,
        d_model: int = 1024,
        num_heads: int = 16,
        ffn_dim: int = 1024,
        dropout: float = 0.2,
        long_memory: int = 2048,
        long_stride: int = 4,
        work_memory: int = 32,
        enc_queries: tuple[int, ...] = (16, 32),
        enc_layers: tuple[int, ...] = (1, 2),
        dec_layers: int = 2,
        max_len: int = 5000,
    ):
        super().__init__()
        if long_memory % long_stride:
            raise ValueError(f"long_memory {long_memory} is not a multiple of long_stride {long_stride}")
        if len(enc_queries) != len(enc_layers) or not enc_queries:
            raise ValueError("enc_queries and enc_layers must name the same (non-zero) number of stages")
        self.in_dim, self.num_classes, self.d_model, self.num_heads = in_dim, num_classes, d_model, num_heads
        self.long_memory, self.long_stride, self.work_memory = long_memory, long_stride, work_memory
        self.num_long = long_memory // long_stride  # N
        self.work_pe_offset = self.num_long if self.long_pe else 0
        if self.work_pe_offset + work_memory > max_len:
            raise ValueError(f"max_len {max_len} is too small for {self.num_long} + {work_memory} positions")

        self.feature_head_long = FeatureHead(in_dim, d_model)
        self.feature_head_work = FeatureHead(in_dim, d_model)
        self.pos_encoding = PositionalEncoding(d_model, dropout, max_len)
        self.enc_queries = nn.ModuleList(nn.Embedding(q, d_model) for q in enc_queries)
        self.enc_modules = nn.ModuleList(
            Decoder(d_model, num_heads, ffn_dim, dropout, n) for n in enc_layers
        )
        self.dec_modules = Decoder(d_model, num_heads, ffn_dim, dropout, dec_layers)
        self.classifier = nn.Linear(d_model, num_classes)

    # -- the reference forward (training, batch mode) --------------------------------------------------
    def kernel_log_weight(self, num_keys: int, *, device=None, dtype=torch.float32) -> Tensor | None:
        """Additive term of the first stage's attention logits per key slot; None for LSTR."""
        return None

    def compress(self, long_tokens: Tensor, long_bias: Tensor | None = None) -> Tensor:
        """Compression stages: ``(B, N, d)`` long tokens (positions added) -> ``(B, M, d)`` memory.

        ``long_bias`` is the additive padding bias ``(B, 1, 1, N)`` of the first stage's cross-attention.
        """
        B, N = long_tokens.shape[:2]
        kernel = self.kernel_log_weight(N, device=long_tokens.device, dtype=long_tokens.dtype)
        if kernel is not None:
            long_bias = kernel if long_bias is None else long_bias + kernel
        x = long_tokens
        for i, (queries, stage) in enumerate(zip(self.enc_queries, self.enc_modules)):
            q = queries.weight.unsqueeze(0).expand(B, -1, -1)  # (Q_i, d) -> (B, Q_i, d)
            x = stage(q, x, memory_bias=long_bias if i == 0 else None)
        return x

    def decode(self, work_tokens: Tensor, memory: Tensor, last_only: bool = False) -> Tensor:
        """Work decoder and classifier: ``(B, W', d)`` tokens (positions added), ``(B, M, d)`` memory ->
        ``(B, W', C)`` logits, or ``(B, C)`` for the last token with ``last_only``."""
        Wp = work_tokens.shape[1]
        tgt_bias = causal_bias(Wp, device=work_tokens.device, dtype=work_tokens.dtype)
        memory_bias = None
        if self.include_work:
            # TeSTra: memory [compressed long; work tokens], mask [0 | causal]
            M = memory.shape[1]
            memory = torch.cat((memory, work_tokens), dim=1)  # (B, M + W', d)
            memory_bias = F.pad(tgt_bias, (M, 0))  # (W', W') -> (W', M + W')
        out = self.dec_modules(work_tokens, memory, tgt_bias, memory_bias, last_only=last_only)
        logits = self.classifier(out)
        return logits[:, -1] if last_only else logits

    def forward(self, long_x: Tensor, work_x: Tensor, long_mask: Tensor | None = None) -> Tensor:
        """Reference forward: score every chunk of the work windows.

        Args:
            long_x: ``(B, N, in_dim)`` long-memory chunks, oldest first (left padding allowed).
            work_x: ``(B, W', in_dim)`` work-memory chunks, ``W' <= W``, oldest first.
            long_mask: ``(B, N)`` bool, True for real long-memory tokens, or additive (0 / -inf) as in
                the reference; None when every token is real.

        Returns:
            ``logits (B, W', C)``, one row per work chunk.
        """
        if long_x.shape[1] != self.num_long:
            raise ValueError(f"long memory of {long_x.shape[1]} tokens, expected {self.num_long}")
        if work_x.shape[1] > self.work_memory:
            raise ValueError(f"work memory of {work_x.shape[1]} chunks is longer than {self.work_memory}")
        long_tokens = self.feature_head_long(long_x)
        if self.long_pe:
            long_tokens = self.pos_encoding(long_tokens, 0)
        memory = self.compress(long_tokens, padding_bias(long_mask, long_tokens.dtype))
        work_tokens = self.pos_encoding(self.feature_head_work(work_x), self.work_pe_offset)
        return self.decode(work_tokens, memory)

    def training_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Every chunk of the work windows: ``(B, W, C)`` and an empty future ``(B, W, 0, C)``."""
        logits = self(batch["long_features"], batch["features"], batch["long_mask"])
        return logits, logits.new_zeros(*logits.shape[:2], 0, logits.shape[-1])

    # -- batch-mode inference ----------------------------------------------------------------------------
    def long_memory_indices(self, work_start: Tensor) -> tuple[Tensor, Tensor]:
        """Long-memory chunk indices ``(K, N)`` and validity ``(K, N)`` of the windows starting at
        ``work_start (K,)``: the reference test sampler, :func:`memory_indices`."""
        return memory_indices(work_start, self.num_long, self.long_memory, self.long_stride)

    def stage1_constants(self) -> Stage1:
        """The compression's input-independent terms (see :class:`Stage1`); eval only."""
        if len(self.enc_modules[0].layers) != 1:
            raise NotImplementedError("the inference paths need a single-layer first compression stage")
        layer = self.enc_modules[0].layers[0]
        attn = layer.multihead_attn
        H, d = self.num_heads, self.d_model
        hd = d // H
        queries = self.enc_queries[0].weight.unsqueeze(0)  # (1, Q1, d)
        tgt = layer.self_block(queries)[0]  # (Q1, d)
        (wq, bq), (wk, bk), (wv, bv) = attn.projections()
        q = (F.linear(tgt, wq, bq) * hd ** -0.5).reshape(-1, H, hd).transpose(0, 1)  # (Q1, d) -> (H, Q1, hd)
        slot_score = slot_value = None
        if self.long_pe:
            pe = self.pos_encoding.rows(0, self.num_long)  # (N, d)
            k_pe = F.linear(pe, wk, bk).reshape(-1, H, hd)  # (N, H, hd)
            slot_score = torch.einsum("nhc,hqc->nhq", k_pe, q)  # (N, H, Q1)
            slot_value = F.linear(pe, wv, bv)  # (N, d)
        log_weight = self.kernel_log_weight(self.num_long, device=q.device, dtype=q.dtype)
        if log_weight is not None:
            log_weight = log_weight.reshape(-1)  # (1, 1, 1, N) -> (N,)
        stage_tgt = tuple(
            stage.layers[0].self_block(queries.weight.unsqueeze(0))[0]
            for queries, stage in zip(self.enc_queries[1:], self.enc_modules[1:])
        )
        return Stage1(tgt, q, slot_score, slot_value, log_weight, stage_tgt)

    def long_parts(self, h_long: Tensor, consts: Stage1) -> tuple[Tensor, Tensor]:
        """Per-chunk first-stage terms of long-head outputs ``h_long (..., d)``.

        Returns ``scores (..., H, Q1)`` (the scaled query-key products) and ``values (..., d)``. For LSTR
        the key/value biases and the positional terms live in the slot terms (projections are linear).
        """
        attn = self.enc_modules[0].layers[0].multihead_attn
        H, hd = self.num_heads, self.d_model // self.num_heads
        _, (wk, bk), (wv, bv) = attn.projections()
        with_bias = not self.long_pe
        k = F.linear(h_long, wk, bk if with_bias else None)
        k = k.reshape(*k.shape[:-1], H, hd)  # (..., d) -> (..., H, hd)
        scores = torch.einsum("...hc,hqc->...hq", k, consts.q)
        values = F.linear(h_long, wv, bv if with_bias else None)
        return scores, values

    def stage1_attend(self, scores: Tensor, values: Tensor, valid: Tensor, consts: Stage1) -> Tensor:
        """First-stage cross-attention of gathered keys: ``scores (B, N, H, Q1)``, ``values (B, N, d)``,
        ``valid (B, N)`` bool -> attention output before ``out_proj`` ``(B, Q1, d)``."""
        B, N, H, Q1 = scores.shape
        if consts.slot_score is not None:
            scores = scores + consts.slot_score
            values = values + consts.slot_value
        logits = scores.permute(0, 2, 3, 1)  # (B, N, H, Q1) -> (B, H, Q1, N)
        bias = torch.zeros(valid.shape, dtype=logits.dtype, device=logits.device).masked_fill(~valid, float("-inf"))
        if consts.log_weight is not None:
            bias = bias + consts.log_weight
        weights = torch.softmax(logits + bias[:, None, None, :], dim=-1)
        v = values.reshape(B, N, H, -1).transpose(1, 2)  # (B, N, d) -> (B, H, N, hd)
        return (weights @ v).transpose(1, 2).reshape(B, Q1, -1)  # (B, H, Q1, hd) -> (B, Q1, d)

    def compress_from_attention(self, attn_out: Tensor, consts: Stage1) -> Tensor:
        """The rest of the compression after the first stage's attention: ``(B, Q1, d)`` -> ``(B, M, d)``."""
        layer = self.enc_modules[0].layers[0]
        x = layer.norm2(consts.tgt + layer.dropout2(layer.multihead_attn.out_proj(attn_out)))
        x = layer.norm3(x + layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))))
        x = self.enc_modules[0].norm(x)
        B = x.shape[0]
        for tgt, stage in zip(consts.stage_tgt, self.enc_modules[1:]):
            y = stage.layers[0].cross_block(tgt.unsqueeze(0).expand(B, -1, -1), x)  # constant queries
            for layer in stage.layers[1:]:
                y = layer(y, x)
            x = stage.norm(y)
        return x

    def work_tokens(self, h_work: Tensor) -> Tensor:
        """Work-head outputs ``(B, W', d)`` of a window's chunks -> tokens with their positions."""
        return self.pos_encoding(h_work, self.work_pe_offset)

    @torch.no_grad()
    def forward_video(self, features: Tensor, max_batch: int | None = None) -> tuple[Tensor, Tensor]:
        """Reference batch-mode scores of a whole video (eval mode, no gradients).

        A window starts at every ``ws = 0 .. T - W``; the first scores its ``W`` chunks, every later one its
        last chunk ``ws + W - 1``. A video shorter than ``W`` is one first window of ``T`` chunks. The long
        memory of each window follows :meth:`long_memory_indices`.

        Args:
            features: ``(T, in_dim)`` chunk features of one video.
            max_batch: windows per batch (default: about 16M gathered floats per batch).

        Returns:
            ``logits (T, C)`` and ``future (T, 0, C)`` (no anticipation).
        """
        T = features.shape[0]
        C, W, N, d = self.num_classes, self.work_memory, self.num_long, self.d_model
        logits = features.new_zeros(T, C)
        if T == 0:
            return logits, logits.new_zeros(0, 0, C)
        consts = self.stage1_constants()
        h_long = self.feature_head_long(features)  # (T, d), once per chunk
        h_work = self.feature_head_work(features)
        scores, values = self.long_parts(h_long, consts)  # (T, H, Q1), (T, d)

        def memory_of(ws: Tensor) -> Tensor:
            idx, valid = self.long_memory_indices(ws)  # (K, N)
            return self.compress_from_attention(
                self.stage1_attend(scores[idx], values[idx], valid, consts), consts)

        first = min(W, T)
        ws0 = torch.zeros(1, dtype=torch.long, device=features.device)
        logits[:first] = self.decode(self.work_tokens(h_work[None, :first]), memory_of(ws0))[0]
        if T > W:
            if max_batch is None:
                max_batch = max(1, (1 << 24) // (N * d))
            offsets = torch.arange(W, device=features.device)
            for start in range(1, T - W + 1, max_batch):
                ws = torch.arange(start, min(start + max_batch, T - W + 1), device=features.device)
                work = self.work_tokens(h_work[ws[:, None] + offsets])  # (K, W, d)
                logits[ws + W - 1] = self.decode(work, memory_of(ws), last_only=True)
        return logits, logits.new_zeros(T, 0, C)

    # -- reference checkpoints -------------------------------------------------------------------------
    @staticmethod
    def reference_to_state_dict(ref: dict[str, Tensor]) -> dict[str, Tensor]:
        """A reference state dict in this module's names: the names are the same; a ``module.`` prefix
        (DataParallel checkpoints) is removed and a whole checkpoint's ``model_state_dict`` is unpacked."""
        if "model_state_dict" in ref:
            ref = ref["model_state_dict"]
        return {k.removeprefix("module."): v for k, v in ref.items()}

    @classmethod
    def reference_config(cls, state_dict: dict[str, Tensor], **overrides) -> dict:
        """Constructor arguments of a reference state dict: sizes from the tensors, then ``overrides``.

        Heads, dropout and the memory lengths are not in the tensors: they come from the THUMOS defaults
        (16 heads, long 2048 / stride 4, work 32) or ``overrides``.
        """
        sd = cls.reference_to_state_dict(state_dict)
        n_stages = len({k.split(".")[1] for k in sd if k.startswith("enc_queries.")})
        stage_layers = tuple(
            len({k.split(".")[3] for k in sd if k.startswith(f"enc_modules.{i}.layers.")}) for i in range(n_stages)
        )
        kwargs = {
            "in_dim": sd["feature_head_long.input_linear.0.weight"].shape[1],
            "num_classes": sd["classifier.weight"].shape[0],
            "d_model": sd["feature_head_long.input_linear.0.weight"].shape[0],
            "ffn_dim": sd["dec_modules.layers.0.linear1.weight"].shape[0],
            "enc_queries": tuple(sd[f"enc_queries.{i}.weight"].shape[0] for i in range(n_stages)),
            "enc_layers": stage_layers,
            "dec_layers": len({k.split(".")[2] for k in sd if k.startswith("dec_modules.layers.")}),
        }
        if "pos_encoding.pe" in sd:
            kwargs["max_len"] = sd["pos_encoding.pe"].shape[0]
        kwargs.update(overrides)
        return kwargs

    @classmethod
    def from_reference(cls, state_dict: dict[str, Tensor], **config):
        """Build from a reference checkpoint's state dict and load its weights (strict).

        Args:
            state_dict: ``torch.load(path)['model_state_dict']`` of the reference code (or the whole
                checkpoint; ``module.`` prefix allowed).
            **config: constructor arguments that win over the inferred ones (``num_heads``,
                ``long_memory``, ``work_memory``, ...).
        """
        sd = cls.reference_to_state_dict(state_dict)
        model = cls(**cls.reference_config(sd, **config))
        model.load_state_dict(sd, strict=True)
        return model


__all__ = ["LSTR"]
