"""int8 weights for CPU streaming: dynamic quantization of a network's linear layers.

A batch-1 online step reads every weight once: where it is bound by memory traffic (the recurrent models,
the few-row decoder products) int8 weights move a quarter of float32's bytes, and where it is
compute-bound (OadTR re-encodes its 65-row window at every chunk; 16 streams) fbgemm's int8 products do
about twice the multiply-adds per cycle of float32 FMA on AVX2 (the int8 steps' speedups at paper size:
``docs/benchmarks.md``, measured by :mod:`oad.bench.int8`).

:func:`quantize_linear` returns a quantized deep copy of a network (the network itself is not touched):

- every ``nn.Linear`` becomes PyTorch's ``DynamicQuantizedLinear`` (``torch.ao.quantization.quantize_dynamic``):
  int8 weights, quantized once, **per output channel** (symmetric), prepacked for the quantized engine;
  activations stay float32 and are quantized on the fly at every product (per tensor, 8-bit affine,
  7-bit range on the x86/fbgemm engines), the int32 accumulators dequantized to float32, bias in float32;
- kernel-1 ``nn.Conv1d`` layers (OadTR's decoder FFN, position-wise linears) are first rewritten as
  :class:`PointwiseConv1d` around an ``nn.Linear`` so they are quantized too;
- ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.LSTM`` / ``nn.GRU`` (TRN, MiniROAD) become their dynamic quantized
  versions (int8 weights per tensor: PyTorch's quantized RNNs take no per-channel weights);
- everything else (layer norms, embeddings, learned tokens, attention products, softmax) stays float32.

The quantized engine is ``x86`` (PyTorch's default on x86; fbgemm kernels on this project's AVX2 CPUs),
else ``fbgemm``, else whatever this build has (``qnnpack`` on ARM). GPUs have no such kernels: int8 is
CPU only.

What follows from dynamic quantization: an activation's scale is that of the whole tensor a product is
called on, so int8 results depend (at the quantization-noise level) on what is batched together -- ``N``
streams stepped at once differ slightly from each stream alone, and the streaming step from the
model's whole-video scoring of the same quantized copy (which batches many windows). Both stay within
the tolerances stated in ``tests/test_int8.py``.

On this project's AVX2 CPUs, int8 dynamic products (x86/fbgemm) were measured faster than float32 ``F.linear``
and oneDNN-prepacked float32 at the OadTR step's shapes, and oneDNN's int8 engine slower;
``torch._int_mm`` and ``torch._weight_int8pack_mm`` have no fast CPU kernel here (many times slower than
fp32): not used. Timings: ``docs/benchmarks.md`` (:mod:`oad.bench.int8`).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["INT8", "PointwiseConv1d", "check_int8_device", "int8_linear", "int8_linear_add", "int8_linear_gelu",
           "is_int8", "is_quantized", "pack_linear", "quantize_linear", "quantized_engine", "quantized_layer"]

INT8 = "int8"
ENGINES = ("x86", "fbgemm", "qnnpack")


def is_int8(dtype: object) -> bool:
    """Whether ``dtype`` asks for int8 weights: ``"int8"`` or ``torch.qint8``."""
    return dtype is torch.qint8 or (isinstance(dtype, str) and dtype.lower() == INT8)


def check_int8_device(device: torch.device | str, what: str = "int8") -> torch.device:
    """The device, if int8 can run there (the CPU); else a ValueError naming the device."""
    device = torch.device(device)
    if device.type != "cpu":
        raise ValueError(f"{what}: int8 (dynamic quantization) runs on the CPU only, with PyTorch's quantized "
                         f"CPU kernels; got device {device}. Use dtype=torch.bfloat16 or float32 there.")
    return device


def quantized_engine() -> str:
    """The quantized engine used for int8: ``x86``, else ``fbgemm``, else any this build supports."""
    supported = torch.backends.quantized.supported_engines
    for e in ENGINES:
        if e in supported:
            return e
    raise RuntimeError(f"this PyTorch build has no quantized CPU engine (supported: {supported})")


@contextlib.contextmanager
def _engine(name: str) -> Iterator[None]:
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torch.ao's deprecation warnings (quantize_dynamic is still PyTorch's own int8 CPU path)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=r".*deprecated.*", module=r"torch\.ao\..*")
        yield


class PointwiseConv1d(nn.Module):
    """A kernel-1 ``nn.Conv1d`` as a position-wise ``nn.Linear``: ``(B, C_in, L) -> (B, C_out, L)``.

    Same function (the conv weight ``(out, in, 1)`` is the linear weight ``(out, in)``), but quantizable
    by ``quantize_dynamic``, which knows no convolutions.
    """

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.linear = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(conv.weight[..., 0])
            if conv.bias is not None:
                self.linear.bias.copy_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.transpose(1, 2)).transpose(1, 2)  # (B, C, L) -> (B, L, C) -> (B, C', L)


def _is_pointwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv1d) and m.kernel_size == (1,) and m.stride == (1,) and m.padding in ((0,), "valid")
            and m.dilation == (1,) and m.groups == 1 and m.padding_mode == "zeros")


def _replace_pointwise_convs(net: nn.Module) -> int:
    count = 0
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if _is_pointwise(child):
                setattr(module, name, PointwiseConv1d(child))
                count += 1
    return count


def is_quantized(net: nn.Module) -> bool:
    """Whether ``net`` holds dynamic quantized modules (a :func:`quantize_linear` copy)."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in net.modules())


def quantize_linear(net: nn.Module, engine: str | None = None, per_channel: bool = True) -> nn.Module:
    """An int8 copy of ``net`` for CPU inference (see the module docstring); ``net`` is left alone.

    Args:
        net: any network (eval mode is set on the copy, which is moved to the CPU in float32).
        engine: quantized engine (default :func:`quantized_engine`); the weights are prepacked for it.
        per_channel: int8 weights with one scale per output channel (else one per tensor).
    Returns:
        The quantized copy, in eval mode, without gradients.
    """
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    engine = engine or quantized_engine()
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized engine {engine!r} is not supported by this build "
                         f"({torch.backends.quantized.supported_engines})")
    q = copy.deepcopy(net).eval().requires_grad_(False).to(device="cpu", dtype=torch.float32)
    _replace_pointwise_convs(q)
    lin_cfg = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    spec = {nn.Linear: lin_cfg, nn.LSTMCell: default_dynamic_qconfig, nn.GRUCell: default_dynamic_qconfig,
            nn.LSTM: default_dynamic_qconfig, nn.GRU: default_dynamic_qconfig}
    with quiet(), _engine(engine):
        q = quantize_dynamic(q, spec, dtype=torch.qint8, inplace=True)
    q.int8_engine = engine  # what the weights were prepacked for (reported by the runner)
    return q.eval()


# -- packed int8 weights for hand-written steps (the fused OadTR engine) ---------------------------------


def quantized_layer(weight: Tensor, bias: Tensor | None = None, per_channel: bool = True,
                    engine: str | None = None) -> nn.Module:
    """``weight (out, in)``, ``bias (out,)`` -> the ``DynamicQuantizedLinear`` :func:`quantize_linear` makes
    of an ``nn.Linear`` holding these tensors (for layers written as raw parameters and ``F.linear``)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
    )

    w = weight.detach().to(device="cpu", dtype=torch.float32)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(bias.detach().float())
    lin.qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with quiet(), _engine(engine or quantized_engine()):
        return DynamicLinear.from_float(lin)


def pack_linear(weight: Tensor, bias: Tensor | None = None, per_channel: bool = True,
                engine: str | None = None) -> torch.ScriptObject:
    """``weight (out, in)``, ``bias (out,)`` -> prepacked int8 parameters for :func:`int8_linear`.

    Quantized exactly as :func:`quantize_linear` quantizes an ``nn.Linear`` with these tensors (the same
    observer and rounding; per output channel, symmetric), so a fused weight made of several layers' rows
    (e.g. keys and values concatenated) gets the very int8 rows and scales each layer gets on its own.
    """
    return quantized_layer(weight, bias, per_channel, engine)._packed_params._packed_params


def int8_linear(x: Tensor, packed: torch.ScriptObject, bias: None = None) -> Tensor:
    """``F.linear`` with :func:`pack_linear` weights (the bias is packed with them): float32 in and out,
    the input quantized per tensor on the fly, as ``DynamicQuantizedLinear`` does."""
    return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=True)


def int8_linear_gelu(x: Tensor, packed: torch.ScriptObject, bias: None = None) -> Tensor:
    """``gelu(int8_linear(x, packed))`` (exact erf GELU)."""
    return F.gelu(torch.ops.quantized.linear_dynamic(x, packed, reduce_range=True))


def int8_linear_add(x: Tensor, packed: torch.ScriptObject, bias: None, other: Tensor) -> Tensor:
    """``other + int8_linear(x, packed)`` (a residual connection); a new tensor."""
    return torch.add(other, torch.ops.quantized.linear_dynamic(x, packed, reduce_range=True))
