"""The online step of window models: a ring buffer of the already-projected inputs.

``(N, 2L, d)`` with every chunk written twice (slots ``p`` and ``p + L``), so the window in
chronological order is always the contiguous-in-time slice ``[p + 1, p + 1 + L)``: no ``torch.cat``, no
shifting, and the input projection of a chunk is computed once, not ``L`` times. Until ``L`` chunks have
arrived the window is left-padded with zeros and masked, exactly as the offline "all" protocol does
(:func:`oad.models.base.score_windows`), so streaming and offline scores are the same.

:class:`WindowExportStep` is the same step for TorchScript and ONNX (:mod:`oad.export`), over an explicit
buffer of projected inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from oad.online.base import ExportStep, OnlineStep, StreamState
from oad.online.quantized import quantize_linear


class RingBuffer(StreamState):
    """The last ``L`` projected chunks of ``N`` streams, readable in chronological order without a copy.

    Every chunk is written at slot ``p = count % L`` and at ``p + L``, so ``buf[:, p + 1 : p + 1 + L]``
    is the window, oldest first. Slots that were never written hold zeros (the offline padding).
    """

    stream_state = {"buf": 0}
    counters = ("count",)

    def __init__(self, n: int, window: int, dim: int, device: torch.device, dtype: torch.dtype):
        self.L, self.dim, self.device, self.dtype = window, dim, device, dtype
        self.start(n)

    def start(self, n: int) -> None:
        self.buf = torch.zeros(n, 2 * self.L, self.dim, device=self.device, dtype=self.dtype)  # (N, 2L, d)
        self.count = 0

    def push(self, e: Tensor) -> Tensor:
        """Append ``e (N, d)``; returns the window ``(N, L, d)`` ending with it (a view)."""
        p = self.count % self.L
        self.buf[:, p] = e
        self.buf[:, p + self.L] = e
        self.count += 1
        return self.buf[:, p + 1 : p + 1 + self.L]

    def prime(self, x: Tensor, embed: Callable[[Tensor], Tensor]) -> None:
        """Append ``x (N, T, D)`` past chunks: only the last ``k = min(T, L)`` are projected by ``embed``
        (``(N, k, D) -> (N, k, d)``); older ones are never needed, only counted."""
        T = x.shape[1]
        e = embed(x[:, max(0, T - self.L) :])  # (N, k, D) -> (N, k, d)
        self.count += T - e.shape[1]
        for t in range(e.shape[1]):
            self.push(e[:, t])


class WindowStep(OnlineStep):
    """The plain step of any window model with ``window``, ``embed`` and ``forward_embedded`` (OadTR off
    the CPU fast path, ChunkLinear): a ring buffer of projected chunks and the model's own forward.

    With ``int8`` (CPU, float32) the copy is :func:`oad.online.quantized.quantize_linear`'s: int8 linear
    layers, everything else float32."""

    quantize = staticmethod(quantize_linear)
    int8_label = "plain"
    stream_state = {"ring": 0}

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        super().__init__(net, device, dtype, int8)
        self.ring: RingBuffer | None = None
        self.masks: Tensor | None = None

    def start(self, n: int) -> None:
        device, dtype = self.device, self.dtype
        L = self.net.window
        dim = self.net.embed(torch.zeros(1, self.net.in_dim, device=device, dtype=dtype)).shape[-1]
        self.ring = RingBuffer(n, L, dim, device, dtype)
        # masks[c] is the window mask after c + 1 chunks: the first L - 1 - c positions are padding.
        self.masks = torch.arange(L, device=device)[None, :] >= (L - 1 - torch.arange(L, device=device))[:, None]
        self.n = n

    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        window = self.ring.push(self.net.embed(x))  # (N, in_dim) -> (N, d) -> (N, L, d)
        c = self.ring.count
        mask = None if c >= self.ring.L else self.masks[c - 1].expand(self.n, -1)  # (N, L)
        return self.net.forward_embedded(window, mask)

    def prime(self, x: Tensor) -> None:
        self.ring.prime(x, self.net.embed)


class WindowExportStep(ExportStep):
    """One online step of a window model (``embed`` + ``forward_embedded``: OadTR, the linear floor) over an
    explicit buffer of projected inputs:
    ``(buffer (N, L, d), count (N,), features (N, in_dim)) -> (scores (N, C), future_scores (N, Q, C),
    buffer (N, L, d), count (N,))``.

    ``buffer`` holds the projected inputs of the last ``L`` chunks, oldest first, zeros before the stream
    starts; ``count`` is the number of chunks seen so far (int64, capped at ``L``). Start with zeros for
    both and feed back what the step returns. Until ``L`` chunks have arrived the window is left-padded
    and masked, exactly as the offline "all" protocol (``oad.tasks.scoring.score_videos``) scores the
    first ``L - 1`` chunks.

    Args:
        net: a trained window model (copied, in eval mode).
        ignore_index: class left out of the softmax, or None.
    """

    input_names = ("buffer", "count", "features")
    output_names = ("scores", "future_scores", "next_buffer", "next_count")
    state_first = True

    def __init__(self, net: nn.Module, ignore_index: int | None = 21):
        super().__init__(net, ignore_index)
        self.window = net.window
        with torch.no_grad():  # width of the projected inputs the buffer holds
            self.d_model = int(self.net.embed(torch.zeros(1, net.in_dim)).shape[-1])
        self.register_buffer("positions", torch.arange(net.window), persistent=False)

    def forward(self, buffer: Tensor, count: Tensor, features: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """
        Args:
            buffer: ``(N, L, d_model)`` projected inputs of the previous chunks, oldest first.
            count: ``(N,)`` int64, chunks seen before this one.
            features: ``(N, in_dim)`` the new chunk.
        Returns:
            ``scores (N, C)``, ``future_scores (N, Q, C)``, the new ``buffer`` and ``count``.
        """
        e = self.net.embed(features)  # (N, in_dim) -> (N, d)
        buffer = torch.cat((buffer[:, 1:], e[:, None]), dim=1)  # drop the oldest: (N, L, d)
        count = torch.clamp(count + 1, max=self.window)
        mask = self.positions[None, :] >= (self.window - count)[:, None]  # (N, L): the last `count` are real
        logits, future = self.net.forward_embedded(buffer, mask)
        return (*self.probabilities(logits, future), buffer, count)

    def init_state(self, n: int) -> tuple[Tensor, Tensor]:
        """``(buffer, count)`` before the first chunk of ``n`` streams."""
        ref = self.class_bias
        return (torch.zeros(n, self.window, self.d_model, device=ref.device),
                torch.zeros(n, dtype=torch.int64, device=ref.device))
