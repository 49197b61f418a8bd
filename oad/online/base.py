"""The step interfaces: what every model's streaming step implements, and its exportable form.

An online step (:class:`OnlineStep`) holds the state one model needs between chunks (a ring buffer, a
recurrent state, a key/value cache, running sums) for ``N`` streams stepped together, and turns the
newest chunk of every stream into its logits. :class:`oad.online.OnlineDetector` is the only caller: it
validates inputs, checks the device and dtype (int8 runs on the CPU only), moves the inputs there and
turns logits into probabilities.

Streams that did not start together (a live run: :class:`oad.online.pool.StreamPool`) are batched by
splitting and merging steps (:class:`StreamState`): every step class declares which of its attributes hold
per-stream state (and along which dimension) and which hold counters shared by its streams (the history
length, ring positions); steps whose counters are equal merge into one, exactly.

A model names its step class in ``online_step`` (``"module:Class"``), so the runner never tests which
model it holds. A model that can be exported also names an :class:`ExportStep` in ``export_step``: the
same step as an ``nn.Module`` over explicit state, for TorchScript and ONNX (:mod:`oad.export`). Both
live in the model's module of :mod:`oad.online`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

StateT = TypeVar("StateT", bound="StreamState")


class StreamState:
    """The state of ``n`` streams stepped together, which can be split by stream and merged.

    A class declares its state once:

    - :attr:`stream_state`: ``{attribute: stream dim}``, the attributes holding one slice per stream: a
      tensor, a list/tuple/dict of them (e.g. per-layer caches), None (nothing in this configuration), or
      a nested :class:`StreamState` (a ring buffer, the engine a step delegates to), which declares its own;
    - :attr:`counters`: the attributes shared by all the streams (chunks seen, ring positions: ints or lists
      of ints). They fix where the next chunk goes, so only steps whose counters are equal (the same
      :meth:`history_key`) can be merged; a class without counters (a recurrent state) merges with any.

    Everything else is shared by every split and merge (the weights, constants). :meth:`start` rebuilds
    what depends on the number of streams (scratch buffers, constants expanded to ``n``), so a split or a
    merge is a shallow copy (:meth:`fork`) started for its ``n``, its state then copied in from the sources.
    """

    stream_state: ClassVar[dict[str, int]] = {}
    counters: ClassVar[tuple[str, ...]] = ()

    def start(self, n: int) -> None:
        """Forget every stream and start ``n`` new ones (zero history)."""
        raise NotImplementedError

    def fork(self: StateT) -> StateT:
        """A copy that shares this one's weights and constants but none of its stream state (it holds None
        until :meth:`start`); nested states are forked too, so starting the copy leaves this one alone."""
        new = copy.copy(self)
        for name in self.stream_state:
            value = getattr(self, name, None)
            setattr(new, name, value.fork() if isinstance(value, StreamState) else None)
        return new

    def history_key(self) -> tuple:
        """The counters of this state and of its nested states: steps can merge where these are equal."""
        own = tuple(_frozen(getattr(self, name)) for name in self.counters)
        nested = tuple(v.history_key() for name in self.stream_state
                       if isinstance(v := getattr(self, name, None), StreamState))
        return own + nested

    @property
    def num_streams(self) -> int:
        """``n``, read off the first state tensor (0 before :meth:`start`)."""
        for name, dim in self.stream_state.items():
            value = getattr(self, name, None)
            n = value.num_streams if isinstance(value, StreamState) else _size(value, dim)
            if n is not None:
                return n
        return 0

    def split(self: StateT, index: Sequence[int]) -> StateT:
        """A new step holding streams ``index`` of this one, in that order (this one is unchanged)."""
        return gather([(self, index)])

    @staticmethod
    def merge(steps: Sequence[StateT]) -> StateT:
        """A new step holding the streams of ``steps`` one after the other (they are unchanged).

        Raises:
            ValueError: their counters differ (histories of different lengths cannot share a step).
        """
        return gather([(s, None) for s in steps])

    def adopt(self, sources: Sequence[StreamState]) -> None:
        """Hook after a split or merge has copied the state of ``sources`` in: a class sets here what is
        neither per-stream nor an equal counter (the default: nothing)."""


def gather(sources: Sequence[tuple[StateT, Sequence[int] | None]]) -> StateT:
    """A new step holding, in order, streams ``index`` of each source (None: all of its streams): the
    first source forked, started for their total number, the state of each source copied in.

    Raises:
        ValueError: the sources' counters differ.
    """
    first = sources[0][0]
    key = first.history_key()
    for s, _ in sources[1:]:
        if s.history_key() != key:
            raise ValueError(f"cannot merge steps whose histories differ (counters {key} and {s.history_key()}): "
                             "streams whose histories differ in length cannot share a step")
    if len(sources) == 1 and sources[0][1] is None:
        sources = [(first, range(first.num_streams))]  # a copy of every stream
    index = [None if i is None else torch.as_tensor(list(i), dtype=torch.long) for _, i in sources]
    with torch.inference_mode():  # as the runner steps: the state tensors are inference tensors
        new = first.fork()
        new.start(sum(s.num_streams if i is None else len(i) for (s, _), i in zip(sources, index)))
        _load(new, [s for s, _ in sources], index)
    return new


def _load(dst: StreamState, sources: Sequence[StreamState], index: Sequence[Tensor | None]) -> None:
    """Copy the state of ``sources`` (rows ``index`` of each; None: all) into ``dst``, started for them."""
    for name, dim in dst.stream_state.items():
        values = [getattr(s, name, None) for s in sources]
        mine = getattr(dst, name, None)
        if isinstance(mine, StreamState):
            _load(mine, values, index)
        else:
            setattr(dst, name, _join([_take(v, i, dim) for v, i in zip(values, index)], dim))
    for name in dst.counters:
        setattr(dst, name, copy.deepcopy(getattr(sources[0], name)))
    dst.adopt(sources)


def _frozen(value: Any) -> Any:
    """A hashable copy of a counter (lists become tuples)."""
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _size(value: Any, dim: int) -> int | None:
    """The size along ``dim`` of the first tensor in a state value, None if it holds none."""
    if isinstance(value, Tensor):
        return value.shape[dim]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for v in items:
        if (n := _size(v, dim)) is not None:
            return n
    return None


def _rebuild(like: Any, items: Any) -> Any:
    """A container of the same kind as ``like`` (list, tuple, named tuple) holding ``items``."""
    return type(like)(*items) if hasattr(like, "_fields") else type(like)(items)


def _take(value: Any, index: Tensor | None, dim: int) -> Any:
    """Rows ``index`` along ``dim`` of every tensor in a state value (None: the value itself)."""
    if index is None or value is None:
        return value
    if isinstance(value, Tensor):
        return value.index_select(dim, index.to(value.device))
    if isinstance(value, dict):
        return {k: _take(v, index, dim) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return _rebuild(value, [_take(v, index, dim) for v in value])
    raise TypeError(f"cannot split a stream state of type {type(value).__name__}")


def _join(parts: Sequence[Any], dim: int) -> Any:
    """One state value from the parts of several sources (concatenated along ``dim``); a single part,
    already a copy (:func:`_take`), is used as it is."""
    first = parts[0]
    if len(parts) == 1 or first is None:
        return first
    if isinstance(first, Tensor):
        return torch.cat(parts, dim)
    if isinstance(first, dict):
        return {k: _join([p[k] for p in parts], dim) for k in first}
    if isinstance(first, (list, tuple)):
        return _rebuild(first, [_join(list(ps), dim) for ps in zip(*parts)])
    raise TypeError(f"cannot merge a stream state of type {type(first).__name__}")


class OnlineStep(StreamState):
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

    Subclasses implement :meth:`start` and :meth:`step` and declare their state (:class:`StreamState`);
    :meth:`prime` defaults to stepping.
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
