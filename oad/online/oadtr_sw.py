"""The online step of OadTR-SW: per-layer key/value caches, a constant cost per chunk.

Per stream, ring buffers of the keys/values of the last ``L`` chunks for every encoder layer and for the
readout, and of the last ``K`` chunks' memory states for every decoder layer (plus one slot for the
current readout token). A step embeds the new chunk, runs it through each encoder layer as one query
against the cached keys/values (appending its own first), then the readout (a constant query over the
``L`` cached memory keys; with ``readout="encoder"`` the token is one query row per encoder layer over
that layer's cache instead) and the decoder (``Q`` queries over ``K + 1`` cached keys). Nothing is
re-encoded: the cost is constant in the history, ``O(L)`` only in the attention over the caches.

Ring slots are written at ``count % L``; attention is order-free given its ALiBi biases, so a table of
biases per newest slot (full ring, or the ``c < L`` slots written so far) replaces any rotation. Equals
:meth:`oad.models.oadtr_sw.OadTRSW.forward_video` chunk by chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from oad.models.oadtr_sw import ring_bias_table
from oad.online.base import OnlineStep
from oad.online.quantized import quantize_linear


class OadTRSWStep(OnlineStep):
    """Key/value-cache step of an ``OadTRSW`` (copied, eval mode, cast to ``dtype``; with ``int8`` a
    :func:`oad.online.quantized.quantize_linear` copy: int8 linear layers, everything else float32)."""

    implementation = "kv-cache"
    quantize = staticmethod(quantize_linear)
    stream_state = {"enc_kv": 0, "ro_kv": 0, "dec_kv": 0}  # (N, heads, slots, dh) caches
    counters = ("count",)

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        super().__init__(net, device, dtype, int8)
        n = self.net
        self.L, self.K, self.Q = n.window, n.decoder_window, n.num_queries
        self.in_encoder = n.readout_mode == "encoder"  # the task token: query rows of the encoder layers
        with torch.no_grad():
            self.ro_q = None if self.in_encoder else n.readout.query()  # (1, H, 1, dh)
            self.dec_x1, self.dec_q1 = n.decoder_prefix()  # (1, 1, Q, d_dec), (1, Hd, Q, dh)
        enc = ring_bias_table(n.enc_slopes, self.L)  # (2L, 1, H, 1, L)
        self.enc_bias = enc.to(device=device, dtype=dtype)
        # the encoder token's rows (readout="encoder") and the decoder see one more slot, the token's (bias 0)
        self.tok_bias = _with_token_slot(enc).to(device=device, dtype=dtype) if self.in_encoder else None
        self.dec_bias = _with_token_slot(ring_bias_table(n.dec_slopes, self.K)).to(device=device, dtype=dtype)
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
            self.ro_kv = tuple(torch.zeros(n, Hr, self.L, net.d_model // Hr, device=dev, dtype=dt) for _ in range(2))
            self.ro_qn = self.ro_q.expand(n, -1, -1, -1).contiguous()  # (N, H, 1, dh)
        Hd = net.decoder[0].cross_attention.num_heads
        dhd = net.decoder_dim // Hd
        self.dec_kv = [tuple(torch.zeros(n, Hd, self.K + 1, dhd, device=dev, dtype=dt) for _ in range(2))
                       for _ in net.decoder]
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
        self._bias_dec = self.dec_bias[pd if c >= K else K + pd]  # (1, Hd, 1, K+1)
        h = net.linear_encoding(x)[:, None]  # (N, in_dim) -> (N, 1, d)
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

    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net, N, Q, K = self.net, x.shape[0], self.Q, self.K
        self._advance(x)
        token = self._token_in_encoder(N) if self.in_encoder else net.readout.finish(
            net.readout.attn.attend(self.ro_qn, self.ro_kv[0], self.ro_kv[1], self._bias_enc))  # (N, 1, d)
        h = self.dec_x1  # (1, 1, Q, d_dec)
        for i, (layer, (kc, vc)) in enumerate(zip(net.decoder, self.dec_kv)):
            k, v = layer.cross_attention.keys_values(token)  # (N, Hd, 1, dh): the token's slot
            kc[:, :, K] = k[:, :, 0]
            vc[:, :, K] = v[:, :, 0]
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


def _with_token_slot(table: Tensor) -> Tensor:
    """A ring bias table ``(..., S)`` with one more key slot at the end, the current token's (bias 0)."""
    return torch.cat((table, table.new_zeros(*table.shape[:-1], 1)), dim=-1)
