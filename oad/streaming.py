"""The online runner: one chunk of features in, current and future class probabilities out.

:class:`OnlineDetector` wraps a trained network (OadTR, TRN, ChunkLinear, or any window model with
``embed``/``forward_embedded``) and keeps only what the next step needs:

- OadTR (and other window models): a ring buffer of the already-projected inputs, ``(N, 2L, d)`` with
  every chunk written twice (slots ``p`` and ``p + L``), so the window in chronological order is always
  the contiguous-in-time slice ``[p + 1, p + 1 + L)`` -- no ``torch.cat``, no shifting, and the input
  projection of a chunk is computed once, not ``L`` times. Until ``L`` chunks have arrived the window is
  left-padded with zeros and masked, exactly as the offline "all" protocol does
  (:func:`oad.inference.score_videos`), so streaming and offline scores are the same.
- TRN (anything with ``init_state``/``step``): the recurrent state.

For ``OadTR`` itself the step is a dedicated functional forward over the network's (copied, cast)
weights that computes the same function as ``OadTR.forward_embedded`` with less work:

- The cross-attention keys/values of all decoder layers read the same encoder memory, so they are one
  ``(N*(L+1), d) x (d, 2 * layers * d)`` matrix product instead of ``2 * layers`` small ones.
- The decoder queries are learned constants: the first decoder layer's self-attention block and its
  cross-attention query projection do not depend on the input and are computed once.
- The self-attention query/key/value projections of the other decoder layers are fused into one.
- The encoder input is written into a preallocated buffer (window + positions, task token row fixed).
- With prepacked oneDNN weights, the residual additions are fused into the products that feed them
  (the binary-add post-op), and in bf16 on the CPU the encoder heads are laid out contiguously once,
  with the attention scale folded into the query weights, so no batched product copies its operands.

Streams: ``step`` takes ``(in_dim,)`` (one stream) or ``(N, in_dim)`` (N streams stepped together as
one batch, all started at the same :meth:`OnlineDetector.reset`). ``bfloat16`` mode casts the copied
weights and runs every layer in bf16 (CPU or GPU); probabilities are computed in fp32.

:class:`EventDetector` turns the per-chunk probabilities of one stream into action events online
(threshold with hysteresis and a minimum length), each stamped with the chunk at which its start and
end were decided.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oad.inference import class_probabilities, is_recurrent
from oad.models.oadtr import OadTR

__all__ = ["EventDetector", "OnlineDetector", "StepOutput"]


class StepOutput(NamedTuple):
    """What :meth:`OnlineDetector.step` returns (a tuple: ``scores, future_scores = det.step(x)``).

    Attributes:
        scores: float32 probabilities of the newest chunk, ``(C,)`` for one stream or ``(N, C)``.
        future_scores: float32 probabilities of the next ``Q`` chunks, ``(Q, C)`` or ``(N, Q, C)``
            (for OadTR, row ``j`` is chunk ``t + 1 + j``; for TRN, ``t + j``: the model's ``future_offset``).
    """

    scores: Tensor
    future_scores: Tensor


# ---------------------------------------------------------------------------------------------------
# Engines: the model-specific state and step. Inputs are (N, in_dim) on the device, in the run dtype.
# ---------------------------------------------------------------------------------------------------


class _RecurrentEngine:
    """TRN and any model with ``init_state``/``step``: carries the recurrent state."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.state: Any = None

    def start(self, n: int, device: torch.device, dtype: torch.dtype) -> None:
        self.state = self.net.init_state(n, device=device, dtype=dtype)

    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, future, self.state = self.net.step(x, self.state)
        return logits, future

    def prime(self, x: Tensor) -> None:
        for t in range(x.shape[1]):  # (N, T, D): the state needs every chunk
            self.step(x[:, t])


class _RingBuffer:
    """The last ``L`` projected chunks of ``N`` streams, readable in chronological order without a copy.

    Every chunk is written at slot ``p = count % L`` and at ``p + L``, so ``buf[:, p + 1 : p + 1 + L]``
    is the window, oldest first. Slots that were never written hold zeros (the offline padding).
    """

    def __init__(self, n: int, window: int, dim: int, device: torch.device, dtype: torch.dtype):
        self.L = window
        self.buf = torch.zeros(n, 2 * window, dim, device=device, dtype=dtype)  # (N, 2L, d)
        self.count = 0

    def push(self, e: Tensor) -> Tensor:
        """Append ``e (N, d)``; returns the window ``(N, L, d)`` ending with it (a view)."""
        p = self.count % self.L
        self.buf[:, p] = e
        self.buf[:, p + self.L] = e
        self.count += 1
        return self.buf[:, p + 1 : p + 1 + self.L]

    def extend(self, e: Tensor, total: int) -> None:
        """Account for ``total`` new chunks of which ``e (N, k, d)`` are the last ``k <= L`` projected."""
        k = e.shape[1]
        self.count += total - k  # chunks older than the window are never needed
        for t in range(k):
            self.push(e[:, t])


class _WindowEngine:
    """Any window model with ``window``, ``embed`` and ``forward_embedded`` (e.g. ChunkLinear)."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.ring: _RingBuffer | None = None
        self.masks: Tensor | None = None

    def start(self, n: int, device: torch.device, dtype: torch.dtype) -> None:
        L = self.net.window
        dim = self.net.embed(torch.zeros(1, self.net.in_dim, device=device, dtype=dtype)).shape[-1]
        self.ring = _RingBuffer(n, L, dim, device, dtype)
        # masks[c] is the window mask after c + 1 chunks: the first L - 1 - c positions are padding.
        self.masks = torch.arange(L, device=device)[None, :] >= (L - 1 - torch.arange(L, device=device))[:, None]
        self.n = n

    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        window = self.ring.push(self.net.embed(x))  # (N, in_dim) -> (N, d) -> (N, L, d)
        c = self.ring.count
        mask = None if c >= self.ring.L else self.masks[c - 1].expand(self.n, -1)  # (N, L)
        return self.net.forward_embedded(window, mask)

    def prime(self, x: Tensor) -> None:
        T = x.shape[1]
        self.ring.extend(self.net.embed(x[:, max(0, T - self.ring.L) :]), T)  # (N, k, D) -> (N, k, d)


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


class _OadTREngine:
    """The OadTR step as one functional forward over copied, fused weights (see the module docstring).

    Computes ``OadTR.forward_embedded`` of the window ending at the new chunk (eval mode: no dropout).
    With ``prepack`` the linear weights are reordered once into oneDNN's blocked layout, so no matrix
    product re-packs its weight at every step (on this project's CPUs that is 1.3-2x faster per product).
    """

    def __init__(self, net: OadTR, device: torch.device, dtype: torch.dtype, prepack: bool):
        self.L, self.d, self.Q = net.window, net.d_model, net.num_queries
        self.enc_heads = net.encoder[0].attn.num_heads if len(net.encoder) else 1
        self.dec_heads = net.decoder[0].cross_attention.num_heads if len(net.decoder) else 1
        if not len(net.decoder):
            raise ValueError("OadTR without decoder layers is not supported by the streaming runner")
        self.prepack = prepack
        self.linear = _dnn_linear if prepack else F.linear
        self.linear_gelu = _dnn_linear_gelu if prepack else _linear_gelu
        self.linear_add = _dnn_linear_add if prepack else _linear_add
        # bf16 on the CPU: contiguous heads and a query projection that carries the attention scale
        self.packed_heads = device.type == "cpu" and dtype == torch.bfloat16
        self.enc_attention = _attention_packed_heads if self.packed_heads else _attention_sdpa

        def own(t: Tensor | None) -> Tensor | None:  # a copy on the run device, in the run dtype
            return None if t is None else t.detach().to(device=device, dtype=dtype, copy=True).contiguous()

        def lin(w: Tensor, b: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
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

    def start(self, n: int, device: torch.device, dtype: torch.dtype) -> None:
        L, d = self.L, self.d
        self.n = n
        self.ring = _RingBuffer(n, L, d, device, dtype)
        self.x0 = torch.empty(n, L + 1, d, device=device, dtype=dtype)  # encoder input, reused
        self.x0[:, L] = self.token_row  # the task token (+ its position) never changes
        first = self.dec[0]
        # (Q, d) -> (N, Q, d); (H, Q, d/H) -> (N, H, Q, d/H): materialised once per reset
        first["x1"] = first["const_x1"].expand(n, -1, -1).contiguous()
        first["q"] = first["const_q"].expand(n, -1, -1, -1).contiguous()

    def prime(self, x: Tensor) -> None:
        T = x.shape[1]
        self.ring.extend(self.linear(x[:, max(0, T - self.L) :], *self.emb), T)  # (N, k, D) -> (N, k, d)

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
                x1, q = p["x1"], p["q"]
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


# ---------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------


class OnlineDetector:
    """Online action detection over one or several live streams, one chunk per call.

    Args:
        model: a trained network: ``OadTR``, ``TRN``, ``ChunkLinear``, or any window model with
            ``window``, ``in_dim``, ``embed`` and ``forward_embedded`` (or a recurrent one with
            ``init_state``/``step``). It is not modified: the runner works on a copy of its weights.
        dtype: ``torch.float32`` or ``torch.bfloat16`` (the copied weights and all layers are cast;
            probabilities are always computed in float32).
        device: where to run (default: the model's device).
        ignore_index: class left out of the softmax (probability 0; THUMOS' Ambiguous), or None.
        prepack: OadTR on the CPU: reorder the linear weights once into oneDNN's layout (None: wherever
            available; False: plain ``F.linear``, e.g. to compare).

    Example::

        det = OnlineDetector(net)
        for chunk in FeatureExtractor(...).iter_chunks(video):
            scores, future_scores = det.step(chunk.vector)  # (C,), (Q, C)
        det.reset()  # a new stream (or a new set of N streams)

    Attributes:
        in_dim, num_classes, num_queries, window: the model's sizes (``window`` is None for TRN).
        num_streams: ``N`` of the current streams (None before the first step after a reset).
        num_steps: chunks stepped since the last reset.
        prepack: whether the oneDNN prepacked path is used.
    """

    def __init__(
        self,
        model: nn.Module,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        ignore_index: int | None = 21,
        prepack: bool | None = None,
    ):
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        param = next(iter(model.parameters()), None)
        self.device = torch.device(device) if device is not None else (
            param.device if param is not None else torch.device("cpu"))
        self.dtype = dtype
        self.ignore_index = ignore_index
        self.in_dim = int(model.in_dim)
        self.num_classes = int(model.num_classes)
        self.num_queries = int(model.num_queries)
        self.recurrent = is_recurrent(model)
        self.window = None if self.recurrent else int(model.window)
        self.prepack = False
        if type(model) is OadTR:
            self.prepack = can_prepack(self.device, dtype) if prepack is None else bool(prepack)
            if self.prepack and not can_prepack(self.device, dtype):
                raise ValueError(f"prepack=True needs oneDNN on the CPU (with bf16 support for bf16), "
                                 f"not device {self.device}")
            self._engine = _OadTREngine(model, self.device, dtype, self.prepack)
        else:
            net = copy.deepcopy(model).eval().requires_grad_(False).to(device=self.device, dtype=dtype)
            if self.recurrent:
                self._engine = _RecurrentEngine(net)
            elif all(hasattr(net, a) for a in ("window", "embed", "forward_embedded")):
                self._engine = _WindowEngine(net)
            else:
                raise TypeError(f"{type(model).__name__}: neither a window model (window, embed, "
                                "forward_embedded) nor a recurrent one (init_state, step)")
        self.reset()

    def reset(self) -> None:
        """Start new streams: the next :meth:`step` fixes their number ``N`` (it may differ from before)."""
        self.num_streams: int | None = None
        self.num_steps = 0

    def _streams(self, x: Tensor) -> Tensor:
        """Move to the run device/dtype; start the engine for the first input's N, or check N."""
        x = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
        n = x.shape[0]
        if self.num_streams is None:
            self._engine.start(n, self.device, self.dtype)
            self.num_streams = n
        elif n != self.num_streams:
            raise ValueError(f"{n} streams given, {self.num_streams} were started: call reset() to change N")
        return x

    @torch.inference_mode()
    def prime(self, history: np.ndarray | Tensor) -> None:
        """Feed past chunks without scoring them (e.g. to join a stream whose features are known).

        Afterwards the runner is in the state the same chunks fed through :meth:`step` would leave; for
        window models only the last ``window`` chunks are projected (in one product), recurrent models
        step through all of them.

        Args:
            history: ``(T, in_dim)`` for one stream or ``(N, T, in_dim)`` for N streams, oldest first.
        """
        if isinstance(history, np.ndarray) and not history.flags.writeable:
            history = np.array(history)
        x = torch.as_tensor(history)
        if x.dim() == 2:
            x = x.unsqueeze(0)  # (T, in_dim) -> (1, T, in_dim)
        if x.dim() != 3 or x.shape[2] != self.in_dim:
            raise ValueError(f"expected history of shape (T, {self.in_dim}) or (N, T, {self.in_dim}), "
                             f"got {tuple(torch.as_tensor(history).shape)}")
        if x.shape[1] == 0:
            return
        x = self._streams(x)
        self._engine.prime(x)
        self.num_steps += x.shape[1]

    @torch.inference_mode()
    def step(self, features: np.ndarray | Tensor) -> StepOutput:
        """Score the newest chunk of every stream.

        Args:
            features: the newest chunk's features, ``(in_dim,)`` for one stream or ``(N, in_dim)`` for N
                streams (numpy or tensor, any float dtype; the same N at every step until :meth:`reset`).

        Returns:
            :class:`StepOutput` ``(scores, future_scores)``: float32 probabilities on the run device,
            ``(C,)``/``(Q, C)`` for a 1-d input, ``(N, C)``/``(N, Q, C)`` for a 2-d one.
        """
        if isinstance(features, np.ndarray) and not features.flags.writeable:
            features = np.array(features)  # e.g. a row of a read-only memory map: torch wants writable memory
        x = torch.as_tensor(features)
        single = x.dim() == 1
        if single:
            x = x.unsqueeze(0)  # (in_dim,) -> (1, in_dim)
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected features of shape ({self.in_dim},) or (N, {self.in_dim}), got {tuple(x.shape)}")
        x = self._streams(x)
        logits, future = self._engine.step(x)
        self.num_steps += 1
        scores = class_probabilities(logits, self.ignore_index)  # (N, C), fp32
        future_scores = class_probabilities(future, self.ignore_index)  # (N, Q, C), fp32
        if single:
            return StepOutput(scores[0], future_scores[0])
        return StepOutput(scores, future_scores)


# ---------------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------------


class EventDetector:
    """Action events of one stream, decided online from per-chunk class probabilities.

    The rule, per action class (background and the ignore class never form events), one chunk at a time:

    - **off -> pending**: the class's score reaches ``on_threshold`` at chunk ``s``: a candidate event
      starting at ``s``.
    - **pending -> on**: the score has stayed ``>= off_threshold`` for ``min_length`` chunks
      (``s .. s + min_length - 1``): the start is decided at chunk ``s + min_length - 1`` (a delay of
      ``min_length - 1`` chunks); the event starts at chunk ``s``. If the score falls below
      ``off_threshold`` earlier, the candidate is dropped: no event is shorter than ``min_length``.
    - **on -> off**: the first chunk ``e`` whose score is ``< off_threshold`` ends the event
      (chunks ``s .. e - 1``); the end is decided at chunk ``e``.
    - :meth:`finish` (end of the stream) closes open events at the last chunk (``end_by_stream_end``);
      pending candidates shorter than ``min_length`` are dropped.

    ``off_threshold < on_threshold`` is the hysteresis: a score wavering around one threshold does not
    split an event. Classes are independent (two classes may be active at once).

    Chunk ``t`` covers ``[t / rate, (t + 1) / rate)`` seconds, so its decision is known at ``(t + 1) / rate``.
    Each event is a dict: ``class_index, class_name, start_chunk, end_chunk`` (exclusive), ``start_s,
    end_s, num_chunks, start_decided_chunk, end_decided_chunk, start_decided_s, end_decided_s,
    start_delay_chunks`` (``start_decided_chunk - start_chunk``), ``end_delay_chunks``
    (``end_decided_chunk - (end_chunk - 1)``, 1 for an end seen at the next chunk), ``peak_score``,
    ``end_by_stream_end``.

    Args:
        class_names: the ``C`` class names.
        on_threshold: score that starts a candidate event.
        off_threshold: score below which an event (or candidate) ends; ``<= on_threshold``.
        min_length: minimum event length in chunks (``>= 1``).
        rate: chunks per second (for the times in seconds).
        background_index: background column (no events), or None.
        ignore_index: ignore column (no events; e.g. Ambiguous), or None.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        on_threshold: float = 0.5,
        off_threshold: float = 0.3,
        min_length: int = 2,
        rate: float = 4.0,
        background_index: int | None = 0,
        ignore_index: int | None = 21,
    ):
        if not 0.0 <= off_threshold <= on_threshold:
            raise ValueError(f"need 0 <= off_threshold <= on_threshold, got off {off_threshold}, on {on_threshold}")
        if int(min_length) < 1:
            raise ValueError(f"min_length must be >= 1 chunk, got {min_length}")
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.class_names = list(class_names)
        self.on, self.off = float(on_threshold), float(off_threshold)
        self.min_length, self.rate = int(min_length), float(rate)
        skip = {background_index, ignore_index}
        self.classes = np.array([c for c in range(len(self.class_names)) if c not in skip], dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget everything: a new stream."""
        self.t = 0  # index of the next chunk
        self.events: list[dict] = []  # finished events, in order of their end decision
        self._start: dict[int, int] = {}  # class -> start chunk of its pending or active event
        self._active: set[int] = set()
        self._peak: dict[int, float] = {}

    @property
    def active(self) -> list[dict]:
        """The events started (decided) and not yet ended, as they stand now."""
        return [self._event(c, None, None) for c in sorted(self._active)]

    def describe(self) -> dict:
        """The settings, for the outputs."""
        return {"on_threshold": self.on, "off_threshold": self.off, "min_length": self.min_length,
                "rate": self.rate, "classes": [self.class_names[c] for c in self.classes]}

    def _event(self, c: int, end: int | None, decided: int | None, by_stream_end: bool = False) -> dict:
        s = self._start[c]
        sd = s + self.min_length - 1
        ev = {
            "class_index": int(c),
            "class_name": self.class_names[c],
            "start_chunk": s,
            "end_chunk": end,
            "start_s": s / self.rate,
            "end_s": None if end is None else end / self.rate,
            "num_chunks": None if end is None else end - s,
            "start_decided_chunk": sd,
            "end_decided_chunk": decided,
            "start_decided_s": (sd + 1) / self.rate,
            "end_decided_s": None if decided is None else (decided + 1) / self.rate,
            "start_delay_chunks": sd - s,
            "end_delay_chunks": None if decided is None else decided - (end - 1),
            "peak_score": self._peak[c],
            "end_by_stream_end": by_stream_end,
        }
        return ev

    def update(self, scores: np.ndarray | Tensor | Sequence[float]) -> list[dict]:
        """Take the probabilities ``(C,)`` of the next chunk; returns the decisions made at this chunk.

        Returns:
            ``[{'decision': 'start' | 'end', **event}]`` (for a start, the end fields are None).
        """
        if isinstance(scores, Tensor):
            scores = scores.detach().float().cpu().numpy()
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != (len(self.class_names),):
            raise ValueError(f"expected ({len(self.class_names)},) scores, got {s.shape}")
        t = self.t
        decisions = []
        for c in self.classes.tolist():
            v = float(s[c])
            if c in self._start:
                if v < self.off:
                    if c in self._active:
                        ev = self._event(c, t, t)
                        self.events.append(ev)
                        decisions.append({"decision": "end", **ev})
                        self._active.discard(c)
                    del self._start[c]  # a candidate shorter than min_length is dropped
                    continue
                self._peak[c] = max(self._peak[c], v)
            elif v >= self.on:
                self._start[c], self._peak[c] = t, v
            else:
                continue
            if c not in self._active and t - self._start[c] + 1 >= self.min_length:
                self._active.add(c)
                decisions.append({"decision": "start", **self._event(c, None, None)})
        self.t += 1
        return decisions

    def finish(self) -> list[dict]:
        """End of the stream: close the active events at the last chunk; returns all events by start."""
        last = self.t - 1
        for c in sorted(self._active):
            self.events.append(self._event(c, self.t, last, by_stream_end=True))
        self._active.clear()
        self._start.clear()
        return sorted(self.events, key=lambda e: (e["start_chunk"], e["class_index"]))
