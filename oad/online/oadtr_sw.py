"""The online step of OadTR-SW: per-layer key/value caches, a constant cost per chunk.

Per stream, ring buffers of the keys/values of the last ``L`` chunks for every encoder layer and for the
readout, and of the last ``K`` chunks' memory states for every decoder layer (plus one slot for the
current readout token). A step embeds the new chunk, runs it through each encoder layer as one query
against the cached keys/values (appending its own first), then the readout (a constant query over the
``L`` cached memory keys; with ``readout="encoder"`` the token is one query row per encoder layer over
that layer's cache instead) and the decoder (``Q`` queries over ``K + 1`` cached keys). With a long memory
of ``M`` chunks a ring of the last ``M`` embeddings gives the ``J`` long-memory tokens (one weighting of
the ring per decay), which take ``J`` more slots in the readout's and every decoder layer's cache. Nothing
is re-encoded: the cost is constant in the history, ``O(L)`` in the attention over the caches and
``O(M)`` in the long memory's weighting.

Ring slots are written at ``count % L``; attention is order-free given its ALiBi biases, so a table of
biases per newest slot (full ring, or the ``c < L`` slots written so far) replaces any rotation. Equals
:meth:`oad.models.oadtr_sw.OadTRSW.forward_video` chunk by chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oad.models.oadtr_sw import age_weights, ring_bias_table
from oad.online.base import ExportStep, OnlineStep
from oad.online.quantized import quantize_linear


class OadTRSWStep(OnlineStep):
    """Key/value-cache step of an ``OadTRSW`` (copied, eval mode, cast to ``dtype``; with ``int8`` a
    :func:`oad.online.quantized.quantize_linear` copy: int8 linear layers, everything else float32)."""

    implementation = "kv-cache"
    quantize = staticmethod(quantize_linear)
    stream_state = {"enc_kv": 0, "ro_kv": 0, "dec_kv": 0,  # (N, heads, slots, dh) caches
                    "long_buf": 0}  # (N, M, d): the last M embedded chunks (a long memory)
    counters = ("count",)

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        super().__init__(net, device, dtype, int8)
        n = self.net
        self.L, self.K, self.Q = n.window, n.decoder_window, n.num_queries
        self.in_encoder = n.readout_mode == "encoder"  # the task token: query rows of the encoder layers
        self.M, self.J = n.long_memory, len(n.long_decays)  # long memory: chunks, tokens
        with torch.no_grad():
            self.ro_q = None if self.in_encoder else n.readout.query()  # (1, H, 1, dh)
            self.dec_x1, self.dec_q1 = n.decoder_prefix()  # (1, 1, Q, d_dec), (1, Hd, Q, dh)
        enc = ring_bias_table(n.enc_slopes, self.L)  # (2L, 1, H, 1, L)
        self.enc_bias = enc.to(device=device, dtype=dtype)
        # the encoder token's rows (readout="encoder") and the decoder see one more slot, the token's (bias 0)
        self.tok_bias = _with_token_slot(enc).to(device=device, dtype=dtype) if self.in_encoder else None
        # the readout sees the J long-memory slots after its ring, the decoder the token's and then those
        self.ro_bias = _with_token_slot(enc, self.J).to(device=device, dtype=dtype)
        self.dec_bias = _with_token_slot(ring_bias_table(n.dec_slopes, self.K), 1 + self.J).to(device=device, dtype=dtype)
        if self.M:
            # the weights by age, reversed: rolled by newest slot + 1 they weigh the ring's slots
            # (slot j holds the chunk (newest - j) mod M back); normalised once for a full ring
            rev = age_weights(n.long_decays, self.M).flip(-1).to(device)  # (J, M)
            self.long_rev = rev
            self.long_rev_full = (rev / rev.sum(dim=-1, keepdim=True)).to(dtype)
        self.count = 0

    def start(self, n: int) -> None:
        net, dev, dt = self.net, self.device, self.dtype
        H = net.encoder[0].num_heads if len(net.encoder) else 1
        dh = net.d_model // H
        self.enc_kv = [(torch.zeros(n, H, self.L, dh, device=dev, dtype=dt),
                        torch.zeros(n, H, self.L, dh, device=dev, dtype=dt)) for _ in net.encoder]
        if self.in_encoder:
            self.ro_kv = self.ro_qn = None
        else:
            Hr = net.readout.attn.num_heads
            self.ro_kv = tuple(torch.zeros(n, Hr, self.L + self.J, net.d_model // Hr, device=dev, dtype=dt)
                               for _ in range(2))
            self.ro_qn = self.ro_q.expand(n, -1, -1, -1).contiguous()  # (N, H, 1, dh)
        Hd = net.decoder[0].cross_attention.num_heads
        dhd = net.decoder_dim // Hd
        self.dec_kv = [tuple(torch.zeros(n, Hd, self.K + 1 + self.J, dhd, device=dev, dtype=dt) for _ in range(2))
                       for _ in net.decoder]
        self.long_buf = torch.zeros(n, self.M, net.d_model, device=dev, dtype=dt) if self.M else None
        # the constant queries, expanded to the streams once
        self.dec_q1n = self.dec_q1.expand(n, -1, -1, -1).contiguous()  # (N, Hd, Q, dh)
        self.count = 0
        self.n = n

    def _advance(self, x: Tensor) -> Tensor:
        """Append chunk ``x (N, in_dim)`` to every cache; returns its memory state ``(N, 1, d)``."""
        net, L, K = self.net, self.L, self.K
        c = self.count
        p, pd = c % L, c % K
        self.count = c = c + 1
        row = p if c >= L else L + p
        self._bias_enc = self.enc_bias[row]  # (1, H, 1, L)
        self._bias_tok = None if self.tok_bias is None else self.tok_bias[row]  # (1, H, 1, L+1)
        self._bias_ro = self.ro_bias[row]  # (1, H, 1, L+J)
        self._bias_dec = self.dec_bias[pd if c >= K else K + pd]  # (1, Hd, 1, K+1+J)
        h = net.linear_encoding(x)[:, None]  # (N, in_dim) -> (N, 1, d)
        if self.M:
            self.long_buf[:, (c - 1) % self.M] = h[:, 0]
        for layer, (kc, vc) in zip(net.encoder, self.enc_kv):
            q, k, v = layer.qkv(h)  # (N, H, 1, dh)
            kc[:, :, p] = k[:, :, 0]
            vc[:, :, p] = v[:, :, 0]
            h = layer.finish(h, layer.attend(q, kc, vc, self._bias_enc))
        m = net.encoder_norm(h)  # (N, 1, d)
        if not self.in_encoder:
            k, v = net.readout.attn.keys_values(m)
            self.ro_kv[0][:, :, p] = k[:, :, 0]
            self.ro_kv[1][:, :, p] = v[:, :, 0]
        for layer, (kc, vc) in zip(net.decoder, self.dec_kv):
            k, v = layer.cross_attention.keys_values(m)
            kc[:, :, pd] = k[:, :, 0]
            vc[:, :, pd] = v[:, :, 0]
        return m

    def _long_tokens(self) -> Tensor:
        """The long-memory tokens ``(N, J, d)`` of the newest chunk: weighted means of the ring of the last
        ``M`` embeddings (the weights of :func:`oad.models.oadtr_sw.long_weights`, by each slot's age)."""
        M, c = self.M, self.count
        p = (c - 1) % M  # the newest slot
        if c >= M:
            w = torch.roll(self.long_rev_full, p + 1, dims=-1)  # (J, M)
        else:  # slots 0..p written so far
            w = torch.roll(self.long_rev, p + 1, dims=-1)[:, : p + 1]
            w = F.pad(w / w.sum(dim=-1, keepdim=True), (0, M - p - 1)).to(self.long_buf.dtype)
        return self.net.long_memory_tokens(torch.matmul(w, self.long_buf))  # (N, J, d)

    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net, N, Q, K, L = self.net, x.shape[0], self.Q, self.K, self.L
        self._advance(x)
        long = self._long_tokens() if self.M else None  # (N, J, d)
        if long is not None:
            k, v = net.readout.attn.keys_values(long)
            self.ro_kv[0][:, :, L:] = k
            self.ro_kv[1][:, :, L:] = v
        token = self._token_in_encoder(N) if self.in_encoder else net.readout.finish(
            net.readout.attn.attend(self.ro_qn, self.ro_kv[0], self.ro_kv[1], self._bias_ro))  # (N, 1, d)
        own = token if long is None else torch.cat((token, long), dim=1)  # (N, 1+J, d)
        h = self.dec_x1  # (1, 1, Q, d_dec)
        for i, (layer, (kc, vc)) in enumerate(zip(net.decoder, self.dec_kv)):
            k, v = layer.cross_attention.keys_values(own)  # (N, Hd, 1+J, dh): the token's and long slots
            kc[:, :, K:] = k
            vc[:, :, K:] = v
            if i == 0:
                q = self.dec_q1n
            else:
                h = layer.self_block(h.reshape(N, Q, -1)).view(N, 1, Q, -1)
                q = layer.cross_queries(h, N, 1)
            h = layer.cross_block(h, q, kc, vc, self._bias_dec)  # (N, 1, Q, d_dec)
        dec = net.decoder_norm(h)[:, 0]  # (N, Q, d_dec)
        logits = net.mlp_head(torch.cat((token[:, 0], dec.mean(dim=1)), dim=-1))
        return logits, net.classifier(dec)

    def _token_in_encoder(self, n: int) -> Tensor:
        """``readout="encoder"``: the token ``(N, 1, d)`` as a query row of every encoder layer over its
        cache (the current chunk included) and its own key/value (bias 0)."""
        net = self.net
        tok = net.cls_token.expand(n, 1, -1)  # (N, 1, d)
        for layer, (kc, vc) in zip(net.encoder, self.enc_kv):
            q, k, v = layer.qkv(tok)  # (N, H, 1, dh)
            tok = layer.finish(tok, layer.attend(q, torch.cat((kc, k), dim=2), torch.cat((vc, v), dim=2),
                                                 self._bias_tok))
        return net.encoder_norm(tok)

    def prime(self, x: Tensor) -> None:
        """Feed ``x (N, T, in_dim)`` into the caches (the readout and the decoder queries are skipped)."""
        for t in range(x.shape[1]):
            self._advance(x[:, t])


def _with_token_slot(table: Tensor, slots: int = 1) -> Tensor:
    """A ring bias table ``(..., S)`` with ``slots`` more key slots at the end, the current chunk's own
    (its token, its long-memory tokens: bias 0)."""
    return torch.cat((table, table.new_zeros(*table.shape[:-1], slots)), dim=-1)


class OadTRSWExportStep(ExportStep):
    """One online OadTR-SW step (``readout="cross"``) over explicit caches, for TorchScript and ONNX:
    ``(enc_k, enc_v, ro_k, ro_v, dec_k, dec_v, long_buf, count, features) -> (scores (N, C),
    future_scores (N, Q, C), the same state)``.

    The caches of :class:`OadTRSWStep`, oldest first instead of a ring (each step drops the oldest slot and
    appends the newest, so the ALiBi biases of the slots are constants and only the slots not yet written,
    the first ``size - count``, are masked): ``enc_k``/``enc_v (N, layers, H, L, dh)`` the encoder layers'
    keys/values, ``ro_k``/``ro_v (N, H, L, dh)`` the readout's, ``dec_k``/``dec_v (N, decoder layers, Hd,
    K, dh)`` the decoder layers' of the memory states, ``long_buf (N, max(M, 1), d)`` the last ``M``
    embeddings (the long memory; one slot, unused, without one), ``count (N,)`` int64 the chunks seen
    (capped at the longest buffer). Start from zeros and feed back what the step returns.

    Args:
        net: a trained ``OadTRSW`` (copied, eval mode).
        ignore_index: class left out of the softmax, or None.
    """

    state_names = ("enc_k", "enc_v", "ro_k", "ro_v", "dec_k", "dec_v", "long_buf", "count")
    input_names = (*state_names, "features")
    output_names = ("scores", "future_scores", *(f"next_{s}" for s in state_names))
    state_first = True

    def __init__(self, net: nn.Module, ignore_index: int | None = 21):
        if net.readout_mode != "cross":
            raise TypeError(f"OadTR-SW exports with readout='cross' only, not {net.readout_mode!r}")
        super().__init__(net, ignore_index)
        n = self.net
        self.L, self.K, self.M, self.J = n.window, n.decoder_window, n.long_memory, len(n.long_decays)
        self.window = max(self.L, self.K, self.M)  # the longest buffer: the count is capped there
        with torch.no_grad():
            x1, q1 = n.decoder_prefix()
            self.register_buffer("ro_q", n.readout.query(), persistent=False)  # (1, H, 1, dh)
        self.register_buffer("dec_x1", x1, persistent=False)  # (1, 1, Q, d_dec)
        self.register_buffer("dec_q1", q1, persistent=False)  # (1, Hd, Q, dh)
        # ALiBi of slot j (oldest first) of an L- / K-slot cache: distance size - 1 - j
        self.register_buffer("enc_alibi", _oldest_first(n.enc_slopes, self.L), persistent=False)  # (1, H, 1, L)
        self.register_buffer("dec_alibi", _oldest_first(n.dec_slopes, self.K), persistent=False)
        if self.M:
            # oldest first: slot j is M - 1 - j back
            self.register_buffer("long_w", age_weights(n.long_decays, self.M).flip(-1), persistent=False)

    @staticmethod
    def _written(size: int, count: Tensor, device: torch.device) -> Tensor:
        """``(N, size)``: the slots written so far (the last ``count``)."""
        return torch.arange(size, device=device)[None, :] >= (size - count)[:, None]

    def _bias(self, alibi: Tensor, count: Tensor, extra: int) -> Tensor:
        """``(N, H, 1, size + extra)``: the masked ALiBi biases of a cache, then ``extra`` slots at bias 0."""
        ok = self._written(alibi.shape[-1], count, alibi.device)[:, None, None]  # (N, 1, 1, size)
        bias = alibi.masked_fill(~ok, float("-inf"))
        return torch.cat((bias, bias.new_zeros(*bias.shape[:-1], extra)), dim=-1)

    def forward(self, enc_k: Tensor, enc_v: Tensor, ro_k: Tensor, ro_v: Tensor, dec_k: Tensor, dec_v: Tensor,
                long_buf: Tensor, count: Tensor, features: Tensor) -> tuple[Tensor, ...]:
        net = self.net
        N, Q = features.shape[0], self.net.num_queries
        count = torch.clamp(count + 1, max=self.window)
        e = net.linear_encoding(features)[:, None]  # (N, 1, d)

        bias_enc = self._bias(self.enc_alibi, count, 0)
        h, ks, vs = e, [], []
        for i, layer in enumerate(net.encoder):
            q, k, v = layer.qkv(h)
            ks.append(torch.cat((enc_k[:, i, :, 1:], k), dim=2))
            vs.append(torch.cat((enc_v[:, i, :, 1:], v), dim=2))
            h = layer.finish(h, layer.attend(q, ks[-1], vs[-1], bias_enc))
        enc_k, enc_v = torch.stack(ks, 1), torch.stack(vs, 1)
        m = net.encoder_norm(h)  # (N, 1, d)

        long_buf = torch.cat((long_buf[:, 1:], e), dim=1)  # (N, max(M, 1), d)
        kr, vr = net.readout.attn.keys_values(m)
        ro_k, ro_v = torch.cat((ro_k[:, :, 1:], kr), dim=2), torch.cat((ro_v[:, :, 1:], vr), dim=2)
        kr, vr, long = ro_k, ro_v, None
        if self.M:
            w = self.long_w[None] * self._written(self.M, count, features.device)[:, None]  # (N, J, M)
            long = net.long_memory_tokens(torch.matmul(w / w.sum(-1, keepdim=True), long_buf))  # (N, J, d)
            kl, vl = net.readout.attn.keys_values(long)
            kr, vr = torch.cat((kr, kl), dim=2), torch.cat((vr, vl), dim=2)
        att = net.readout.attn.attend(self.ro_q.expand(N, -1, -1, -1), kr, vr, self._bias(self.enc_alibi, count, self.J))
        token = net.readout.finish(att)  # (N, 1, d)

        own = token if long is None else torch.cat((token, long), dim=1)  # (N, 1+J, d)
        bias_dec = self._bias(self.dec_alibi, count, own.shape[1])
        h, ks, vs = self.dec_x1, [], []
        for i, layer in enumerate(net.decoder):
            km, vm = layer.cross_attention.keys_values(m)
            ks.append(torch.cat((dec_k[:, i, :, 1:], km), dim=2))
            vs.append(torch.cat((dec_v[:, i, :, 1:], vm), dim=2))
            ko, vo = layer.cross_attention.keys_values(own)
            if i == 0:
                q = self.dec_q1.expand(N, -1, -1, -1)
            else:
                h = layer.self_block(h.reshape(N, Q, -1)).view(N, 1, Q, -1)
                q = layer.cross_queries(h, N, 1)
            h = layer.cross_block(h, q, torch.cat((ks[-1], ko), 2), torch.cat((vs[-1], vo), 2), bias_dec)
        dec_k, dec_v = torch.stack(ks, 1), torch.stack(vs, 1)
        dec = net.decoder_norm(h)[:, 0]  # (N, Q, d_dec)
        logits = net.mlp_head(torch.cat((token[:, 0], dec.mean(dim=1)), dim=-1))
        return (*self.probabilities(logits, net.classifier(dec)), enc_k, enc_v, ro_k, ro_v, dec_k, dec_v, long_buf,
                count)

    def init_state(self, n: int) -> tuple[Tensor, ...]:
        """Zeros: ``(enc_k, enc_v, ro_k, ro_v, dec_k, dec_v, long_buf, count)`` of ``n`` streams."""
        net, dev = self.net, self.class_bias.device
        H, Hr = net.encoder[0].num_heads, net.readout.attn.num_heads
        Hd = net.decoder[0].cross_attention.num_heads
        enc = (n, len(net.encoder), H, self.L, net.d_model // H)
        ro = (n, Hr, self.L, net.d_model // Hr)
        dec = (n, len(net.decoder), Hd, self.K, net.decoder_dim // Hd)
        zeros = [torch.zeros(s, device=dev) for s in (enc, enc, ro, ro, dec, dec, (n, max(self.M, 1), net.d_model))]
        return (*zeros, torch.zeros(n, dtype=torch.int64, device=dev))


def _oldest_first(slopes: list[float], size: int) -> Tensor:
    """ALiBi biases ``(1, H, 1, size)`` of a cache held oldest first: slot ``j`` is ``size - 1 - j`` back."""
    dist = torch.arange(size - 1, -1, -1, dtype=torch.float32)
    return (-torch.tensor(slopes, dtype=torch.float32)[:, None] * dist)[None, :, None, :]
