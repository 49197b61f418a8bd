"""OadTR-SW: a streaming-native OadTR whose online cost per chunk does not grow with its history.

OadTR (:mod:`oad.models.oadtr`) re-encodes the whole window of the last ``L`` chunks at every chunk
(absolute positions: a chunk's encoding changes as the window slides). OadTR-SW keeps OadTR's parts
(chunk embedding ``linear_encoding``, a task token, a pre-norm encoder, OadTR's post-norm decoder of
``Q`` learned queries predicting the next ``Q`` chunks, the heads ``classifier`` and ``mlp_head`` on
``concat(token, mean(decoder))``) but arranges them so that nothing computed for a chunk ever changes:

- **Encoder**: pre-norm layers of *causal sliding-window* self-attention: chunk ``t`` attends to chunks
  ``t-L+1 .. t`` of the previous layer. Positions are relative only, as ALiBi biases
  (``-slope_h * (t - s)``, the ALiBi paper's geometric slopes per head), so the encoder state of a chunk
  depends on its own past only and is computed once: online, each layer keeps the keys/values of the
  last ``L`` chunks (a ring buffer; attention is order-free given the biases, so the ring is never
  rotated). A final LayerNorm gives each chunk's *memory state*.
- **Readout** (the task token): a learned query attends (one cross-attention, ALiBi biases measured
  from ``t``) to the memory states of chunks ``t-L+1 .. t``, then an FFN (pre-norm) and a LayerNorm.
  The query is a constant, so its projection is computed once; the memory states' keys/values are
  computed once per chunk and cached. ``readout="encoder"`` instead carries the token through the encoder
  layers as OadTR does, made causal: at each layer the token of chunk ``t`` is one more query row over
  that layer's cached keys/values of chunks ``t-L+1 .. t`` and its own (chunks never attend to it, so
  their states do not change), then the encoder's final LayerNorm; one more row per encoder layer and
  chunk (0.30 instead of 0.27 GFLOP per chunk at paper size, without the long memory; the long memory
  needs the cross readout).
- **Decoder**: OadTR's post-norm layers (causal self-attention among the ``Q`` queries, cross-attention,
  FFN), cross-attending to ``[the memory states of the last K chunks ; the readout token]`` with ALiBi
  biases (the token at distance 0). The keys/values of each memory state are computed once per chunk
  and layer and cached (``K`` slots per layer), the token's once per step. The first layer's
  self-attention block and its cross-attention query projection see only the learned queries: they are
  constants, computed once per forward in evaluation and once per stream set online.

- **Long memory** (``long_memory = M > 0``, TeSTra's constant-cost long memory in its simplest form): at
  chunk ``t``, one summary per decay ``d_j`` (``long_decays``), the ``d_j``-weighted mean of the embedded
  chunks ``t-M+1 .. t`` (``sum_i d_j^i e_{t-i} / sum_i d_j^i`` over the chunks there are; decay 1: their plain
  mean). Each becomes a token ``LN(summary_j) + embedding_j`` that the readout and every decoder layer read
  as ``J`` more keys at bias 0, next to the memory states and the task token. The summaries reach ``M``
  chunks back, past the encoder's receptive field, at a cost that does not grow with the history: online a
  ring of the last ``M`` embeddings and one ``(J, M)`` weighting of it per chunk (``2 J M d`` FLOPs), plus
  the keys/values of ``J`` tokens per layer: at paper size, ``M = 2048``, 0.324 instead of 0.267 GFLOP per
  chunk.

Offline (training, :meth:`OadTRSW.forward_video`) everything runs in parallel over a sequence with banded
masks, tiled over time (``tile`` positions at a time: the keys of a tile are its own positions and the
``L - 1`` before them; the decoder's ``Q`` queries of all positions of a tile are one batch of
``tile * Q`` rows whose masks admit their own band of memory states and their own token). Padded
positions (before the start of a video) are never attended; a padded position attends to itself only
so that no row is empty (its outputs are never used).

Changes from the design brief (both needed for the FLOP targets at paper size, in_dim 3072, d 1024,
``L = 64``; numbers from ``torch.utils.flop_counter``, tests/test_models_oadtr_sw.py):

- ``decoder_dim`` (OadTR's name for the decoder width; its keys/values project from ``d_model``) is 512
  at paper size: the decoder's dense layers run for ``Q = 8`` queries x 5 layers at every chunk, about
  ``8 * d_dec^2`` multiply-adds per query and layer, so a 1024-wide decoder alone costs ~0.6 GFLOP per
  chunk and the step could not be 10x below OadTR's 4.95 GFLOP (with ``d_dec = 1024`` it is ~7x).
- ``decoder_window`` ``K`` (16 by default): the decoder cross-attends to the memory states of the last
  ``K`` chunks (plus the token, which summarises all ``L``), not of all ``L``: attention over ``L`` keys
  for ``Q`` queries in each of 5 layers would make the step grow by ~35% from ``L = 64`` to ``L = 1024``.
  With ``K`` fixed only the encoder's and the readout's attention grows with ``L`` (~6% over that range).
- Training samples carry ``context`` chunks of history in front of the ``seq_len`` supervised ones
  (:mod:`oad.data.sequences`); by default the receptive field ``R = (num_layers + 1) * (L - 1)`` or
  ``M - 1`` where longer, so every supervised chunk is computed exactly as online. The encoder runs on the
  last ``R`` context positions only; the older ones are only averaged for the long memory.

Args (keyword only; OadTR's names where they exist):
    in_dim, num_classes; window: ``L``; d_model, num_heads, num_layers, mlp_dim: the encoder (and the
    readout: its heads, its FFN size); num_queries: ``Q``; decoder_layers, decoder_heads, decoder_dim
    (None: ``d_model``), decoder_ffn_dim, decoder_window: ``K <= L``; readout: ``"cross"`` (the readout above) or
    ``"encoder"`` (the token through the encoder layers); long_memory: ``M`` (0: none; needs the cross
    readout; 0 by default, so that checkpoints saved before it existed rebuild as they were trained;
    ``configs/model/oadtr_sw.yaml`` sets 2048), long_decays: one token per decay in ``(0, 1]``; dropout,
    attn_dropout;
    seq_len: supervised chunks per training sequence (default ``2 * window``); context: history chunks
    in front of them (default ``(num_layers + 1) * (window - 1)``). ``seq_len`` and ``context`` are read
    by the samples function only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oad.data.sequences import sequence_lengths
from oad.models.base import OnlineModel, has_padding


def alibi_slopes(num_heads: int) -> list[float]:
    """The ALiBi slopes of ``num_heads`` heads (Press et al., 2022): ``2^(-8 i / H)``, ``i = 1..H`` for a
    power of two, else those of the next lower power of two completed with every other one of twice it."""

    def pow2(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return pow2(num_heads)
    m = 2 ** math.floor(math.log2(num_heads))
    return pow2(m) + pow2(2 * m)[0::2][: num_heads - m]


def band_bias(q_pos: Tensor, k_pos: Tensor, slopes: list[float], window: int,
              key_valid: Tensor | None = None) -> Tensor:
    """Additive float32 attention bias of queries at ``q_pos (P,)`` on keys at ``k_pos (S,)``.

    Key ``s`` is admitted for query ``t`` when ``0 <= t - s < window`` and ``key_valid[:, s]``, with bias
    ``-slope_h * (t - s)``; a query always admits its own position (a padded query then has one key).

    Returns:
        ``(1, H, P, S)`` without ``key_valid``, else ``(B, H, P, S)`` for ``key_valid (B, S)``.
    """
    rel = q_pos[:, None] - k_pos[None, :]  # (P, S)
    allowed = (rel >= 0) & (rel < window)
    slope = torch.tensor(slopes, dtype=torch.float32, device=q_pos.device)
    bias = -slope[:, None, None] * rel.to(torch.float32)  # (H, P, S)
    if key_valid is None:
        return bias.masked_fill(~allowed, float("-inf"))[None]
    ok = allowed[None] & (key_valid[:, None, :] | (rel == 0)[None])  # (B, P, S)
    return bias[None].masked_fill(~ok[:, None], float("-inf"))


def group_bias(positions: int, group: int, device: torch.device | None = None) -> Tensor:
    """``(P, P * group)`` float32: query row ``i`` admits (bias 0) its own ``group`` keys ``i*group ..``
    of ``P * group`` per-position keys laid out position by position, no other."""
    own = torch.arange(positions * group, device=device) // group == torch.arange(positions, device=device)[:, None]
    return torch.zeros(own.shape, device=device).masked_fill(~own, float("-inf"))


def decoder_bias(q_pos: Tensor, k_pos: Tensor, slopes: list[float], window: int, key_valid: Tensor | None,
                 num_queries: int, group: int = 1) -> Tensor:
    """Bias of the decoder rows of a tile: ``(B|1, H, P*Q, S + P*group)``.

    Keys are the memory states at ``k_pos (S,)`` (a band of ``window`` before each position, ALiBi) and
    then ``group`` keys per position of the tile (its readout token and its long-memory tokens; each
    position admits its own, bias 0); the ``Q`` query rows of a position share its mask.
    """
    bias = with_groups(band_bias(q_pos, k_pos, slopes, window, key_valid), group)  # (B|1, H, P, S+P*G)
    Bb, H, P, Sk = bias.shape
    return bias[:, :, :, None].expand(Bb, H, P, num_queries, Sk).reshape(Bb, H, P * num_queries, Sk)


def with_groups(bias: Tensor, group: int) -> Tensor:
    """A band bias ``(B|1, H, P, S)`` with ``group`` per-position keys appended: ``(B|1, H, P, S + P*group)``."""
    Bb, H, P, _ = bias.shape
    if group == 0:
        return bias
    own = group_bias(P, group, bias.device).to(bias.dtype)
    return torch.cat((bias, own.expand(Bb, H, P, P * group)), dim=-1)


def long_weights(q_pos: Tensor, k_pos: Tensor, decays: tuple[float, ...], memory: int,
                 key_valid: Tensor | None = None) -> Tensor:
    """Normalised exponential weights of the long-memory summaries: ``(B|1, J, P, S)`` float32.

    Query ``t`` weighs key ``s`` by ``decay_j^(t - s)`` over ``0 <= t - s < memory`` (real keys only; a
    query always admits its own position), each row summing to 1: summary ``j`` of chunk ``t`` is an
    exponentially weighted mean of the last ``memory`` chunks (decay 1: their plain mean).
    """
    rel = q_pos[:, None] - k_pos[None, :]  # (P, S)
    ok = ((rel >= 0) & (rel < memory))[None]
    if key_valid is not None:
        ok = ok & (key_valid[:, None, :] | (rel == 0)[None])  # (B, P, S)
    w = age_weights(decays, memory).to(q_pos.device)[:, rel.clamp(0, memory - 1)]  # (J, P, S)
    w = w[None] * ok[:, None]
    return w / w.sum(dim=-1, keepdim=True)


def age_weights(decays: tuple[float, ...], memory: int) -> Tensor:
    """``(J, memory)`` float32: ``decay_j^a`` for a chunk ``a`` steps back (unnormalised), the weights of
    :func:`long_weights` by age, which the online steps arrange over their buffers."""
    d = torch.tensor(decays, dtype=torch.float32)[:, None]
    return d ** torch.arange(memory, dtype=torch.float32)


def ring_bias_table(slopes: list[float], size: int) -> Tensor:
    """ALiBi biases over a ring buffer of ``size`` slots: ``(2 * size, 1, H, 1, size)`` float32.

    Entry ``p`` (``p < size``): the ring is full and the newest chunk is in slot ``p``, slot ``j`` holds
    the chunk ``(p - j) mod size`` steps back. Entry ``size + p``: only slots ``0..p`` were written
    (fewer than ``size`` chunks so far); the others are masked.
    """
    j = torch.arange(size)
    p = torch.arange(size)[:, None]
    slope = torch.tensor(slopes, dtype=torch.float32)[None, :, None]  # (1, H, 1)
    full = -slope * ((p - j) % size).to(torch.float32)[:, None, :]  # (size, H, size)
    part = -slope * (p - j).to(torch.float32)[:, None, :]
    part = part.masked_fill((p - j < 0)[:, None, :], float("-inf"))
    return torch.cat((full, part))[:, None, :, None, :]


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(B, S, d) -> (B, H, S, d/H)``."""
    B, S, d = x.shape
    return x.view(B, S, num_heads, d // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, H, S, dh) -> (B, S, H*dh)``."""
    B, H, S, dh = x.shape
    return x.transpose(1, 2).reshape(B, S, H * dh)


class Attention(nn.Module):
    """Multi-head attention with query/key/value/out projections (OadTR's decoder layout); the keys and
    values may come from another width ``kv_dim``."""

    def __init__(self, d_model: int, num_heads: int, attn_dropout: float, kv_dim: int | None = None):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"width {d_model} is not divisible by {num_heads} heads")
        kv_dim = d_model if kv_dim is None else kv_dim
        self.num_heads, self.attn_dropout = num_heads, attn_dropout
        self.query_projection = nn.Linear(d_model, d_model)
        self.key_projection = nn.Linear(kv_dim, d_model)
        self.value_projection = nn.Linear(kv_dim, d_model)
        self.out_projection = nn.Linear(d_model, d_model)

    def queries(self, x: Tensor) -> Tensor:
        """``(B, S, d) -> (B, H, S, dh)``."""
        return split_heads(self.query_projection(x), self.num_heads)

    def keys_values(self, m: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, S, kv_dim) -> (B, H, S, dh)`` twice."""
        return split_heads(self.key_projection(m), self.num_heads), split_heads(self.value_projection(m), self.num_heads)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, causal: bool = False) -> Tensor:
        """Heads ``(B, H, Sq, dh)`` against ``(B, H, Sk, dh)`` -> ``(B, H, Sq, dh)`` (before the out projection)."""
        if bias is not None:
            bias = bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal,
                                              dropout_p=self.attn_dropout if self.training else 0.0)

    def forward(self, x: Tensor, m: Tensor, bias: Tensor | None = None, causal: bool = False) -> Tensor:
        return self.out_projection(merge_heads(self.attend(self.queries(x), *self.keys_values(m), bias, causal)))


class SlidingEncoderLayer(nn.Module):
    """Pre-norm block, ``x + MHSA(LN(x))`` then ``x + FFN(LN(x))``, with the attention done by the caller
    (banded offline, over the key/value cache online): :meth:`qkv` then :meth:`finish`."""

    def __init__(self, d_model: int, num_heads: int, mlp_dim: int, dropout: float, attn_dropout: float):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads, self.attn_dropout = num_heads, attn_dropout
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, d_model)
        self.dropout = nn.Dropout(dropout)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, S, d)`` -> queries, keys, values ``(B, H, S, dh)`` of ``LN(x)``."""
        B, S, d = x.shape
        qkv = self.qkv_proj(self.norm1(x)).view(B, S, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                              dropout_p=self.attn_dropout if self.training else 0.0)

    def finish(self, x: Tensor, att: Tensor) -> Tensor:
        """The residual of the attention heads ``att (B, H, S, dh)``, then the FFN block: ``(B, S, d)``."""
        x = x + self.dropout(self.proj(merge_heads(att)))
        y = self.dropout(F.gelu(self.fc1(self.norm2(x))))
        return x + self.dropout(self.fc2(y))


class TokenReadout(nn.Module):
    """The task token: a learned query attends to memory states, then ``+ FFN(LN(.))`` and a LayerNorm."""

    def __init__(self, d_model: int, num_heads: int, mlp_dim: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.cls_token = nn.Parameter(torch.empty(1, 1, d_model))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.attn = Attention(d_model, num_heads, attn_dropout)
        self.norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, d_model)
        self.norm_out = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def query(self) -> Tensor:
        """The token's query heads ``(1, H, 1, dh)`` (a constant of the weights)."""
        return self.attn.queries(self.cls_token)

    def finish(self, att: Tensor) -> Tensor:
        """Attention heads ``(B, H, P, dh)`` -> token outputs ``(B, P, d)``."""
        x = self.cls_token + self.dropout(self.attn.out_projection(merge_heads(att)))
        x = x + self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(self.norm(x))))))
        return self.norm_out(x)


class SlidingDecoderLayer(nn.Module):
    """OadTR's post-norm decoder block (causal self-attention among the queries, cross-attention, FFN)
    with the cross-attention's keys/values projected from ``kv_dim`` and computed by the caller."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float, attn_dropout: float,
                 kv_dim: int):
        super().__init__()
        self.self_attention = Attention(d_model, num_heads, attn_dropout)
        self.cross_attention = Attention(d_model, num_heads, attn_dropout, kv_dim=kv_dim)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def self_block(self, x: Tensor) -> Tensor:
        """``(M, Q, d)``: ``LN(x + SelfAttention(x))``, causal among the queries."""
        return self.norm1(x + self.dropout(self.self_attention(x, x, causal=True)))

    def cross_queries(self, x: Tensor, batch: int, positions: int) -> Tensor:
        """Query heads ``(B, H, P*Q, dh)`` of ``x`` broadcastable to ``(B, P, Q, d)``."""
        q = self.cross_attention.query_projection(x)
        Q, d = q.shape[-2:]
        q = q.expand(batch, positions, Q, d).reshape(batch, positions * Q, d)
        return split_heads(q, self.cross_attention.num_heads)

    def cross_block(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        """``x`` broadcastable to ``(B, P, Q, d)`` with its query heads ``q (B, H, P*Q, dh)`` against keys and
        values ``(B, H, S, dh)``: the cross-attention and FFN blocks, ``(B, P, Q, d)``."""
        B = q.shape[0]
        Q, d = x.shape[-2:]
        att = merge_heads(self.cross_attention.attend(q, k, v, bias))  # (B, P*Q, d)
        out = self.cross_attention.out_projection(att).view(B, -1, Q, d)
        x = self.norm2(x + self.dropout(out))
        y = self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))
        return self.norm3(x + y)


class OadTRSW(OnlineModel):
    """Sliding-window OadTR with a per-chunk key/value cache online (see the module docstring)."""

    samples = "oad.data.samples:dense_sequences"  # sequences with their history, every chunk supervised
    online_step = "oad.online.oadtr_sw:OadTRSWStep"
    export_step = "oad.online.oadtr_sw:OadTRSWExportStep"
    future_offset = 1  # future query j (0-based) predicts chunk t + 1 + j
    tile = 256  # positions per attention tile offline (memory of the banded masks and the decoder rows)

    # registry (oad/models/registry.py): the tests' tiny instance, int8 bounds (7 attention layers per step
    # on the tiny model's sharp weights), benchmark rows (flat in the window)
    tiny = dict(window=8, d_model=32, num_heads=4, num_layers=2, mlp_dim=48, num_queries=4, decoder_layers=2,
                decoder_heads=2, decoder_dim=32, decoder_ffn_dim=40, long_memory=12)
    int8_tolerance = {"fp32": 0.05, "offline": 0.03}
    paper_variants = {**{f"OadTR-SW (window {w})": {"config": {"window": w}} for w in (64, 256, 1024)},
                      "OadTR-SW (window 64, no long memory)": {"config": {"long_memory": 0}}}

    def __init__(
        self,
        *,
        in_dim: int,
        num_classes: int = 22,
        window: int = 64,
        d_model: int = 1024,
        num_heads: int = 8,
        num_layers: int = 3,
        mlp_dim: int = 1024,
        num_queries: int = 8,
        decoder_layers: int = 5,
        decoder_heads: int = 4,
        decoder_dim: int | None = 512,
        decoder_ffn_dim: int = 1024,
        decoder_window: int = 16,
        readout: str = "cross",
        long_memory: int = 0,
        long_decays: tuple[float, ...] | list[float] = (0.95, 0.99, 1.0),
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        seq_len: int | None = None,
        context: int | None = None,
    ):
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if num_queries < 1 or decoder_layers < 1:
            raise ValueError(f"OadTRSW needs num_queries >= 1 and decoder_layers >= 1, got {num_queries}, "
                             f"{decoder_layers}")
        decoder_dim = d_model if decoder_dim is None else int(decoder_dim)
        self.in_dim, self.num_classes, self.window = in_dim, num_classes, window
        self.d_model, self.decoder_dim, self.num_queries = d_model, decoder_dim, num_queries
        self.decoder_window = min(int(decoder_window), window)
        if self.decoder_window < 1:
            raise ValueError(f"decoder_window must be >= 1, got {decoder_window}")
        if readout not in ("cross", "encoder"):
            raise ValueError(f"readout must be 'cross' or 'encoder', got {readout!r}")
        self.readout_mode = readout
        self.long_memory = int(long_memory)
        self.long_decays = tuple(float(d) for d in long_decays) if self.long_memory else ()
        if self.long_memory < 0 or (self.long_memory and not self.long_decays):
            raise ValueError(f"long_memory must be >= 0 with at least one decay, got {long_memory}, {long_decays}")
        if any(not 0.0 < d <= 1.0 for d in self.long_decays):
            raise ValueError(f"long_decays must lie in (0, 1], got {list(long_decays)}")
        if self.long_memory and readout != "cross":
            raise ValueError("long_memory needs readout='cross'")
        # the chunks an output reaches back through the encoder and the readout (the long memory aside)
        self.receptive_field = (num_layers + 1) * (window - 1)
        self.seq_len, self.context = sequence_lengths(
            {"window": window, "num_layers": num_layers, "seq_len": seq_len, "context": context,
             "long_memory": self.long_memory})
        self.enc_slopes = alibi_slopes(num_heads)
        self.dec_slopes = alibi_slopes(decoder_heads)

        self.linear_encoding = nn.Linear(in_dim, d_model)
        self.embed_dropout = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(
            SlidingEncoderLayer(d_model, num_heads, mlp_dim, dropout, attn_dropout) for _ in range(num_layers))
        self.encoder_norm = nn.LayerNorm(d_model)
        if readout == "cross":
            self.readout = TokenReadout(d_model, num_heads, mlp_dim, dropout, attn_dropout)
        else:  # the task token runs through the encoder layers (query side only), then encoder_norm
            self.cls_token = nn.Parameter(torch.empty(1, 1, d_model))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.long_memory:  # the long-memory tokens: LN(summary_j) + a learned embedding of decay j
            self.long_norm = nn.LayerNorm(d_model)
            self.long_embed = nn.Parameter(torch.empty(1, 1, len(self.long_decays), d_model))
            nn.init.trunc_normal_(self.long_embed, std=0.02)

        self.decoder_cls_token = nn.Parameter(torch.empty(1, num_queries, decoder_dim))
        nn.init.trunc_normal_(self.decoder_cls_token, std=0.02)
        self.decoder = nn.ModuleList(
            SlidingDecoderLayer(decoder_dim, decoder_heads, decoder_ffn_dim, dropout, attn_dropout, kv_dim=d_model)
            for _ in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.after_dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(decoder_dim, num_classes)
        self.mlp_head = nn.Linear(d_model + decoder_dim, num_classes)

    # -- per-chunk parts -----------------------------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        """Input projection ``(..., in_dim) -> (..., d_model)`` (once per chunk)."""
        return self.linear_encoding(x)

    def decoder_prefix(self) -> tuple[Tensor, Tensor]:
        """The first decoder layer's constants (evaluation): its self-attention block output
        ``(1, 1, Q, d_dec)`` and its cross-attention query heads ``(1, H, Q, dh)``."""
        first = self.decoder[0]
        x = first.self_block(self.decoder_cls_token)[None]  # (1, Q, d) -> (1, 1, Q, d)
        return x, first.cross_queries(x, 1, 1)

    # -- offline -------------------------------------------------------------------------------------------
    def _tiles(self, start: int, end: int) -> list[tuple[int, int]]:
        P = max(1, int(self.tile))
        return [(a, min(end, a + P)) for a in range(start, end, P)]

    def encode(self, e: Tensor, valid: Tensor | None, keys_values: list | None = None) -> Tensor:
        """Memory states ``(B, S, d)`` of embedded chunks ``e (B, S, d)``; ``valid (B, S)`` or None.

        ``keys_values``: a list that receives each encoder layer's keys and values ``(B, H, S, dh)`` (the
        task token of ``readout="encoder"`` attends to them)."""
        L = self.window
        pos = torch.arange(e.shape[1], device=e.device)
        tiles = [(a, b, max(0, a - L + 1)) for a, b in self._tiles(0, e.shape[1])]
        biases = [band_bias(pos[a:b], pos[k0:b], self.enc_slopes, L, None if valid is None else valid[:, k0:b])
                  for a, b, k0 in tiles]
        x = e
        for layer in self.encoder:
            q, k, v = layer.qkv(x)  # (B, H, S, dh)
            if keys_values is not None:
                keys_values.append((k, v))
            att = [layer.attend(q[:, :, a:b], k[:, :, k0:b], v[:, :, k0:b], bias)
                   for (a, b, k0), bias in zip(tiles, biases)]
            x = layer.finish(x, att[0] if len(att) == 1 else torch.cat(att, dim=2))
        return self.encoder_norm(x)

    def long_tokens(self, x: Tensor, valid: Tensor | None, a: int, b: int) -> Tensor | None:
        """The long-memory tokens ``(B, P, J, d)`` of positions ``a .. b-1`` of the chunks ``x (B, S, in_dim)``
        (None without a long memory): ``LN(summary_j) + embedding_j``, summary ``j`` the ``decay_j``-weighted
        mean of the last ``long_memory`` embeddings (:func:`long_weights`).

        The embedding is affine and the weights of a mean sum to 1, so the mean of the embeddings is the
        embedding of the mean of the features: offline the features are averaged first, and the ``M``
        chunks of a training sample's long memory are not embedded one by one (online, where each chunk is
        embedded anyway, the step averages the embeddings)."""
        if not self.long_memory:
            return None
        k0 = max(0, a - self.long_memory + 1)
        pos = torch.arange(x.shape[1], device=x.device)
        w = long_weights(pos[a:b], pos[k0:b], self.long_decays, self.long_memory,
                         None if valid is None else valid[:, k0:b])  # (B|1, J, P, S)
        mean = torch.matmul(w.to(x.dtype), x[:, None, k0:b]).transpose(1, 2)  # (B, P, J, in_dim)
        return self.long_memory_tokens(self.embed_dropout(self.linear_encoding(mean)))

    def long_memory_tokens(self, means: Tensor) -> Tensor:
        """The long-memory tokens of embedded means ``(..., J, d)``: ``LN(mean_j) + embedding_j``."""
        return self.long_norm(means) + self.long_embed[0, 0]

    def _token(self, mem: Tensor, kvs: list, valid: Tensor | None, a: int, b: int,
               long: Tensor | None = None) -> Tensor:
        """The task token ``(B, P, d)`` of positions ``a .. b-1``.

        ``readout="cross"``: one cross-attention of a learned query over the last ``L`` memory states.
        ``readout="encoder"`` (OadTR's token in the encoder, made causal): at every encoder layer the token
        of position ``t`` is a query row of that layer over the layer's keys/values of chunks
        ``t-L+1 .. t`` and its own (ALiBi, its own at distance 0); chunks never attend to it, so their
        states are unchanged. Then ``encoder_norm``.
        """
        B, P, L = mem.shape[0], b - a, self.window
        pos = torch.arange(mem.shape[1], device=mem.device)
        k0 = max(0, a - L + 1)
        band = band_bias(pos[a:b], pos[k0:b], self.enc_slopes, L, None if valid is None else valid[:, k0:b])
        if self.readout_mode == "cross":
            keys = mem[:, k0:b]
            if long is not None:  # and each position's own long-memory tokens (bias 0)
                keys = torch.cat((keys, long.flatten(1, 2)), dim=1)
                band = with_groups(band, long.shape[2])
            kr, vr = self.readout.attn.keys_values(keys)
            q = self.readout.query().expand(B, -1, P, -1).contiguous()  # (B, H, P, dh)
            return self.readout.finish(self.readout.attn.attend(q, kr, vr, band))  # (B, P, d)
        bias = with_groups(band, 1)  # (B|1, H, P, S + P): each position's own token at distance 0
        x = self.cls_token.expand(B, P, -1)  # (B, P, d)
        for layer, (k, v) in zip(self.encoder, kvs):
            q, kt, vt = layer.qkv(x)  # (B, H, P, dh)
            att = layer.attend(q, torch.cat((k[:, :, k0:b], kt), dim=2), torch.cat((v[:, :, k0:b], vt), dim=2), bias)
            x = layer.finish(x, att)
        return self.encoder_norm(x)

    def _readout_decode(self, mem: Tensor, kvs: list, valid: Tensor | None, a: int, b: int,
                        long: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits ``(B, P, C)`` and future logits ``(B, P, Q, C)`` of positions ``a .. b-1`` (``long``: their
        long-memory tokens ``(B, P, J, d)``)."""
        B, P = mem.shape[0], b - a
        K, Q = self.decoder_window, self.num_queries
        pos = torch.arange(mem.shape[1], device=mem.device)
        token = self._token(mem, kvs, valid, a, b, long)  # (B, P, d)
        # the decoder: [the last K memory states ; the token ; the long-memory tokens] of each position
        own = token if long is None else torch.cat((token[:, :, None], long), dim=2).flatten(1, 2)  # (B, P*G, d)

        j0 = max(0, a - K + 1)
        md = mem[:, j0:b]
        bias = decoder_bias(pos[a:b], pos[j0:b], self.dec_slopes, K, None if valid is None else valid[:, j0:b], Q,
                            own.shape[1] // P)
        x = self.decoder_cls_token[None]  # (1, 1, Q, d_dec)
        for i, layer in enumerate(self.decoder):
            km, vm = layer.cross_attention.keys_values(md)
            kt, vt = layer.cross_attention.keys_values(own)
            k, v = torch.cat((km, kt), dim=2), torch.cat((vm, vt), dim=2)  # (B, H, S+P, dh)
            if i == 0 and not self.training:
                x = layer.self_block(x[0])[None]  # a constant: computed once
            else:
                # (training: every position's own dropout masks in the first layer too)
                x = layer.self_block(x.expand(B, P, Q, -1).reshape(B * P, Q, -1)).view(B, P, Q, -1)
            x = layer.cross_block(x, layer.cross_queries(x, B, P), k, v, bias)
        dec = self.after_dropout(self.decoder_norm(x))  # (B, P, Q, d_dec)
        future = self.classifier(dec)
        logits = self.mlp_head(torch.cat((token, dec.mean(dim=2)), dim=-1))  # (B, P, d + d_dec) -> (B, P, C)
        return logits, future

    def forward(self, x: Tensor, mask: Tensor | None = None, start: int = 0) -> tuple[Tensor, Tensor]:
        """Score positions ``start ..`` of sequences, each from its chunks ``<= t``.

        Args:
            x: ``(B, S, in_dim)`` features, oldest first.
            mask: optional ``(B, S)`` bool, True on real chunks (padding on the left).
            start: first position scored (the ones before are history only).

        Returns:
            ``logits (B, S - start, C)`` and ``future_logits (B, S - start, Q, C)``.
        """
        valid = mask.bool() if has_padding(mask) else None
        # The encoder runs on the receptive field of the scored positions only; the chunks before it (a
        # long memory's) are only averaged.
        cut = max(0, start - self.receptive_field)
        v_enc = None if valid is None else valid[:, cut:]
        kvs: list = []
        mem = self.encode(self.embed_dropout(self.linear_encoding(x[:, cut:])), v_enc,
                          kvs if self.readout_mode == "encoder" else None)
        outs = [self._readout_decode(mem, kvs, v_enc, a - cut, b - cut, self.long_tokens(x, valid, a, b))
                for a, b in self._tiles(start, x.shape[1])]
        if len(outs) == 1:
            return outs[0]
        return torch.cat([o[0] for o in outs], dim=1), torch.cat([o[1] for o in outs], dim=1)

    def training_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The supervised positions: the last ``target.shape[1]`` of the sequence (the rest is history)."""
        S_all, S = batch["features"].shape[1], batch["target"].shape[1]
        return self(batch["features"], batch["mask"], start=S_all - S)

    @torch.no_grad()
    def forward_video(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Every chunk of one video ``(T, in_dim)`` from its chunks ``<= t``: ``(T, C)``, ``(T, Q, C)``."""
        logits, future = self(features[None])
        return logits[0], future[0]


__all__ = ["OadTRSW", "alibi_slopes"]
