"""The step interfaces: what every model's streaming step implements, and its exportable form.

An online step (:class:`OnlineStep`) holds the state one model needs between chunks (a ring buffer, a
recurrent state, a key/value cache, running sums) for ``N`` streams stepped together, and turns the
newest chunk of every stream into its logits. :class:`oad.online.OnlineDetector` is the only caller: it
validates inputs, checks the device and dtype (int8 runs on the CPU only), moves the inputs there and
turns logits into probabilities.

A model names its step class in ``online_step`` (``"module:Class"``), so the runner never tests which
model it holds. A model that can be exported also names an :class:`ExportStep` in ``export_step``: the
same step as an ``nn.Module`` over explicit state, for TorchScript and ONNX (:mod:`oad.export`). Both
live in the model's module of :mod:`oad.online`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn


class OnlineStep:
    """Base class of the per-model online steps.

    The constructor keeps the network the step runs as :attr:`net`, once for every step: an eval-mode
    copy without gradients on ``device`` in ``dtype``, or with ``int8`` the copy :attr:`quantize` makes.

    Args:
        net: the trained network (not modified: the step keeps a copy).
        device: where the step runs.
        dtype: the run dtype of the inputs and of the kept weights (float32 or bfloat16; float32 for int8).
        int8: run on int8 weights (:mod:`oad.online.quantized`); the runner has checked that the device is
            the CPU and that :attr:`quantize` is set.

    Class attributes:
        quantize: ``net -> int8 copy`` for CPU inference (e.g. :func:`oad.online.quantized.quantize_linear`;
            the copy carries ``int8_engine``); None: the step has no int8 path and the runner refuses int8.
        copies_net: False for a step that hands ``net`` to the step or engine it runs (which keeps its
            own copy): no :attr:`net` is kept.
        implementation: what the step runs, as the runner reports it (None: the class name).
        int8_label: the int8 implementation's name, reported as ``"<int8_label> int8 dynamic (<engine>)"``
            (None: :attr:`implementation`).

    Subclasses implement :meth:`start` and :meth:`step`; :meth:`prime` defaults to stepping.
    """

    quantize: ClassVar[Callable[[nn.Module], nn.Module] | None] = None
    copies_net: ClassVar[bool] = True
    implementation: str | None = None
    int8_label: ClassVar[str | None] = None

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        self.device, self.dtype, self.int8 = device, dtype, int8
        self.implementation = self.implementation or type(self).__name__
        if not self.copies_net:
            return
        if int8:
            self.net = type(self).quantize(net)
            label = self.int8_label or self.implementation
            self.implementation = f"{label} int8 dynamic ({self.net.int8_engine})"
        else:
            self.net = copy.deepcopy(net).eval().requires_grad_(False).to(device=device, dtype=dtype)

    def start(self, n: int) -> None:
        """Forget every stream and start ``n`` new ones (zero history)."""
        raise NotImplementedError

    def step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (N, in_dim)`` newest chunk of every stream -> ``logits (N, C)``, ``future_logits (N, Q, C)``."""
        raise NotImplementedError

    def prime(self, x: Tensor) -> None:
        """Feed ``x (N, T, in_dim)`` past chunks without scoring them (same state as stepping them)."""
        for t in range(x.shape[1]):
            self.step(x[:, t])


class ExportStep(nn.Module):
    """Base class of the exportable steps: one online step as a pure function of explicit state.

    ``forward(*arrange(state, features)) -> (scores (N, C), future_scores (N, Q, C), *next_state)``;
    feeding ``next_state`` back at the next chunk streams the model. Scores are probabilities: the softmax
    over the classes other than the ignore class (probability 0), as
    ``oad.models.base.class_probabilities`` computes them.

    Args:
        net: the trained network (copied, in eval mode, without gradients).
        ignore_index: class left out of the softmax, or None.

    Class attributes:
        input_names, output_names: the names of ``forward``'s inputs and outputs, in order.
        state_first: whether the state comes before the chunk in ``forward``'s inputs.
    """

    input_names: ClassVar[tuple[str, ...]]
    output_names: ClassVar[tuple[str, ...]]
    state_first: ClassVar[bool]

    def __init__(self, net: nn.Module, ignore_index: int | None = 21):
        super().__init__()
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.in_dim = net.in_dim
        self.register_buffer("class_bias", class_bias(net.num_classes, ignore_index), persistent=False)

    def probabilities(self, logits: Tensor, future: Tensor) -> tuple[Tensor, Tensor]:
        """``logits (N, C)``, ``future (N, Q, C)`` -> float32 ``scores``, ``future_scores`` (softmax)."""
        return (torch.softmax(logits.float() + self.class_bias, dim=-1),
                torch.softmax(future.float() + self.class_bias, dim=-1))

    def arrange(self, state: tuple[Tensor, ...], x: Tensor) -> tuple[Tensor, ...]:
        """The step's inputs in order: the state and the chunk ``x (N, in_dim)``."""
        return (*state, x) if self.state_first else (x, *state)

    def init_state(self, n: int) -> tuple[Tensor, ...]:
        """The state before the first chunk of ``n`` streams."""
        raise NotImplementedError


def class_bias(num_classes: int, ignore_index: int | None) -> Tensor:
    """``(C,)`` additive logit bias: ``-inf`` on the ignore class, so the softmax gives it 0."""
    bias = torch.zeros(num_classes)
    if ignore_index is not None:
        if not 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is not a class of a {num_classes}-class model")
        bias[ignore_index] = float("-inf")
    return bias
