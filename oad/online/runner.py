"""The online runner: one chunk of features in, current and future class probabilities out.

:class:`OnlineDetector` wraps a trained network and calls the online step its class names
(``online_step``, :mod:`oad.models.base`), which keeps only what the next chunk needs: a ring buffer of
projected inputs (OadTR, :mod:`oad.online.window`; on the CPU the hand-fused engine of
:mod:`oad.online.fused_cpu`), a recurrent state (TRN, MiniROAD), memories (LSTR) or running sums
(TeSTra). Every step equals the model's whole-video scoring (``forward_videos``) chunk by chunk.

Streams: ``step`` takes ``(in_dim,)`` (one stream) or ``(N, in_dim)`` (N streams stepped together as
one batch, all started at the same :meth:`OnlineDetector.reset`). ``bfloat16`` mode casts the copied
weights and runs every layer in bf16 (CPU or GPU); probabilities are computed in fp32.

``int8`` mode (``dtype="int8"`` or ``torch.qint8``, CPU only): int8 weights for the linear layers, dynamic
quantization with PyTorch's quantized kernels (:mod:`oad.online.quantized`), activations and everything
else float32 (the run dtype). A step class declares it by its ``quantize`` (the int8 copy it runs,
:class:`oad.online.base.OnlineStep`) and takes an ``int8`` option; the runner checks the device and
refuses int8 for the others, naming the model. OadTR (fused or plain step), TRN,
ChunkLinear, MiniROAD (its modules instead of the written-out GRU cell) and LSTR/TeSTra (``nn.Linear`` layers
and attention in-projections; the per-chunk long-memory key/value products stay float32) have it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from oad.models.base import class_probabilities, resolve
from oad.online.base import OnlineStep
from oad.online.quantized import check_int8_device, is_int8

__all__ = ["OnlineDetector", "StepOutput"]


class StepOutput(NamedTuple):
    """What :meth:`OnlineDetector.step` returns (a tuple: ``scores, future_scores = det.step(x)``).

    Attributes:
        scores: float32 probabilities of the newest chunk, ``(C,)`` for one stream or ``(N, C)``.
        future_scores: float32 probabilities of the next ``Q`` chunks, ``(Q, C)`` or ``(N, Q, C)``
            (for OadTR, row ``j`` is chunk ``t + 1 + j``; for TRN, ``t + j``: the model's ``future_offset``).
    """

    scores: Tensor
    future_scores: Tensor


class OnlineDetector:
    """Online action detection over one or several live streams, one chunk per call.

    Args:
        model: a trained ``oad`` model (its ``online_step`` names the step class that keeps its state;
            :mod:`oad.models.base`). It is not modified: the step works on a copy of its weights.
        dtype: ``torch.float32`` or ``torch.bfloat16`` (the copied weights and all layers are cast;
            probabilities are always computed in float32), or ``"int8"`` / ``torch.qint8`` (int8 linear
            weights on the CPU, float32 activations: :mod:`oad.online.quantized`).
        device: where to run (default: the model's device).
        ignore_index: class left out of the softmax (probability 0; THUMOS' Ambiguous), or None.
        **step_options: options of the model's step class, e.g. for OadTR ``fused`` (the hand-fused CPU
            engine; None: wherever oneDNN is available) and ``prepack`` (its oneDNN weight layout).

    Example::

        det = OnlineDetector(net)
        for chunk in FeatureExtractor(...).iter_chunks(video):
            scores, future_scores = det.step(chunk.vector)  # (C,), (Q, C)
        det.reset()  # a new stream (or a new set of N streams)

    Attributes:
        in_dim, num_classes, num_queries, window: the model's sizes (``window`` is None for models
            without one).
        num_streams: ``N`` of the current streams (None before the first step after a reset).
        num_steps: chunks stepped since the last reset.
        dtype: the run dtype of inputs and activations (float32 for int8).
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"``.
        implementation: what the step runs (e.g. ``"fused oneDNN prepacked"``, ``"plain"``,
            ``"fused int8 dynamic (x86)"``).
        prepack: whether oneDNN prepacked weights are used.
        engine: the online step it runs (:class:`oad.online.base.OnlineStep`; :class:`oad.online.pool.StreamPool`
            forks it to batch streams of different histories).
    """

    def __init__(
        self,
        model: nn.Module,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        ignore_index: int | None = 21,
        **step_options: Any,
    ):
        int8 = is_int8(dtype)
        if not int8 and dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or 'int8' (torch.qint8), got {dtype}")
        param = next(iter(model.parameters()), None)
        self.device = torch.device(device) if device is not None else (
            param.device if param is not None else torch.device("cpu"))
        self.precision = "int8" if int8 else {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
        if int8:
            dtype = torch.float32  # int8 weights, float32 activations
        self.dtype = dtype
        self.ignore_index = ignore_index
        self.in_dim = int(model.in_dim)
        self.num_classes = int(model.num_classes)
        self.num_queries = int(model.num_queries)
        window = getattr(model, "window", None)
        self.window = None if window is None or not hasattr(model, "embed") else int(window)
        step_path = getattr(model, "online_step", None)
        if not step_path:
            raise TypeError(f"{type(model).__name__} names no online step (class attribute 'online_step')")
        options = {k: v for k, v in step_options.items() if v is not None}  # None: the step's default
        step_cls = resolve(step_path)
        if int8:
            name = type(model).__name__
            check_int8_device(self.device, name)
            if getattr(step_cls, "quantize", None) is None:
                raise ValueError(f"int8 is not supported for {name}: its online step {step_cls.__name__} declares "
                                 f"no int8 path (its 'quantize' is None); use float32 or bfloat16")
            options["int8"] = True
        self._engine: OnlineStep = step_cls(model, self.device, dtype, **options)
        self.implementation = str(self._engine.implementation)
        self.prepack = bool(getattr(self._engine, "prepack", False))
        self.reset()

    @property
    def engine(self) -> OnlineStep:
        """The online step this detector runs (its weights and its streams' state)."""
        return self._engine

    def reset(self) -> None:
        """Start new streams: the next :meth:`step` fixes their number ``N`` (it may differ from before)."""
        self.num_streams: int | None = None
        self.num_steps = 0

    def _streams(self, x: Tensor) -> Tensor:
        """Move to the run device/dtype; start the engine for the first input's N, or check N."""
        x = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
        n = x.shape[0]
        if self.num_streams is None:
            self._engine.start(n)
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


