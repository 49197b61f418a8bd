"""MAT: Memory-and-Anticipation Transformer for online action detection (Wang et al., ICCV 2023,
arXiv 2308.07893).

A fork of LSTR (:mod:`oad.models.lstr`). The *long* memory (``N`` chunks sampled every ``long_stride``
chunks before the work window, no positional encoding) is cut into ``groups`` groups; each is compressed by
``enc_queries`` learned queries (one decoder layer) and averaged to one token, and a ``enc_self_layers``-layer
encoder runs over the ``groups`` tokens. The *work* memory (the last ``W`` chunks, positions ``0..W-1``) is
followed by ``anticipation`` learned queries (the first rows of ``final_query``, positions ``W..W+A-1``) and
decoded causally against the compressed memory. Then the "circular" interaction: ``gen_queries`` learned
queries generate future tokens from ``[memory; decoded work]``; ``cci_times`` times the work tokens attend
to ``[memory; themselves causally; future tokens]`` and (once, then causally) ``future_steps`` future
queries attend to ``[memory; work; future]``. Every attention keeps only the top 75% of the keys of each
query (``int(S * 3 // 4)`` of ``S``). Every work stage is classified (detection: row ``W - 1``; the
anticipation rows ``W + j`` predict chunk ``t + 1 + j``), and both future stages (the first interpolated
to ``future_steps``, nearest).

Faithful to the reference code (github.com/Echo0125/MAT-Memory-and-Anticipation-Transformer,
``models/lstr.py``, class ``LSTR``; ``models/transformer/``; config
``configs/THUMOS/MAT/mat_long_256_work_8_kinetics_1x.yaml``): the same layers (post-norm, GELU, top-k
attention, its two-stream feature heads with LayerNorm), the same parameter names (``from_reference`` loads
a checkpoint's ``model_state_dict`` with no rename), 107,259,926 parameters at the THUMOS config, the
reference forward (:meth:`MAT.forward`) and its batch inference's windows (``forward_video`` with
``reference_rows=True``). What oad does differently, and why:

- **Grouping per sample.** The reference compresses in groups only when the *whole batch* holds fewer than
  ``groups`` padded long-memory slots (``(memory_key_padding_mask == -inf).sum() < GROUPS``), else it
  compresses all ``N`` tokens at once: a chunk's score depends on what else is in its batch. oad applies the
  same test to each sample on its own (``grouping="sample"``): a sample is compressed in groups when *it*
  has fewer than ``groups`` padded slots. This is the reference at batch size 1, whatever the batch.
  ``grouping="batch"`` reproduces the reference's batch-wide rule (used only by the parity test).
- **Chunk ``t`` is scored from chunks ``<= t`` only, always.** The future tokens are generated from the
  whole work window and every work token attends to them, so a work token's output depends on every chunk
  of its window. The reference's batch inference scores the first ``W`` chunks of a video in one pass over
  window ``0 .. W-1`` (chunk 0 sees chunk ``W - 1``). oad scores every chunk ``t`` as the last work token of
  the window ending at ``t`` (for ``t < W - 1`` the shorter window ``0 .. t``, positions ``0 .. t``, with the
  anticipation queries at their positions ``W .. W+A-1``); ``forward_video(..., reference_rows=True)``
  replaces the first ``W`` chunks' scores with the reference's one pass (parity test only).
- **Training is causal too** (:meth:`MAT.training_logits`): the reference supervises all ``W`` rows of every
  stage of a window (weights 0.2 / 0.2 / 1.0) and both future stages (0.1 each), so rows learn from later
  chunks through the future tokens; oad supervises, per window, the first pass's rows ``0 .. W-2`` (causal)
  and the last refinement's row ``W - 1`` (the row scored at test time) with one loss (LSTR's). The
  anticipation rows and future stages are trained only through those rows. Training them directly, with
  the targets of the ``A`` and ``future_steps`` chunks after each window (labels, not inputs; the
  reference's windows at stride ``W + A``) and the reference's weights on the causal rows (0.2 on the first
  pass, 0.2 / 1.0 on each refinement's last work row and anticipation rows, 0.1 per future stage), lost on
  the built-in data's validation split: mat_demo validation mAP 0.26 / 0.37 (seeds 20 / 21) against
  0.52 / 0.48 with these rows (docs/benchmarks.md section 12); a refinement then has one detection row per
  window to learn from, where the reference has ``W`` (those that see later chunks).
- **Every layer of a stack is drawn on its own**, not copied from one layer (:class:`oad.models.lstr.Decoder`
  says how the reference does it). With the same initialisation both codes train MAT alike; oad's draws and
  its causal rows are why it trains a better MAT than the reference code (docs/benchmarks.md sections 16, 27).
- **Streaming equals the offline scoring** (:mod:`oad.online.mat`). The reference's stream mode is LSTR's,
  without the refinement, the groups or the top-k: it cannot reproduce its own batch results.
- Top-k keeps at least one key (the reference keeps ``int(S * 3 // 4)``, none for a single key: NaN), and
  groups of fewer tokens than there are groups are refused (a grouped window's first group could be all
  padding: NaN scores in the reference).
- Inputs are the concatenated chunk features (RGB then flow, ``in_dim``, split at ``visual_dim``).
- Only the reference's THUMOS layout is built: ``ENC_MODULE [[Q, n, True], [-1, m, True]]``, decoders and
  encoder with final LayerNorms, ``cci_times >= 2``, work and anticipation sample rate 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oad.models.base import OnlineModel
from oad.models.lstr import (
    ACTIVATIONS,
    LSTR,
    Decoder,
    DecoderLayer,
    MultiheadAttention,
    PositionalEncoding,
    TwoStreamFeatureHead,
    causal_bias,
    memory_indices,
)


# -- layers (reference ``models/transformer`` with ``knn=True``, ``models/feature_head.py``) -----------------
def kept_keys(num_keys: int) -> int:
    """Keys each query keeps: the reference's ``int(S * 3 // 4)``, at least one."""
    return max(1, num_keys * 3 // 4)


def keep_top(logits: Tensor, k: int) -> Tensor:
    """``logits (..., S)`` with everything below each row's ``k``-th largest value set to ``-inf``.

    The reference scatters the indices of ``topk``; the two differ only on exact ties at the cut-off.
    """
    if k >= logits.shape[-1]:
        return logits
    threshold = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(B, L, d)`` -> ``(B, H, L, d/H)``."""
    B, L, d = x.shape
    return x.reshape(B, L, num_heads, d // num_heads).transpose(1, 2)


def topk_attend(q: Tensor, k: Tensor, v: Tensor, attn_bias: Tensor | None = None, dropout: float = 0.0) -> Tensor:
    """Top-k attention of projected heads: ``q (B, H, Lq, hd)`` (already scaled), ``k``, ``v`` ``(B, H, S, hd)``,
    an additive bias broadcastable to ``(B, H, Lq, S)`` -> ``(B, Lq, H * hd)`` (before the output projection)."""
    B, H, Lq, hd = q.shape
    logits = q @ k.transpose(-1, -2)  # (B, H, Lq, S)
    if attn_bias is not None:
        logits = logits + attn_bias
    weights = torch.softmax(keep_top(logits, kept_keys(k.shape[2])), dim=-1)
    if dropout:
        weights = F.dropout(weights, dropout)
    return (weights @ v).transpose(1, 2).reshape(B, Lq, H * hd)  # (B, H, Lq, hd) -> (B, Lq, d)


class TopKAttention(MultiheadAttention):
    """LSTR's attention (same parameters) keeping only the top 75% of the keys of each query
    (:func:`kept_keys`); the additive mask is applied before the cut-off, as in the reference."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        H = self.num_heads
        (wq, bq), (wk, bk), (wv, bv) = self.projections()
        q = split_heads(F.linear(query, wq, bq) * (query.shape[-1] // H) ** -0.5, H)
        k, v = split_heads(F.linear(key, wk, bk), H), split_heads(F.linear(value, wv, bv), H)
        return self.out_proj(topk_attend(q, k, v, attn_bias, self.dropout if self.training else 0.0))


class TopKDecoderLayer(DecoderLayer):
    """Reference ``TransformerDecoderLayer`` called with ``knn=True``."""

    attention = TopKAttention


class TopKDecoder(Decoder):
    """Reference ``TransformerDecoder`` of :class:`TopKDecoderLayer` and a final LayerNorm."""

    layer = TopKDecoderLayer


class EncoderLayer(nn.Module):
    """Reference ``TransformerEncoderLayer`` with ``knn=True`` (post-norm):
    ``x = LN1(x + SA(x)); x = LN2(x + lin2(act(lin1 x)))``."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float, activation: str):
        super().__init__()
        self.self_attn = TopKAttention(d_model, num_heads, dropout)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.dropout1(self.self_attn(x, x, x)))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x))))))


class Encoder(nn.Module):
    """Reference ``TransformerEncoder``: a stack of :class:`EncoderLayer` and a final LayerNorm."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float, num_layers: int, activation: str):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, num_heads, ffn_dim, dropout, activation) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class MATOutput(NamedTuple):
    """Logits of every stage of a batch of windows (the reference returns the same two lists).

    Attributes:
        work: ``cci_times + 1`` tensors ``(B, W' + A, C)``: the decoder's pass, then each refinement; rows
            ``0 .. W'-1`` are the work chunks, rows ``W' + j`` the anticipation of ``j + 1`` chunks ahead.
        future: ``cci_times`` tensors ``(B, future_steps, C)``: the generated future tokens (interpolated,
            nearest) and each future refinement, the chunks ``1 .. future_steps`` after the window.
    """

    work: list[Tensor]
    future: list[Tensor]


class Constants(NamedTuple):
    """Input-independent pieces of the inference paths (eval: no dropout), computed once.

    Attributes:
        enc_tgt: ``(Q, d)`` the compression queries after their self-attention block.
        enc_q: ``(H, Q, d/H)`` their cross-attention query projections, scaled by ``(d/H)^-1/2``.
        gen_tgt: ``(Qg, d)`` the generation queries after the first generation layer's self-attention block.
        fut_tgt: ``(F, d)`` the future queries after the first future fusion's self-attention block.
    """

    enc_tgt: Tensor
    enc_q: Tensor
    gen_tgt: Tensor
    fut_tgt: Tensor


def decode_from(decoder: Decoder, tgt: Tensor, memory: Tensor) -> Tensor:
    """``decoder(queries, memory)`` (no masks) given ``tgt (B, Q, d)``, its first layer's self-attention block
    of the queries (a constant for learned queries)."""
    x = decoder.layers[0].cross_block(tgt, memory)
    for layer in decoder.layers[1:]:
        x = layer(x, memory)
    return decoder.norm(x)


#: The reference config defaults (``config/defaults.py``) and the THUMOS MAT config where the tensors do not
#: say: keys of ``MODEL.LSTR`` (and ``DATA``).
PAPER_REFERENCE = {
    "NUM_HEADS": 4, "DROPOUT": 0.0, "ACTIVATION": "gelu", "LONG_MEMORY_SECONDS": 256, "LONG_MEMORY_SAMPLE_RATE": 4,
    "WORK_MEMORY_SECONDS": 8, "WORK_MEMORY_SAMPLE_RATE": 1, "ANTICIPATION_SECONDS": 2,
    "ANTICIPATION_SAMPLE_RATE": 1, "GROUPS": 8,
}


class MAT(OnlineModel):
    """Memory-and-Anticipation Transformer.

    Args:
        in_dim: input feature size per chunk (RGB then flow; 3072 on THUMOS).
        num_classes: classes including Background (and Ambiguous for THUMOS).
        visual_dim: RGB part of ``in_dim`` (default ``2 * in_dim // 3``: 2048 of 3072).
        d_model: width (the feature heads' output size).
        num_heads: attention heads of every layer.
        ffn_dim: FFN hidden size.
        dropout: dropout of positional encodings, residual branches, FFNs and attention weights.
        activation: FFN activation, ``"gelu"`` or ``"relu"``.
        long_memory: long-memory span in chunks (1024 = 256 s at 4 chunks/s).
        long_stride: long-memory sampling stride; ``N = long_memory // long_stride`` tokens.
        work_memory: work-memory length ``W`` in chunks.
        anticipation: anticipation queries ``A`` (chunks predicted ahead; 8 = 2 s).
        future_steps: future queries (``final_query`` rows; 48 = 12 s); ``A <= future_steps``.
        groups: long-memory groups (0: never grouped); ``N`` must be a multiple.
        enc_queries: learned queries compressing each group (or the whole memory).
        enc_layers: decoder layers of that compression.
        enc_self_layers: encoder layers over the compressed tokens.
        dec_layers: layers of the work decoder.
        gen_queries: learned queries generating the future tokens.
        gen_layers: layers of the generation decoder.
        cci_times: rounds of circular interaction (>= 2).
        grouping: ``"sample"`` (oad: each sample's own padding decides) or ``"batch"`` (the reference's
            batch-wide rule; parity tests only).
        max_len: rows of the positional table (reference 5000).
    """

    future_offset = 1
    online_step = "oad.online.mat:MATStep"
    samples = "oad.data.samples:lstr_memory_windows"  # LSTR's training windows (linspace long memory)

    # registry (oad/models/registry.py): the tests' tiny instance (long memory 16 chunks = 4 tokens in 2
    # groups, work memory 4: test videos are longer than both, and shorter), benchmark rows
    tiny = dict(d_model=32, num_heads=4, ffn_dim=48, long_memory=16, work_memory=4, anticipation=2,
                future_steps=4, groups=2, enc_queries=4, gen_queries=4)
    tiny_init_norms = False  # post-norm layers keep LayerNorm at 1/0
    int8_tolerance = None  # no int8 step (oad/online/mat.py says why)
    paper_variants = {"MAT (long 1024)": {}}

    @staticmethod
    def recognises_reference(names: set[str]) -> bool:
        # CMeRT's checkpoints have gen_query and work_fusions too, but no fut_fusions (MAT's circular rounds)
        return ("gen_query.weight" in names and "work_fusions.0.norm.weight" in names
                and any(n.startswith("fut_fusions.") for n in names))

    def __init__(
        self,
        *,
        in_dim: int,
        num_classes: int = 22,
        visual_dim: int | None = None,
        d_model: int = 1024,
        num_heads: int = 4,
        ffn_dim: int = 1024,
        dropout: float = 0.0,
        activation: str = "gelu",
        long_memory: int = 1024,
        long_stride: int = 4,
        work_memory: int = 32,
        anticipation: int = 8,
        future_steps: int = 48,
        groups: int = 8,
        enc_queries: int = 16,
        enc_layers: int = 1,
        enc_self_layers: int = 2,
        dec_layers: int = 2,
        gen_queries: int = 32,
        gen_layers: int = 2,
        cci_times: int = 2,
        grouping: str = "sample",
        max_len: int = 5000,
    ):
        super().__init__()
        if long_memory % long_stride:
            raise ValueError(f"long_memory {long_memory} is not a multiple of long_stride {long_stride}")
        num_long = long_memory // long_stride
        if groups and num_long % groups:
            raise ValueError(f"{num_long} long-memory tokens do not split into {groups} groups")
        if groups and num_long // groups < groups:
            # a window with up to groups - 1 padded slots is grouped: its first group could be all padding
            # (the reference's scores are then NaN)
            raise ValueError(f"groups of {num_long // groups} tokens are fewer than the {groups} groups")
        if not 0 < anticipation <= future_steps:
            raise ValueError(f"need 0 < anticipation <= future_steps, got {anticipation}, {future_steps}")
        if cci_times < 2:
            raise ValueError(f"cci_times must be >= 2 (the reference indexes a first future fusion), got {cci_times}")
        if grouping not in ("sample", "batch"):
            raise ValueError(f"grouping must be 'sample' or 'batch', got {grouping!r}")
        if work_memory + anticipation > max_len:
            raise ValueError(f"max_len {max_len} is too small for {work_memory} + {anticipation} positions")
        visual_dim = 2 * in_dim // 3 if visual_dim is None else visual_dim
        if not 0 < visual_dim < in_dim:
            raise ValueError(f"visual_dim {visual_dim} must split in_dim {in_dim} in two")
        self.in_dim, self.num_classes, self.d_model, self.num_heads = in_dim, num_classes, d_model, num_heads
        self.visual_dim = visual_dim
        self.long_memory, self.long_stride, self.work_memory = long_memory, long_stride, work_memory
        self.num_long, self.num_queries, self.future_steps = num_long, anticipation, future_steps
        self.groups, self.cci_times, self.grouping = groups, cci_times, grouping
        layer_args = (d_model, num_heads, ffn_dim, dropout)

        self.feature_head_long = TwoStreamFeatureHead(visual_dim, in_dim - visual_dim, d_model)
        self.feature_head_work = TwoStreamFeatureHead(visual_dim, in_dim - visual_dim, d_model)
        self.pos_encoding = PositionalEncoding(d_model, dropout, max_len)
        self.enc_queries = nn.ModuleList([nn.Embedding(enc_queries, d_model)])
        self.enc_modules = nn.ModuleList([
            TopKDecoder(*layer_args, enc_layers, activation),
            Encoder(*layer_args, enc_self_layers, activation),
        ])
        self.dec_modules = TopKDecoder(*layer_args, dec_layers, activation)
        self.gen_query = nn.Embedding(gen_queries, d_model)
        self.gen_layer = TopKDecoder(*layer_args, gen_layers, activation)
        self.final_query = nn.Embedding(future_steps, d_model)
        self.work_fusions = nn.ModuleList(TopKDecoder(*layer_args, 1, activation) for _ in range(cci_times))
        self.fut_fusions = nn.ModuleList(TopKDecoder(*layer_args, 1, activation) for _ in range(cci_times - 1))
        self.classifier = nn.Linear(d_model, num_classes)

    # -- the reference forward -------------------------------------------------------------------------------
    def grouped(self, valid: Tensor) -> Tensor:
        """``(B,)`` bool: which samples compress their long memory in groups (``valid (B, N)`` bool).

        Reference rule: fewer than ``groups`` padded slots; counted per sample (``grouping="sample"``) or over
        the whole batch (``"batch"``, the reference).
        """
        padded = (~valid).sum(dim=1)
        if self.grouping == "batch":
            padded = padded.sum().expand_as(padded)
        return (padded < self.groups) if self.groups else torch.zeros_like(padded, dtype=torch.bool)

    def group_view(self, x: Tensor, grouped: bool) -> Tensor:
        """``(B, N, ...)`` long-memory rows -> ``(B * groups, N / groups, ...)`` if ``grouped`` (group-major per
        sample), else ``x``."""
        if not grouped:
            return x
        return x.reshape(x.shape[0] * self.groups, x.shape[1] // self.groups, *x.shape[2:])

    def key_bias(self, valid: Tensor, grouped: bool, dtype: torch.dtype) -> Tensor:
        """Additive padding bias ``(b, 1, 1, S)`` of the compression's keys (``b``, ``S`` as :meth:`group_view`)."""
        bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(~valid, float("-inf"))
        return self.group_view(bias, grouped)[:, None, None, :]

    def encode(self, compressed: Tensor, batch: int, grouped: bool) -> Tensor:
        """The compression's output ``(b, Q, d)`` -> memory ``(batch, M, d)``: grouped, each group's ``Q`` tokens
        averaged to one (``M = groups``), else ``M = Q``; then the encoder."""
        if grouped:
            compressed = compressed.mean(dim=1).reshape(batch, self.groups, -1)  # one token per group
        return self.enc_modules[1](compressed)

    def compress(self, long_tokens: Tensor, valid: Tensor, grouped: bool) -> Tensor:
        """Long tokens ``(B, N, d)`` and their validity ``(B, N)`` -> memory ``(B, M, d)``: the ``N`` tokens
        compressed by the learned queries in ``groups`` groups or all at once (:meth:`encode`)."""
        x = self.group_view(long_tokens, grouped)
        queries = self.enc_queries[0].weight.expand(x.shape[0], -1, -1)
        out = self.enc_modules[0](queries, x, memory_bias=self.key_bias(valid, grouped, x.dtype))
        return self.encode(out, long_tokens.shape[0], grouped)

    def anticipation_tokens(self, batch: int) -> Tensor:
        """The anticipation queries with their positions ``W .. W+A-1``: ``(batch, A, d)``."""
        antic = self.final_query.weight[: self.num_queries].expand(batch, -1, -1)
        return self.pos_encoding(antic, self.work_memory)

    def refine(self, memory: Tensor, work_tokens: Tensor, consts: Constants | None = None) -> MATOutput:
        """Decoder and circular interaction: ``memory (B, M, d)``, work tokens with positions ``(B, W', d)``;
        with ``consts`` (eval) the learned queries' first self-attention blocks are taken from there."""
        B, M = memory.shape[:2]
        x = torch.cat((work_tokens, self.anticipation_tokens(B)), dim=1)  # (B, L = W' + A, d)
        L = x.shape[1]
        causal = causal_bias(L, device=x.device, dtype=x.dtype)
        output = self.dec_modules(x, memory, causal)
        history = torch.cat((memory, output), dim=1)
        if consts is None:
            future = self.gen_layer(self.gen_query.weight.expand(B, -1, -1), history)
        else:
            future = decode_from(self.gen_layer, consts.gen_tgt.expand(B, -1, -1), history)
        futures, works = [future], [output]
        for i in range(self.cci_times):
            # work tokens attend to [memory | themselves causally | the future tokens]
            memory_bias = F.pad(causal, (M, future.shape[1]))  # (L, L) -> (L, M + L + F)
            output = self.work_fusions[i](output, torch.cat((memory, output, future), dim=1), causal, memory_bias)
            works.append(output)
            total = torch.cat((memory, output, future), dim=1)
            if i == 0 and consts is None:
                future = self.fut_fusions[0](self.final_query.weight.expand(B, -1, -1), total)
                futures.append(future)
            elif i == 0:
                future = decode_from(self.fut_fusions[0], consts.fut_tgt.expand(B, -1, -1), total)
                futures.append(future)
            elif i != self.cci_times - 1:
                fut_causal = causal_bias(future.shape[1], device=x.device, dtype=x.dtype)
                future = self.fut_fusions[i](future, total, fut_causal, F.pad(fut_causal, (M + L, 0)))
                futures.append(future)
        first = F.interpolate(futures[0].transpose(1, 2), size=self.future_steps).transpose(1, 2)  # nearest
        return MATOutput(
            [self.classifier(w) for w in works],
            [self.classifier(first)] + [self.classifier(f) for f in futures[1:]],
        )

    def by_path(self, grouped: Tensor, run) -> MATOutput:
        """``run(rows, grouped_or_not) -> MATOutput`` on the samples of each grouping path, merged in order."""
        if bool(grouped.all()) or not bool(grouped.any()):
            return run(slice(None), bool(grouped[0]))
        parts = [(rows, run(rows, g)) for g, rows in ((True, grouped), (False, ~grouped))]

        def merge(i: int, name: str) -> Tensor:
            first = getattr(parts[0][1], name)[i]
            out = first.new_empty(grouped.shape[0], *first.shape[1:])
            for rows, o in parts:
                out[rows] = getattr(o, name)[i]
            return out

        return MATOutput([merge(i, "work") for i in range(self.cci_times + 1)],
                         [merge(i, "future") for i in range(self.cci_times)])

    def forward_tokens(self, long_tokens: Tensor, valid: Tensor, work_tokens: Tensor) -> MATOutput:
        """The network after the feature heads, each sample on its grouping path.

        Args:
            long_tokens: ``(B, N, d)`` long-head outputs (no positions).
            valid: ``(B, N)`` bool, True on real long-memory tokens.
            work_tokens: ``(B, W', d)`` work-head outputs with their positions.
        """
        return self.by_path(self.grouped(valid), lambda rows, g: self.refine(
            self.compress(long_tokens[rows], valid[rows], g), work_tokens[rows]))

    def forward(self, long_x: Tensor, work_x: Tensor, long_mask: Tensor | None = None) -> MATOutput:
        """Reference forward: every stage's logits of a batch of windows.

        Args:
            long_x: ``(B, N, in_dim)`` long-memory chunks, oldest first (left padding allowed).
            work_x: ``(B, W', in_dim)`` work-memory chunks, ``W' <= W``, oldest first.
            long_mask: ``(B, N)`` bool, True for real long-memory tokens, or additive (0 / -inf) as in the
                reference; None when every token is real.
        """
        if long_x.shape[1] != self.num_long:
            raise ValueError(f"long memory of {long_x.shape[1]} tokens, expected {self.num_long}")
        if work_x.shape[1] > self.work_memory:
            raise ValueError(f"work memory of {work_x.shape[1]} chunks is longer than {self.work_memory}")
        if long_mask is None:
            valid = torch.ones(long_x.shape[:2], dtype=torch.bool, device=long_x.device)
        else:
            valid = long_mask if long_mask.dtype == torch.bool else long_mask == 0
        work_tokens = self.pos_encoding(self.feature_head_work(work_x), 0)
        return self.forward_tokens(self.feature_head_long(long_x), valid, work_tokens)

    def training_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Causal supervision of a work window: ``(B, W, C)`` logits and an empty future ``(B, W, 0, C)``.

        Row ``r < W - 1`` is the decoder's first pass at chunk ``r`` (causal: the work decoder masks later
        chunks and the future tokens do not enter it); row ``W - 1`` is the last refinement's score of the
        last chunk, the row scored at test time (its window's future tokens come from chunks ``<= W - 1``).
        The reference supervises every row of every stage, rows ``r < W - 1`` of the refinements through
        future tokens generated from later chunks. On the built-in data (mat_demo recipe, scored causally by
        ``forward_video``) supervising every row of the last refinement instead gave test mAP 0.340 / 0.284
        (seeds 20 / 21) against 0.429 / 0.427 with these rows: what a row learns from later chunks is not
        there at test time.
        """
        out = self(batch["long_features"], batch["features"], batch["long_mask"])
        W = batch["features"].shape[1]
        logits = torch.cat((out.work[0][:, : W - 1], out.work[-1][:, W - 1 : W]), dim=1)  # (B, W, C)
        return logits, logits.new_zeros(*logits.shape[:2], 0, logits.shape[-1])

    # -- whole videos ----------------------------------------------------------------------------------------
    def long_memory_indices(self, work_start: Tensor) -> tuple[Tensor, Tensor]:
        """Long-memory chunk indices ``(K, N)`` and validity ``(K, N)`` of the windows starting at
        ``work_start (K,)``: the reference test sampler (LSTR's, :func:`oad.models.lstr.memory_indices`)."""
        return memory_indices(work_start, self.num_long, self.long_memory, self.long_stride)

    # -- inference (eval): per-chunk keys and values, constant queries ------------------------------------------
    def inference_constants(self) -> Constants:
        """The learned queries' input-independent terms (see :class:`Constants`); eval only."""
        if len(self.enc_modules[0].layers) != 1:
            raise NotImplementedError("the inference paths need a single-layer compression")
        layer = self.enc_modules[0].layers[0]
        enc_tgt = layer.self_block(self.enc_queries[0].weight[None])  # (1, Q, d)
        (wq, bq), _, _ = layer.multihead_attn.projections()
        enc_q = split_heads(F.linear(enc_tgt, wq, bq) * (self.d_model // self.num_heads) ** -0.5, self.num_heads)
        return Constants(
            enc_tgt[0], enc_q[0],
            self.gen_layer.layers[0].self_block(self.gen_query.weight[None])[0],
            self.fut_fusions[0].layers[0].self_block(self.final_query.weight[None])[0],
        )

    def long_kv(self, h_long: Tensor) -> tuple[Tensor, Tensor]:
        """The compression's keys and values of long-head outputs ``(..., d)``: a chunk's are the same in every
        window (no positions on the long memory), so they are computed once per chunk."""
        _, (wk, bk), (wv, bv) = self.enc_modules[0].layers[0].multihead_attn.projections()
        return F.linear(h_long, wk, bk), F.linear(h_long, wv, bv)

    def compress_kv(self, keys: Tensor, values: Tensor, valid: Tensor, grouped: bool, consts: Constants) -> Tensor:
        """:meth:`compress` from the long tokens' keys and values ``(B, N, d)`` (:meth:`long_kv`) and the
        constant queries; eval only."""
        layer, H = self.enc_modules[0].layers[0], self.num_heads
        k, v = split_heads(self.group_view(keys, grouped), H), split_heads(self.group_view(values, grouped), H)
        attn = topk_attend(consts.enc_q.expand(k.shape[0], -1, -1, -1), k, v,
                           self.key_bias(valid, grouped, keys.dtype))  # (b, Q, d)
        x = layer.norm2(consts.enc_tgt + layer.multihead_attn.out_proj(attn))  # the rest of cross_block
        x = layer.norm3(x + layer.linear2(layer.activation(layer.linear1(x))))
        return self.encode(self.enc_modules[0].norm(x), keys.shape[0], grouped)

    def forward_kv(self, keys: Tensor, values: Tensor, valid: Tensor, work_tokens: Tensor,
                   consts: Constants) -> MATOutput:
        """:meth:`forward_tokens` from the long tokens' keys and values (:meth:`long_kv`); eval only."""
        return self.by_path(self.grouped(valid), lambda rows, g: self.refine(
            self.compress_kv(keys[rows], values[rows], valid[rows], g, consts), work_tokens[rows], consts))

    def score_windows(self, kv: tuple[Tensor, Tensor], h_work: Tensor, ends: Tensor, length: int,
                      consts: Constants) -> MATOutput:
        """Windows of ``length`` chunks ending at chunks ``ends (K,)`` of one video, from its long keys and
        values ``kv`` and work-head outputs ``h_work`` ``(T, d)``: each window's long memory is that of its
        start."""
        starts = ends - length + 1
        idx, valid = self.long_memory_indices(starts)  # (K, N)
        work = h_work[starts[:, None] + torch.arange(length, device=ends.device)]  # (K, length, d)
        return self.forward_kv(kv[0][idx], kv[1][idx], valid, self.pos_encoding(work, 0), consts)

    @torch.no_grad()
    def forward_video(self, features: Tensor, reference_rows: bool = False,
                      max_batch: int | None = None) -> tuple[Tensor, Tensor]:
        """Scores of a whole video, chunk ``t`` from chunks ``<= t`` (eval mode, no gradients).

        Chunk ``t`` is the last work row of the last refinement of the window ending at ``t``
        (``max(0, t - W + 1) .. t``); its anticipation rows are its future logits. With ``reference_rows`` the
        first ``min(W, T)`` chunks' logits are instead the rows of one pass over window ``0 .. W-1`` (the
        reference batch inference: not causal).

        Args:
            features: ``(T, in_dim)`` chunk features of one video.
            reference_rows: the reference's first-window rows (parity tests).
            max_batch: windows per batch (default 64).

        Returns:
            ``logits (T, C)`` and ``future (T, A, C)``.
        """
        T = features.shape[0]
        C, W, A = self.num_classes, self.work_memory, self.num_queries
        logits, future = features.new_zeros(T, C), features.new_zeros(T, A, C)
        if T == 0:
            return logits, future
        consts = self.inference_constants()
        kv = self.long_kv(self.feature_head_long(features))  # (T, d) each, once per chunk
        h_work = self.feature_head_work(features)
        for t in range(min(W - 1, T)):  # shorter first windows, one length each
            out = self.score_windows(kv, h_work, torch.tensor([t], device=features.device), t + 1, consts).work[-1]
            logits[t], future[t] = out[0, t], out[0, t + 1:]
        batch = max_batch or 64
        for start in range(W - 1, T, batch):
            ends = torch.arange(start, min(start + batch, T), device=features.device)
            out = self.score_windows(kv, h_work, ends, W, consts).work[-1]  # (K, W + A, C)
            logits[ends], future[ends] = out[:, W - 1], out[:, W:]
        if reference_rows:
            first = min(W, T)
            ends = torch.tensor([first - 1], device=features.device)
            logits[:first] = self.score_windows(kv, h_work, ends, first, consts).work[-1][0, :first]
        return logits, future

    # -- reference checkpoints -------------------------------------------------------------------------------
    # the names are the reference's, as LSTR's: the same unpacking of a checkpoint
    reference_to_state_dict = staticmethod(LSTR.reference_to_state_dict)

    @classmethod
    def reference_config(cls, state_dict: dict[str, Tensor], config_file: str | Path | None = None,
                         **overrides) -> dict:
        """Constructor arguments of a reference state dict and config.

        Widths, query counts and layer counts come from the tensors; heads, dropout, activation, the memory
        lengths (seconds x ``DATA.FPS``) and ``GROUPS`` from ``config_file`` (a YAML in the reference schema,
        e.g. its ``configs/THUMOS/MAT/*.yaml``) where it sets them, else from the THUMOS MAT config
        (:data:`PAPER_REFERENCE`, 4 chunks/s); then ``overrides``.
        """
        import yaml

        sd = cls.reference_to_state_dict(state_dict)
        ref, fps = dict(PAPER_REFERENCE), 4
        if config_file is not None:
            with open(config_file) as f:
                cfg = yaml.safe_load(f) or {}
            ref.update((cfg.get("MODEL") or {}).get("LSTR") or {})
            fps = (cfg.get("DATA") or {}).get("FPS") or fps
            num_classes = (cfg.get("DATA") or {}).get("NUM_CLASSES")
            if num_classes is not None and num_classes != sd["classifier.weight"].shape[0]:
                raise ValueError(f"DATA.NUM_CLASSES {num_classes} but the classifier has "
                                 f"{sd['classifier.weight'].shape[0]} rows")
        for key in ("WORK_MEMORY_SAMPLE_RATE", "ANTICIPATION_SAMPLE_RATE"):
            if ref[key] != 1:
                raise NotImplementedError(f"{key} {ref[key]}: only 1 is supported")

        def layers(prefix: str) -> int:
            return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})

        head = "feature_head_long."
        kwargs = {
            "in_dim": sd[head + "visual_linear.0.weight"].shape[1] + sd[head + "motion_linear.0.weight"].shape[1],
            "visual_dim": sd[head + "visual_linear.0.weight"].shape[1],
            "num_classes": sd["classifier.weight"].shape[0],
            "d_model": sd["classifier.weight"].shape[1],
            "ffn_dim": sd["dec_modules.layers.0.linear1.weight"].shape[0],
            "num_heads": int(ref["NUM_HEADS"]),
            "dropout": float(ref["DROPOUT"]),
            "activation": str(ref["ACTIVATION"]),
            "long_memory": int(round(ref["LONG_MEMORY_SECONDS"] * fps)),
            "long_stride": int(ref["LONG_MEMORY_SAMPLE_RATE"]),
            "work_memory": int(round(ref["WORK_MEMORY_SECONDS"] * fps)),
            "anticipation": int(round(ref["ANTICIPATION_SECONDS"] * fps)),
            "future_steps": sd["final_query.weight"].shape[0],
            "groups": int(ref["GROUPS"]),
            "enc_queries": sd["enc_queries.0.weight"].shape[0],
            "enc_layers": layers("enc_modules.0.layers."),
            "enc_self_layers": layers("enc_modules.1.layers."),
            "dec_layers": layers("dec_modules.layers."),
            "gen_queries": sd["gen_query.weight"].shape[0],
            "gen_layers": layers("gen_layer.layers."),
            "cci_times": layers("work_fusions."),
            "max_len": sd["pos_encoding.pe"].shape[0] if "pos_encoding.pe" in sd else 5000,
        }
        kwargs.update(overrides)
        return kwargs

    @classmethod
    def from_reference(cls, state_dict: dict[str, Tensor], config_file: str | Path | None = None, **overrides):
        """Build from a reference checkpoint's state dict (and config) and load its weights (strict).

        Args:
            state_dict: ``torch.load(path)['model_state_dict']`` of the reference code (or the whole
                checkpoint; ``module.`` prefix allowed).
            config_file: the reference's YAML config (see :meth:`reference_config`); None: THUMOS MAT.
            **overrides: constructor arguments that win over the inferred ones.
        """
        sd = cls.reference_to_state_dict(state_dict)
        model = cls(**cls.reference_config(sd, config_file, **overrides))
        model.load_state_dict(sd, strict=True)
        return model


__all__ = ["MAT", "MATOutput", "TopKAttention"]
