"""Online step of TeSTra (:class:`oad.models.testra.TeSTra`): an exact stream of the reference batch mode
whose cost per chunk does not grow with the long memory.

Chunk ``t`` is scored from the work window ``ws = max(0, t - W + 1) .. t`` and the long memory of ``ws``
(:meth:`TeSTra.long_memory_indices <oad.models.testra.TeSTra.long_memory_indices>`): the chunks ``j = ws (mod 4)``
in ``[ws - L, ws - 4]``, plus chunk 0 while the memory is not full (the reference's padding leaves
one chunk-0 slot unmasked, just before the oldest sample). So the memories of the windows with the same
``p = ws mod 4`` form a FIFO of ``N`` keys: window ``ws`` is window ``ws - 4`` plus chunk ``ws - 4``, minus the
oldest key once ``N`` are held, every older key one slot older (kernel weight times ``alpha``).

The first compression stage's queries are learned constants, so a key's scores ``q . k`` (``H x 16``) and its
value are computed once, when the chunk arrives. Per phase ``p`` (4 of them) and per query and head the
stage's attention output is ``S / Z`` with running sums

    ``Z = sum_j w_j e^(s_j - m)``, ``S = sum_j w_j e^(s_j - m) v_j``, ``w_j = alpha^age_j + 1e-10``

(``age`` = pushes since key ``j``; box kernel: ``w = 1``), kept as a decayed part (``alpha^age``) and a flat
part (``1``, which also carries the reference's ``1e-10``). A push is ``O(16 d)``: both parts are rescaled
when the running maximum ``m`` grows, the decayed part is multiplied by ``alpha``, the new key is added with
weight 1, and once the FIFO is full the evicted key is subtracted with its weight at eviction, ``alpha^N``
(decayed part) and 1 (flat part). Differences from the reference stream mode
(``DotProductAttentionStream``), which does not equal its batch mode: keys are evicted (it never evicts);
there is no second copy of chunk 0 (it pushes chunk 0 again); the key/value projection biases are kept (it
drops them); ``m`` is a running maximum (it freezes the first call's row maximum, so ``exp`` may overflow);
any number of heads and streams.

Staying exact in float32: subtracting evicted keys cancels. Every phase also keeps the sum of everything
added since its sums were last computed from scratch (``G``, decayed like ``Z``), and recomputes its sums from
the FIFO (``O(16 N d)``, with the FIFO's maximum as ``m``) when ``G > 4 Z`` for any query and head (the
evicted keys held most of the mass, e.g. an evicted maximum: without this the held sums would be rounding
noise), and in any case every ``N / 4`` pushes (so rounding accumulates over at most ``N / 4`` updates, each
on sums at most 4 times what they hold; amortised ``O(64 d)`` per chunk, independent of ``N``). Stage 2 and the
work decoder are recomputed every step (they do not depend on ``N``). The sums are kept in float32 whatever
the run dtype. Tested equal to the batch mode to 1e-5 (float32) on videos several times the long memory,
with an evicted maximum, for both kernels.

Cost per chunk: the feature heads, key/value projections and scores of the new chunk, the push and the
amortised recomputations, the rest of the compression and the work decoder (it attends to the work tokens
too): none of it grows with ``N`` (in LSTR's step the stage-1 attention over the gathered keys does). FLOPs
and timings per chunk at paper size: ``docs/benchmarks.md``.

The step shares its constructor, feature heads, compression and decoder with LSTR's
(:class:`oad.online.lstr.LSTRFamilyStep`); what is its own is the first stage's attention, :meth:`TeSTraStep.stage1`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from oad.models.testra import KERNEL_EPS
from oad.online.lstr import LSTRFamilyStep


class TeSTraStep(LSTRFamilyStep):
    """TeSTra for ``n`` streams stepped together, equal to ``TeSTra.forward_video`` on each stream.

    With ``int8`` it runs a :func:`oad.online.lstr.quantize_lstr` copy (CPU); the sums stay float32 as always.

    Attributes:
        cancel_ratio: recompute a phase's sums when what was added since the last recomputation exceeds
            this many times what is left (after evictions).
        recompute_every: recompute a phase's sums after this many pushes (default ``max(1, N // 4)``).
    """

    cancel_ratio = 4.0
    recompute_every: int | None = None
    # per phase p: (P, n, ...); the decayed part is None with the box kernel
    stream_state = {**LSTRFamilyStep.stream_state, "pending_s": 0, "pending_v": 0, "fifo_s": 1, "fifo_v": 1,
                    "m": 1, "Z1": 1, "G1": 1, "S1": 1, "Za": 1, "Ga": 1, "Sa": 1}
    counters = (*LSTRFamilyStep.counters, "head", "count")  # the FIFOs' positions follow from t

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        super().__init__(net, device, dtype, int8)
        self.N, self.P = self.net.num_long, self.net.long_stride
        self.alpha = float(self.net.alpha)
        self.decayed = self.alpha != 1.0  # Laplace: decayed part + 1e-10 x flat part; box: flat part only
        ages = torch.arange(self.N, dtype=torch.float64)
        self.age_weight = (self.alpha ** ages).to(device=device, dtype=torch.float32)  # age -> alpha^age
        self.alpha_n = float(self.alpha ** self.N)  # weight of a key when it is evicted
        self.period = self.recompute_every or max(1, self.N // 4)
        self.recomputations = 0  # phase recomputations so far (diagnostics)

    def start(self, n: int) -> None:
        super().start(n)
        net = self.net
        H, Q1 = net.num_heads, self.consts.q.shape[1]
        hd = net.d_model // H
        f32 = {"device": self.device, "dtype": torch.float32}
        self.delay = net.work_memory + self.P  # chunk c is pushed W + P - 1 steps after it arrives
        self.pending_s = torch.zeros(n, self.delay, H, Q1, **f32)
        self.pending_v = torch.zeros(n, self.delay, H, hd, **f32)
        P, N = self.P, self.N
        # one FIFO of N keys per phase p = ws mod P, written at `head`, oldest at head - count
        self.fifo_s = torch.zeros(P, n, N, H, Q1, **f32)
        self.fifo_v = torch.zeros(P, n, N, H, hd, **f32)
        self.head, self.count, self.since = [0] * P, [0] * P, [0] * P
        self.m = torch.zeros(P, n, H, Q1, **f32)
        self.Z1, self.G1 = torch.zeros(P, n, H, Q1, **f32), torch.zeros(P, n, H, Q1, **f32)
        self.S1 = torch.zeros(P, n, H, Q1, hd, **f32)
        self.Za = self.Ga = self.Sa = None
        if self.decayed:
            self.Za, self.Ga = torch.zeros(P, n, H, Q1, **f32), torch.zeros(P, n, H, Q1, **f32)
            self.Sa = torch.zeros(P, n, H, Q1, hd, **f32)

    def adopt(self, sources: Sequence[TeSTraStep]) -> None:
        """Pushes since each phase's last recomputation: the most of the sources' (their sums are exact in
        any case: recomputing earlier only bounds the rounding sooner)."""
        self.since = [max(s.since[p] for s in sources) for p in range(self.P)]

    # -- running sums ------------------------------------------------------------------------------------
    def _push(self, p: int, s: Tensor, v: Tensor) -> None:
        """Add key ``(s (n, H, Q1), v (n, H, hd))`` to phase ``p``, evicting the oldest of ``N``."""
        if self.count[p] == 0:
            self.m[p] = s
            self.Z1[p], self.G1[p] = 1.0, 1.0
            self.S1[p] = v[:, :, None, :]
            if self.decayed:
                self.Za[p], self.Ga[p] = 1.0, 1.0
                self.Sa[p] = v[:, :, None, :]
        else:
            m_new = torch.maximum(self.m[p], s)
            f = torch.exp(self.m[p] - m_new)  # rescales what is held to the new maximum
            e = torch.exp(s - m_new)  # the new key, weight 1
            ev = e[..., None] * v[:, :, None, :]  # (n, H, Q1, hd)
            full = self.count[p] == self.N
            if full:
                e_old = torch.exp(self.fifo_s[p, :, self.head[p]] - m_new)
                ev_old = e_old[..., None] * self.fifo_v[p, :, self.head[p]][:, :, None, :]
            self.S1[p] = f[..., None] * self.S1[p] + ev - (ev_old if full else 0.0)
            self.Z1[p] = f * self.Z1[p] + e - (e_old if full else 0.0)
            self.G1[p] = f * self.G1[p] + e
            if self.decayed:
                fa = self.alpha * f
                self.Sa[p] = fa[..., None] * self.Sa[p] + ev - (self.alpha_n * ev_old if full else 0.0)
                self.Za[p] = fa * self.Za[p] + e - (self.alpha_n * e_old if full else 0.0)
                self.Ga[p] = fa * self.Ga[p] + e
            self.m[p] = m_new
        h = self.head[p]
        self.fifo_s[p, :, h] = s
        self.fifo_v[p, :, h] = v
        self.head[p] = (h + 1) % self.N
        self.count[p] = min(self.count[p] + 1, self.N)
        self.since[p] += 1
        z, g = self._mass(p)
        if self.since[p] >= self.period or not bool((g <= self.cancel_ratio * z).all()):
            self._recompute(p)

    def _mass(self, p: int) -> tuple[Tensor, Tensor]:
        """Held mass ``Z`` and mass added since the last recomputation ``G`` of phase ``p``, (n, H, Q1)."""
        if self.decayed:
            return self.Za[p] + KERNEL_EPS * self.Z1[p], self.Ga[p] + KERNEL_EPS * self.G1[p]
        return self.Z1[p], self.G1[p]

    def _recompute(self, p: int) -> None:
        """Phase ``p``'s sums from its FIFO, with its maximum as ``m``."""
        N = self.N
        age = (self.head[p] - 1 - torch.arange(N, device=self.device)) % N  # slot -> pushes since
        held = age < self.count[p]
        s = self.fifo_s[p].masked_fill(~held[None, :, None, None], float("-inf"))  # (n, N, H, Q1)
        m = s.amax(dim=1)
        e = torch.exp(s - m[:, None])  # 0 for empty slots
        v = self.fifo_v[p]  # (n, N, H, hd)
        self.m[p] = m
        self.Z1[p] = self.G1[p] = e.sum(dim=1)
        self.S1[p] = torch.einsum("bnhq,bnhc->bhqc", e, v)
        if self.decayed:
            ea = e * self.age_weight[age][None, :, None, None]
            self.Za[p] = self.Ga[p] = ea.sum(dim=1)
            self.Sa[p] = torch.einsum("bnhq,bnhc->bhqc", ea, v)
        self.since[p] = 0
        self.recomputations += 1

    def _attention(self, p: int) -> Tensor:
        """Phase ``p``'s stage-1 attention output ``(n, Q1, d)`` (before ``out_proj``)."""
        if self.decayed:
            out = (self.Sa[p] + KERNEL_EPS * self.S1[p]) / (self.Za[p] + KERNEL_EPS * self.Z1[p])[..., None]
        else:
            out = self.S1[p] / self.Z1[p][..., None]
        n, H, Q1, hd = out.shape
        return out.transpose(1, 2).reshape(n, Q1, H * hd).to(self.dtype)  # (n, H, Q1, hd) -> (n, Q1, d)

    # -- the first stage ---------------------------------------------------------------------------------
    def stage1(self, t: int, ws: int, scores: Tensor, values: Tensor) -> Tensor:
        P = self.P
        scores = scores.float()
        values = values.float().reshape(self.n, self.net.num_heads, -1)  # (n, d) -> (n, H, hd)
        self.pending_s[:, t % self.delay] = scores
        self.pending_v[:, t % self.delay] = values
        if t == 0:
            for q in range(P):  # every phase starts from chunk 0 (the reference's masked chunk-0 block)
                self._push(q, scores, values)
        p = ws % P
        if ws > P:  # window ws adds chunk ws - P to its phase (chunk 0 is already there)
            c = ws - P
            self._push(p, self.pending_s[:, c % self.delay], self.pending_v[:, c % self.delay])
        return self._attention(p)


__all__ = ["TeSTraStep"]
