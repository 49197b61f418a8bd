"""The one interface every ``oad`` model implements, documented once.

A model is a plain ``nn.Module`` (keyword-only constructor arguments with the paper's names, no
training logic, no file I/O) that also carries the few facts and methods the rest of the package calls.
The data pipeline, the LightningModule, the evaluation, the online runner and the exporter only use
these; none of them tests which class it holds. Adding a model is adding a model file, its online step
(``oad/online/<name>.py``), a recipe and an experiment file.

Sizes (attributes):
    ``in_dim``, ``num_classes``; ``num_queries``: future chunks the model anticipates (0: none);
    ``future_offset`` (class attribute): future step ``j`` (0-based) issued at chunk ``t`` predicts
    chunk ``t + future_offset + j``.

Training samples:
    ``samples`` (class attribute): ``"module:function"`` building the training dataset,
    ``function(videos, config, ignore_index=..., seed=...) -> Dataset`` where ``config`` is the model's
    constructor config (plus ``future_offset``); see :mod:`oad.data.samples`. A dataset with a
    ``set_epoch(epoch)`` method is told every epoch (random offsets redrawn).

    ``training_logits(batch) -> (logits, future_logits)``: the outputs the criterion compares with
    ``batch['target']`` and ``batch['future_target']`` (same leading shapes).

Whole videos (evaluation, the "all" protocol):
    ``forward_videos(features) -> [(logits (T, C), future_logits (T, Q, C)), ...]`` for a list of
    ``(T, in_dim)`` tensors: every chunk scored from chunks ``<= t`` only, exactly what the online step
    computes chunk by chunk. The default scores the videos one by one with ``forward_video``.

Online:
    ``online_step`` (class attribute): ``"module:Class"`` of its :class:`oad.online.base.OnlineStep`.
    ``export_step`` (class attribute, optional): ``"module:Class"`` of an exportable
    (TorchScript/ONNX) step module, or None.

Registry (:mod:`oad.models.registry`; a model is registered by its ``configs/model/<name>.yaml``):
    ``tiny`` (constructor arguments of the tests' tiny instance), ``tiny_init_norms``,
    ``int8_tolerance`` (``{'fp32': ..., 'offline': ...}``: bounds of the int8 step against the float32
    step and against the int8 copy's ``forward_videos``; None where that comparison does not apply),
    ``paper_variants`` (benchmark rows), and ``recognises_reference(names)`` (a staticmethod) for models
    whose reference checkpoints the converter reads (with ``from_reference`` and ``reference_config``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


def resolve(path: str) -> Any:
    """The object named by ``"package.module:attribute"`` (imported on demand)."""
    module, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"expected 'module:attribute', got {path!r}")
    return getattr(importlib.import_module(module), attr)


class OnlineModel(nn.Module):
    """Base class of the ``oad`` models: the defaults of the interface above.

    Subclasses set ``samples`` and ``online_step`` and implement ``training_logits`` and
    ``forward_video`` (or ``forward_videos``).
    """

    samples: ClassVar[str] = "oad.data.samples:last_chunk_windows"
    online_step: ClassVar[str]
    export_step: ClassVar[str | None] = None
    future_offset: ClassVar[int] = 1
    tiny: ClassVar[dict[str, Any] | None] = None
    tiny_init_norms: ClassVar[bool] = True
    int8_tolerance: ClassVar[dict[str, float | None] | None] = None
    paper_variants: ClassVar[dict[str, dict[str, Any]] | None] = None

    in_dim: int
    num_classes: int
    num_queries: int

    def training_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward_video(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(T, in_dim)`` -> ``logits (T, C)``, ``future_logits (T, Q, C)``, online (chunk ``t`` from ``<= t``)."""
        raise NotImplementedError

    @torch.no_grad()
    def forward_videos(self, features: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        return [self.forward_video(f) for f in features]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of a module."""
    return sum(p.numel() for p in model.parameters())


def has_padding(mask: Tensor | None) -> bool:
    """Whether a ``(B, S)`` valid-mask marks any padded position (so an attention mask is needed).

    No mask at all when nothing is padded: on CUDA a mask keeps ``scaled_dot_product_attention`` off its
    fastest kernels. While tracing or exporting the answer must not depend on the data: a given mask is
    then always applied.
    """
    if mask is None:
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    return not bool(mask.all())


def window_rows(t: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Rows of a front-padded sequence forming the windows that end at chunks ``t``, and their masks.

    With ``window - 1`` padding rows in front, the window ending at chunk ``t`` is rows ``t .. t+L-1``.
    Returns ``(rows (N, L), mask (N, L))``, mask True on real chunks.
    """
    offs = torch.arange(window, device=t.device)
    rows = t[:, None] + offs[None, :]  # (N, L)
    mask = rows >= window - 1
    return rows, mask


@torch.no_grad()
def score_windows(model: nn.Module, features: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Logits of every chunk of one video with a window model (``window``, ``embed``, ``forward_embedded``).

    Chunk ``t`` is scored from the window ending at ``t``; the first ``L - 1`` chunks get a left-padded,
    masked window. The input projection is applied once per chunk and the windows are gathered from the
    projected sequence, as the online step does it. Only windows that hold padding get a mask.

    Returns:
        ``logits (T, C)`` and ``future_logits (T, Q, C)``.
    """
    L = model.window
    T = features.shape[0]
    e = model.embed(features)  # (T, D) -> (T, d), once per chunk
    e = torch.cat((e.new_zeros(L - 1, e.shape[1]), e), dim=0)  # (L-1+T, d)
    logits, future = [], []
    for t0 in range(0, T, batch_size):
        t = torch.arange(t0, min(T, t0 + batch_size), device=features.device)
        rows, mask = window_rows(t, L)
        lg, fut = model.forward_embedded(e[rows], mask if t0 < L - 1 else None)  # (N, L, d) -> (N, C), (N, Q, C)
        logits.append(lg)
        future.append(fut)
    return torch.cat(logits), torch.cat(future)


def class_probabilities(logits: Tensor, ignore_index: int | None) -> Tensor:
    """Softmax over the classes other than ``ignore_index``; the ignore column is set to 0. ``(..., C)``.

    Every model's scores are these probabilities (the reference scoring), computed in float32.
    """
    logits = logits.float()
    if ignore_index is None:
        return torch.softmax(logits, dim=-1)
    masked = logits.clone()
    masked[..., ignore_index] = float("-inf")
    return torch.softmax(masked, dim=-1)
