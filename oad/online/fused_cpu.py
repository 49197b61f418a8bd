"""A hand-fused OadTR step for the CPU: one functional forward over copied, fused weights.

It computes the same function as ``OadTR.forward_embedded`` of the window ending at the new chunk
(eval mode), with less work:

- The cross-attention keys/values of all decoder layers read the same encoder memory, so they are one
  ``(N*(L+1), d) x (d, 2 * layers * d)`` matrix product instead of ``2 * layers`` small ones.
- The decoder queries are learned constants: the first decoder layer's self-attention block and its
  cross-attention query projection do not depend on the input and are computed once.
- The self-attention query/key/value projections of the other decoder layers are fused into one.
- The encoder input is written into a preallocated buffer (window + positions, task token row fixed).
- With prepacked oneDNN weights (``torch.ops.mkldnn``, private ops of PyTorch's CPU build), the linear
  weights are reordered once into oneDNN's blocked layout, the residual additions are fused into the
  products that feed them (the binary-add post-op), and in bf16 the encoder heads are laid out
  contiguously once, with the attention scale folded into the query weights, so no batched product
  copies its operands.

With ``int8`` the products run on int8 weights with PyTorch's dynamic quantized kernels (fbgemm,
:mod:`oad.online.quantized`), each weight quantized per output channel exactly as ``quantize_linear``
quantizes the layer (so the fused keys/values and query/key/value weights hold the layers' own int8 rows),
activations float32; the first decoder layer's constant block stays float32.

Used by :class:`oad.online.oadtr.OadTRStep` on the CPU, with the oneDNN ops where :func:`can_prepack`
holds and plain ``F.linear`` on a torch build without them; off the CPU the plain
:class:`oad.online.window.WindowStep` runs.
Tested equal to the plain step (``tests/test_streaming.py``); ``tools/bench.py`` times both.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oad.models.oadtr import OadTR
from oad.online.quantized import (
    int8_linear,
    int8_linear_add,
    int8_linear_gelu,
    pack_linear,
)
from oad.online.base import StreamState
from oad.online.window import RingBuffer


def can_prepack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN (mkldnn) prepacked linear layers are available for this device and dtype."""
    return (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and (dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


def _dnn_linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``F.linear`` with a oneDNN-prepacked weight (no packing pass at every call)."""
    return torch.ops.mkldnn._linear_pointwise.default(x, w, b, "none", [], "")


def _dnn_linear_gelu(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``gelu(F.linear(x, w, b))`` (exact erf GELU) in one oneDNN call."""
    return torch.ops.mkldnn._linear_pointwise.default(x, w, b, "gelu", [], "none")


def _dnn_linear_add(x: Tensor, w: Tensor, b: Tensor | None, other: Tensor) -> Tensor:
    """``other + F.linear(x, w, b)`` (a residual connection) in one oneDNN call; a new tensor."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, other, w, b, "add")


def _linear_gelu(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    return F.gelu(F.linear(x, w, b))


def _linear_add(x: Tensor, w: Tensor, b: Tensor | None, other: Tensor) -> Tensor:
    return torch.add(other, F.linear(x, w, b))


def _attention_packed_heads(qkv: Tensor, heads: int, bias: Tensor | None = None) -> Tensor:
    """Self-attention from a fused ``(N, S, 3d)`` query/key/value product whose query part is pre-scaled.

    For bf16 on the CPU. The strided per-head views of ``qkv`` make every batched matrix product copy
    its operands (the transposed keys at a slow strided bf16 copy), and the fused SDPA kernel is slower
    still at the encoder's sizes (65 positions, head size 128), so the heads are laid out contiguously
    once, ``(3, N, H, S, d/H)``, and the products and the softmax run on plain tensors. The softmax of
    bf16 scores accumulates in float32 inside the kernel. Returns ``(N, S, d)``.
    """
    N, S, three_d = qkv.shape
    d = three_d // 3
    q, k, v = qkv.view(N, S, 3, heads, d // heads).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
    a = torch.matmul(q, k.transpose(-1, -2))  # (N, H, S, S); q carries the 1/sqrt(d/H) scale
    if bias is not None:
        a = a + bias
    o = torch.matmul(torch.softmax(a, dim=-1), v)  # (N, H, S, d/H)
    return o.transpose(1, 2).reshape(N, S, d)


def _attention_sdpa(qkv: Tensor, heads: int, bias: Tensor | None = None) -> Tensor:
    """Self-attention from a fused ``(N, S, 3d)`` query/key/value product (unscaled) with the fused kernel."""
    N, S, three_d = qkv.shape
    d = three_d // 3
    q, k, v = qkv.view(N, S, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)  # (N, H, S, d/H) each
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return a.transpose(1, 2).reshape(N, S, d)


class FusedOadTREngine(StreamState):
    """The OadTR step as one functional forward over copied, fused weights (see the module docstring).

    Computes ``OadTR.forward_embedded`` of the window ending at the new chunk (eval mode: no dropout).
    With ``prepack`` the linear weights are reordered once into oneDNN's blocked layout, so no matrix
    product re-packs its weight at every step (faster per product on this project's CPUs:
    ``docs/benchmarks.md``). The streams' state is the ring buffer; the encoder input buffer and the first
    decoder layer's constants expanded to ``N`` are rebuilt by :meth:`start`.
    """

    stream_state = {"ring": 0}

    def __init__(self, net: OadTR, device: torch.device, dtype: torch.dtype, prepack: bool, int8: bool = False):
        self.device, self.dtype = device, dtype
        self.L, self.d, self.Q = net.window, net.d_model, net.num_queries
        self.enc_heads = net.encoder[0].attn.num_heads if len(net.encoder) else 1
        self.dec_heads = net.decoder[0].cross_attention.num_heads if len(net.decoder) else 1
        if not len(net.decoder):
            raise ValueError("OadTR without decoder layers is not supported by the streaming runner")
        self.prepack, self.int8 = prepack, int8
        self.linear = _dnn_linear if prepack else F.linear
        self.linear_gelu = _dnn_linear_gelu if prepack else _linear_gelu
        self.linear_add = _dnn_linear_add if prepack else _linear_add
        if int8:  # fbgemm's prepacked int8 weights (oad.online.quantized), activations float32
            self.linear, self.linear_gelu, self.linear_add = int8_linear, int8_linear_gelu, int8_linear_add
        # bf16 on the CPU: contiguous heads and a query projection that carries the attention scale
        self.packed_heads = device.type == "cpu" and dtype == torch.bfloat16
        self.enc_attention = _attention_packed_heads if self.packed_heads else _attention_sdpa

        def own(t: Tensor | None) -> Tensor | None:  # a copy on the run device, in the run dtype
            return None if t is None else t.detach().to(device=device, dtype=dtype, copy=True).contiguous()

        def lin(w: Tensor, b: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
            if int8:  # (packed int8 weight and bias, None): quantized as quantize_linear quantizes a layer
                return pack_linear(w, b), None
            w = own(w)
            if prepack:
                w = torch.ops.mkldnn._reorder_linear_weight(w, None)
            return w, own(b)

        def norm(m: nn.LayerNorm) -> tuple[Tensor, Tensor, float]:
            return own(m.weight), own(m.bias), m.eps

        with torch.inference_mode():
            self.emb = lin(net.linear_encoding.weight, net.linear_encoding.bias)
            pe = net.pos_embedding.weight.detach().float()  # (L+1, d)
            self.pe_window = own(pe[: self.L])  # (L, d): positions 0..L-1, the full window
            self.token_row = own(net.cls_token.detach().float()[0, 0] + pe[self.L])  # (d,)
            self.enc = [
                dict(
                    n1=norm(m.norm1),
                    qkv=lin(self._scaled_qkv(m.attn.qkv.weight, self.enc_heads)),
                    proj=lin(m.attn.proj.weight, m.attn.proj.bias),
                    n2=norm(m.norm2),
                    fc1=lin(m.fc1.weight, m.fc1.bias),
                    fc2=lin(m.fc2.weight, m.fc2.bias),
                )
                for m in net.encoder
            ]
            self.pre_head_ln = norm(net.pre_head_ln)

            # Cross-attention keys and values of every decoder layer: one (2 * layers * d, d) weight.
            kv_w, kv_b = [], []
            for m in net.decoder:
                ca = m.cross_attention
                kv_w += [ca.key_projection.weight, ca.value_projection.weight]
                kv_b += [ca.key_projection.bias, ca.value_projection.bias]
            self.kv = lin(torch.cat(kv_w), torch.cat(kv_b))

            self.dec = []
            for j, m in enumerate(net.decoder):
                sa, ca = m.self_attention, m.cross_attention
                layer = dict(
                    n1=norm(m.norm1),
                    n2=norm(m.norm2),
                    n3=norm(m.norm3),
                    ca_out=lin(ca.out_projection.weight, ca.out_projection.bias),
                    # kernel-1 Conv1d weights (out, in, 1) -> Linear weights (out, in)
                    ff1=lin(m.conv1.weight[..., 0], m.conv1.bias),
                    ff2=lin(m.conv2.weight[..., 0], m.conv2.bias),
                )
                if j == 0:
                    # The queries are constants, so this block is too: computed once, in fp32.
                    q0 = net.decoder_cls_token.detach().float()  # (1, Q, d)
                    sa32 = copy.deepcopy(sa).float().eval()
                    x1 = copy.deepcopy(m.norm1).float()(q0 + sa32(q0, q0, causal=True))  # (1, Q, d)
                    cq = copy.deepcopy(ca.query_projection).float()(x1)  # (1, Q, d)
                    H = self.dec_heads
                    layer["const_x1"] = own(x1[0])  # (Q, d)
                    # (Q, d) -> (H, Q, d/H)
                    layer["const_q"] = own(cq[0].view(self.Q, H, self.d // H).transpose(0, 1))
                else:
                    w = torch.cat((sa.query_projection.weight, sa.key_projection.weight, sa.value_projection.weight))
                    b = torch.cat((sa.query_projection.bias, sa.key_projection.bias, sa.value_projection.bias))
                    layer["sa_qkv"] = lin(w, b)
                    layer["sa_out"] = lin(sa.out_projection.weight, sa.out_projection.bias)
                    layer["ca_q"] = lin(ca.query_projection.weight, ca.query_projection.bias)
                self.dec.append(layer)
            self.dec_norm = norm(net.decoder_norm)
            self.cls = lin(net.classifier.weight, net.classifier.bias)
            self.head = lin(net.mlp_head.weight, net.mlp_head.bias)
            # biases[c]: (1, 1, 1, L+1) additive attention bias after c + 1 chunks (-inf on the padding).
            c = torch.arange(self.L, device=device)
            pad = torch.arange(self.L + 1, device=device)[None, :] < (self.L - 1 - c)[:, None]  # (L, L+1)
            biases = torch.zeros(pad.shape, device=device, dtype=dtype).masked_fill(pad, float("-inf"))
            self.biases = biases[:, None, None, None, :]  # (L, 1, 1, 1, L+1)

    def _scaled_qkv(self, w: Tensor, heads: int) -> Tensor:
        """The fused query/key/value weight ``(3d, d)``, its query rows times ``(d/H)^-1/2`` where the
        attention kernel expects pre-scaled queries (scaled in float32, before any cast)."""
        if not self.packed_heads:
            return w
        w = w.detach().float().clone()
        w[: w.shape[0] // 3] *= (w.shape[1] // heads) ** -0.5
        return w

    def start(self, n: int) -> None:
        L, d = self.L, self.d
        device, dtype = self.device, self.dtype
        self.n = n
        self.ring = RingBuffer(n, L, d, device, dtype)
        self.x0 = torch.empty(n, L + 1, d, device=device, dtype=dtype)  # encoder input, reused
        self.x0[:, L] = self.token_row  # the task token (+ its position) never changes
        first = self.dec[0]  # shared by every split and merge of this engine: left alone
        # (Q, d) -> (N, Q, d); (H, Q, d/H) -> (N, H, Q, d/H): materialised once per reset
        self.first_x1 = first["const_x1"].expand(n, -1, -1).contiguous()
        self.first_q = first["const_q"].expand(n, -1, -1, -1).contiguous()

    def prime(self, x: Tensor) -> None:
        self.ring.prime(x, lambda chunks: self.linear(chunks, *self.emb))

    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        N, L, d = self.n, self.L, self.d
        S = L + 1
        linear, linear_gelu, linear_add = self.linear, self.linear_gelu, self.linear_add
        window = self.ring.push(linear(x, *self.emb))  # (N, in_dim) -> (N, d) -> (N, L, d)
        c = self.ring.count
        bias = self.biases[c - 1] if c < L else None

        x = self.x0
        torch.add(window, self.pe_window, out=x[:, :L])  # rows 0..L-1; row L is the task token
        H = self.enc_heads
        for i, p in enumerate(self.enc):
            a = self.enc_attention(linear(F.layer_norm(x, (d,), *p["n1"]), *p["qkv"]), H, bias)  # (N, S, d)
            # residuals out of place (fused into the products): x0 (with the token row) is reused
            x = linear_add(a, *p["proj"], x)
            x = linear_add(linear_gelu(F.layer_norm(x, (d,), *p["n2"]), *p["fc1"]), *p["fc2"], x)
        memory = F.layer_norm(x, (d,), *self.pre_head_ln)  # (N, S, d)

        H, nl, Q = self.dec_heads, len(self.dec), self.Q
        dh = d // H
        # (N, S, 2 * nl * d) -> (nl, 2, N, H, S, d/H): keys and values of every decoder layer
        kv = linear(memory, *self.kv).view(N, S, nl, 2, H, dh).permute(2, 3, 0, 4, 1, 5)
        dec = memory  # replaced in the first layer
        for j, p in enumerate(self.dec):
            if j == 0:
                x1, q = self.first_x1, self.first_q
            else:
                # (N, Q, 3d) -> (3, N, H, Q, d/H)
                qs, ks, vs = linear(dec, *p["sa_qkv"]).view(N, Q, 3, H, dh).permute(2, 0, 3, 1, 4).unbind(0)
                a = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
                a = a.transpose(1, 2).reshape(N, Q, d)  # (N, H, Q, d/H) -> (N, Q, d)
                x1 = F.layer_norm(linear_add(a, *p["sa_out"], dec), (d,), *p["n1"])
                q = linear(x1, *p["ca_q"]).view(N, Q, H, dh).transpose(1, 2)  # (N, Q, d) -> (N, H, Q, d/H)
            a = F.scaled_dot_product_attention(q, kv[j, 0], kv[j, 1], attn_mask=bias)
            a = a.transpose(1, 2).reshape(N, Q, d)  # (N, H, Q, d/H) -> (N, Q, d)
            x2 = F.layer_norm(linear_add(a, *p["ca_out"], x1), (d,), *p["n2"])
            dec = F.layer_norm(linear_add(linear_gelu(x2, *p["ff1"]), *p["ff2"], x2), (d,), *p["n3"])
        dec = F.layer_norm(dec, (d,), *self.dec_norm)
        future = linear(dec, *self.cls)  # (N, Q, C)
        logits = linear(torch.cat((memory[:, -1], dec.mean(dim=1)), dim=1), *self.head)  # (N, 2d) -> (N, C)
        return logits, future


