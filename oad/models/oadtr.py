"""OadTR: online action detection with Transformers (Wang et al., ICCV 2021, arXiv 2106.11149).

A pre-norm ViT encoder reads the features of the last ``L`` chunks plus a learnable task token appended
at the end; a post-norm (Informer-style) decoder of ``Q`` learnable queries attends to the encoder memory
and predicts the classes of the next ``Q`` chunks. The current chunk is classified from the task token's
memory concatenated with the mean of the decoder outputs.

Faithful to the reference code (github.com/wangxiang1230/OadTR, ``VisionTransformer_v3``): same layers,
same order, same parameter layout (``from_reference`` loads its checkpoints). Differences:

- An optional ``mask`` lets a window with a short history (the first ``L - 1`` chunks of a video) be
  left-padded: padded positions receive no attention in the encoder nor in the decoder's cross
  attention, so the first seconds of every video are scored too (the reference never scores them).
- The unused decoder positional table of the reference is not created (its checkpoints still load).
- ``decoder_ffn_dim`` is separate from the encoder's ``mlp_dim`` (both 1024 in the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from oad.models.base import OnlineModel, count_parameters, has_padding, score_windows


def _key_padding_bias(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """(B, S) bool valid-mask -> additive attention bias (B, 1, 1, S): 0 where valid, -inf where padded."""
    if mask is None:
        return None
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias = bias.masked_fill(~mask, float("-inf"))
    return bias[:, None, None, :]


class EncoderSelfAttention(nn.Module):
    """Multi-head self-attention with a fused, bias-free ``qkv`` projection (reference ``SelfAttention``)."""

    def __init__(self, d_model: int, num_heads: int, attn_dropout: float, dropout: float):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.attn_dropout = attn_dropout
        self.proj = nn.Linear(d_model, d_model)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        B, N, d = x.shape
        # (B, N, d) -> (3, B, H, N, d/H)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.attn_dropout if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(B, N, d)  # (B, H, N, d/H) -> (B, N, d)
        return self.proj_drop(self.proj(out))


class EncoderLayer(nn.Module):
    """Pre-norm block: ``x + Dropout(MHSA(LN(x)))`` then ``x + FFN(LN(x))``."""

    def __init__(self, d_model: int, num_heads: int, mlp_dim: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = EncoderSelfAttention(d_model, num_heads, attn_dropout, dropout)
        self.drop1 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, d_model)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        x = x + self.drop1(self.attn(self.norm1(x), attn_bias))
        y = self.drop2(F.gelu(self.fc1(self.norm2(x))))
        return x + self.drop2(self.fc2(y))


class DecoderAttention(nn.Module):
    """Attention with separate query/key/value/out projections (reference Informer ``AttentionLayer``)."""

    def __init__(self, d_model: int, num_heads: int, attn_dropout: float):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"decoder d_model {d_model} is not divisible by decoder_heads {num_heads}")
        self.num_heads = num_heads
        self.query_projection = nn.Linear(d_model, d_model)
        self.key_projection = nn.Linear(d_model, d_model)
        self.value_projection = nn.Linear(d_model, d_model)
        self.out_projection = nn.Linear(d_model, d_model)
        self.attn_dropout = attn_dropout

    def forward(self, x: Tensor, memory: Tensor, attn_bias: Tensor | None = None, causal: bool = False) -> Tensor:
        B, Lq, d = x.shape
        S = memory.shape[1]
        H = self.num_heads
        # (B, Lq, d) -> (B, H, Lq, d/H); keys/values likewise over S
        q = self.query_projection(x).view(B, Lq, H, d // H).transpose(1, 2)
        k = self.key_projection(memory).view(B, S, H, d // H).transpose(1, 2)
        v = self.value_projection(memory).view(B, S, H, d // H).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, is_causal=causal, dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.out_projection(out.transpose(1, 2).reshape(B, Lq, d))


class DecoderLayer(nn.Module):
    """Post-norm decoder block: causal self-attention, cross-attention to memory, position-wise FFN."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.self_attention = DecoderAttention(d_model, num_heads, attn_dropout)
        self.cross_attention = DecoderAttention(d_model, num_heads, attn_dropout)
        # kernel-1 Conv1d as in the reference (so its checkpoints load as they are); position-wise linear.
        self.conv1 = nn.Conv1d(d_model, ffn_dim, kernel_size=1)
        self.conv2 = nn.Conv1d(ffn_dim, d_model, kernel_size=1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, memory_bias: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.dropout(self.self_attention(x, x, causal=True)))
        x = self.norm2(x + self.dropout(self.cross_attention(x, memory, memory_bias)))
        # (B, Q, d) -> (B, d, Q) for the kernel-1 convolutions, and back
        y = self.dropout(F.gelu(self.conv1(x.transpose(1, 2))))
        y = self.dropout(self.conv2(y).transpose(1, 2))
        return self.norm3(x + y)


class OadTR(OnlineModel):
    """OadTR encoder-decoder for online action detection.

    Args:
        in_dim: input feature size per chunk (RGB then flow, concatenated).
        num_classes: number of classes including Background (and Ambiguous for THUMOS).
        window: number of past chunks ``L`` the encoder sees (``enc_layers`` in the reference).
        d_model: encoder width.
        num_heads: encoder attention heads.
        num_layers: encoder layers.
        mlp_dim: encoder FFN hidden size.
        num_queries: decoder queries ``Q`` = number of future chunks predicted.
        decoder_layers: decoder layers.
        decoder_heads: decoder attention heads.
        decoder_dim: decoder width (``d_dec``); ``None`` means ``d_model``.
        decoder_ffn_dim: decoder FFN hidden size.
        dropout: dropout of embeddings, residual branches and FFNs.
        attn_dropout: dropout on attention weights.
        checkpoint_activations: in training, recompute each encoder/decoder layer's activations in the
            backward pass instead of keeping them (memory for long windows, for about one more forward).
    """

    samples = "oad.data.samples:last_chunk_windows"  # trained on the last chunk of each window
    online_step = "oad.online.oadtr:OadTRStep"
    export_step = "oad.online.window:WindowExportStep"
    future_offset = 1  # future query j (0-based) predicts chunk t + 1 + j

    # registry (oad/models/registry.py): the tests' tiny instance, int8 bounds, benchmark rows
    tiny = dict(window=8, d_model=32, num_heads=4, num_layers=2, mlp_dim=48, num_queries=4, decoder_layers=3,
                decoder_heads=2, decoder_ffn_dim=40)
    int8_tolerance = {"fp32": 0.03, "offline": 0.04}
    paper_variants = {"OadTR (window 64)": {}, "OadTR plain step": {"step": {"fused": False}}}

    @staticmethod
    def recognises_reference(names: set[str]) -> bool:
        return "linear_encoding.weight" in names

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
        decoder_dim: int | None = None,
        decoder_ffn_dim: int = 1024,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        checkpoint_activations: bool = False,
    ):
        super().__init__()
        decoder_dim = d_model if decoder_dim is None else decoder_dim
        if decoder_dim != d_model:
            # The decoder cross-attends to the encoder memory with square projections (reference layout).
            raise ValueError(f"decoder_dim ({decoder_dim}) must equal d_model ({d_model}) in OadTR")
        self.in_dim, self.num_classes, self.window = in_dim, num_classes, window
        self.d_model, self.num_queries = d_model, num_queries
        self.checkpoint_activations = checkpoint_activations

        self.linear_encoding = nn.Linear(in_dim, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embedding = nn.Embedding(window + 1, d_model)
        self.pe_dropout = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(
            EncoderLayer(d_model, num_heads, mlp_dim, dropout, attn_dropout) for _ in range(num_layers)
        )
        self.pre_head_ln = nn.LayerNorm(d_model)

        self.decoder_cls_token = nn.Parameter(torch.zeros(1, num_queries, decoder_dim))
        self.decoder = nn.ModuleList(
            DecoderLayer(decoder_dim, decoder_heads, decoder_ffn_dim, dropout, attn_dropout)
            for _ in range(decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.after_dropout = nn.Dropout(dropout)

        self.classifier = nn.Linear(decoder_dim, num_classes)
        self.mlp_head = nn.Linear(d_model + decoder_dim, num_classes)

    # -- forward ---------------------------------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        """Input projection of chunk features: ``(..., in_dim) -> (..., d_model)``.

        Exposed separately because it is per chunk: the streaming runner computes it once per chunk
        and keeps the results in a ring buffer.
        """
        return self.linear_encoding(x)

    def forward_embedded(self, e: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Everything after the input projection.

        Args:
            e: projected window ``(B, L, d_model)``, oldest chunk first, newest last.
            mask: optional ``(B, L)`` bool, True for real chunks; padding must be on the left.

        Returns:
            ``logits (B, C)`` of the newest chunk and ``future_logits (B, Q, C)`` of the next Q chunks.
        """
        B, L, _ = e.shape
        if L > self.window:
            raise ValueError(f"window of {L} chunks is longer than the model's window {self.window}")
        token = self.cls_token.expand(B, -1, -1)
        x = torch.cat((e, token), dim=1)  # (B, L, d) -> (B, L+1, d), task token last
        # Positions are counted from the end, so the newest chunk and the token always get the same
        # embeddings as in the reference (for L == window this is exactly the reference's 0..L).
        pos = torch.arange(self.window - L, self.window + 1, device=e.device)
        x = self.pe_dropout(x + self.pos_embedding(pos))

        bias = None
        if has_padding(mask):  # no attention mask at all when no position of the batch is padded
            valid = torch.cat((mask.bool(), mask.new_ones(B, 1, dtype=torch.bool)), dim=1)  # (B, L+1)
            bias = _key_padding_bias(valid, x.dtype)
        for layer in self.encoder:
            x = self._run_layer(layer, x, bias)
        memory = self.pre_head_ln(x)  # (B, L+1, d)

        dec = self.decoder_cls_token.expand(B, -1, -1)  # (B, Q, d)
        for layer in self.decoder:
            dec = self._run_layer(layer, dec, memory, bias)
        dec = self.after_dropout(self.decoder_norm(dec))

        future_logits = self.classifier(dec)  # (B, Q, C)
        logits = self.mlp_head(torch.cat((memory[:, -1], dec.mean(dim=1)), dim=1))  # (B, 2d) -> (B, C)
        return logits, future_logits

    def _run_layer(self, layer: nn.Module, *args: Tensor | None) -> Tensor:
        if self.checkpoint_activations and self.training and torch.is_grad_enabled():
            # recomputed in backward with the same dropout masks (the RNG state is restored)
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Score the newest chunk of each window.

        Args:
            x: ``(B, L, in_dim)`` features of the last ``L <= window`` chunks, oldest first.
            mask: optional ``(B, L)`` bool, True for real chunks, False for left padding.

        Returns:
            ``logits (B, C)`` for chunk ``t`` (the last of the window) and ``future_logits (B, Q, C)``
            for chunks ``t+1 .. t+Q``.
        """
        return self.forward_embedded(self.embed(x), mask)

    def training_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self(batch["features"], batch["mask"])

    @torch.no_grad()
    def forward_video(self, features: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """Every chunk of one video from the window ending at it (``(T, C)``, ``(T, Q, C)``)."""
        return score_windows(self, features, batch_size)

    # -- reference checkpoints -------------------------------------------------------------------------
    @staticmethod
    def reference_to_state_dict(ref: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rename a reference ``VisionTransformer_v3`` state dict to this module's names.

        Unused reference entries (the decoder positional table, position-id buffers) are dropped.
        A ``module.`` prefix (DataParallel/DDP checkpoints) is removed.
        """
        out: dict[str, Tensor] = {}
        enc_map = {
            "fn.norm.": "norm1.",
            "fn.fn.qkv.": "attn.qkv.",
            "fn.fn.proj.": "attn.proj.",
        }
        ffn_map = {"fn.norm.": "norm2.", "fn.fn.net.0.": "fc1.", "fn.fn.net.3.": "fc2."}
        for name, t in ref.items():
            if name.startswith("module."):
                name = name[len("module."):]
            if name.startswith("decoder_position_encoding.") or name.endswith("position_ids"):
                continue
            if name == "position_encoding.pe.weight":
                out["pos_embedding.weight"] = t
            elif name.startswith("encoder.net."):
                idx, rest = name[len("encoder.net."):].split(".", 1)
                layer, is_ffn = divmod(int(idx), 2)
                table = ffn_map if is_ffn else enc_map
                for src, dst in table.items():
                    if rest.startswith(src):
                        out[f"encoder.{layer}.{dst}{rest[len(src):]}"] = t
                        break
                else:
                    raise KeyError(f"unexpected reference encoder parameter {name!r}")
            elif name.startswith("decoder.layers."):
                out["decoder." + name[len("decoder.layers."):]] = t
            elif name.startswith("decoder.norm."):
                out["decoder_norm." + name[len("decoder.norm."):]] = t
            else:
                out[name] = t
        return out

    @classmethod
    def reference_config(cls, state_dict: dict[str, Tensor], **overrides) -> dict:
        """Constructor arguments of a reference state dict: sizes from the tensors, then ``overrides``."""
        sd = cls.reference_to_state_dict(state_dict)
        d_model = sd["linear_encoding.weight"].shape[0]
        enc_layers = {k.split(".")[1] for k in sd if k.startswith("encoder.")}
        dec_layers = {k.split(".")[1] for k in sd if k.startswith("decoder.")}
        kwargs = dict(
            in_dim=sd["linear_encoding.weight"].shape[1],
            num_classes=sd["classifier.weight"].shape[0],
            window=sd["pos_embedding.weight"].shape[0] - 1,
            d_model=d_model,
            num_layers=len(enc_layers),
            mlp_dim=sd["encoder.0.fc1.weight"].shape[0] if enc_layers else 1024,
            num_queries=sd["decoder_cls_token"].shape[1],
            decoder_layers=len(dec_layers),
            decoder_dim=sd["decoder_cls_token"].shape[2],
            decoder_ffn_dim=sd["decoder.0.conv1.weight"].shape[0] if dec_layers else 1024,
        )
        kwargs.update(overrides)
        return kwargs

    @classmethod
    def from_reference(cls, state_dict: dict[str, Tensor], **overrides) -> "OadTR":
        """Build an OadTR from a reference checkpoint's state dict and load its weights.

        Sizes (``in_dim``, ``d_model``, ``window``, ``num_queries``, layer counts, FFN sizes,
        ``num_classes``) are read from the tensors; head counts and dropouts cannot be, so they come from
        the defaults (8 encoder heads, 4 decoder heads) or ``overrides``.

        Args:
            state_dict: ``torch.load(path)['model']`` of the reference code (``module.`` prefix allowed).
            **overrides: constructor arguments that win over the inferred ones.
        """
        sd = cls.reference_to_state_dict(state_dict)
        model = cls(**cls.reference_config(state_dict, **overrides))
        model.load_state_dict(sd, strict=True)
        return model


__all__ = ["OadTR", "count_parameters"]

