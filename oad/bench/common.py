"""What the benchmarks share: the machine they ran on, FLOP counting and the dtypes they compare.

Steps are timed with :func:`oad.timing.round_robin` (the library's leaderboard uses the same timer).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["DTYPES", "count_flops", "cpu_name", "load_line", "machine_info"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # name -> dtype of the float configurations


# -- the machine -------------------------------------------------------------------------------------------
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    """Date, host, CPU, threads, versions, oneDNN support and load average, recorded with every run."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mkldnn_bf16": bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg": load,
    }


def load_line(machine: dict[str, Any]) -> str:
    """The reports' line of the load average (1/5/15 min) before the run (``machine_info``'s ``loadavg``)
    and after it (``loadavg_after``, set by the benchmark at its end); ``n/a`` where unknown."""

    def fmt(load: Sequence[float] | None) -> str:
        return "n/a" if not load else " ".join(f"{x:.2f}" for x in load)

    return f"load average (1/5/15 min): before {fmt(machine.get('loadavg'))}, after {fmt(machine.get('loadavg_after'))}"


# -- FLOPs -------------------------------------------------------------------------------------------------
def _linear_flops(x_shape, second, third=None, *args, out_shape=None, **kwargs) -> int:
    """oneDNN ``_linear_pointwise``: ``x (..., K)`` times a ``(N, K)`` weight, counted like ``mm``.

    Two overloads share the op: ``(x, weight, bias, ...)`` and ``.binary`` ``(x, other, weight, bias, attr)``
    (a fused residual add, not counted); the weight is the first two-dimensional shape after ``other``.
    """
    binary = isinstance(third, (tuple, list)) and len(third) == 2  # the default's third is the 1-d bias
    w_shape = third if binary else second
    return 2 * math.prod(x_shape) * w_shape[0]


def _cpu_attention_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU flash-attention kernel (not in the counter's registry): ``QK^T`` and ``PV``, like ``bmm``."""
    *batch, lq, dk = q_shape
    s, dv = k_shape[-2], v_shape[-1]
    return 2 * math.prod(batch) * lq * s * (dk + dv)


def _flop_mapping() -> dict:
    mapping = {}  # keyed by op packets, as the counter looks them up
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        mapping[torch.ops.mkldnn._linear_pointwise] = _linear_flops
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_attention_flops
    return mapping


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matrix products and attention), prepacked oneDNN products included.

    ``torch.utils.flop_counter.FlopCounterMode`` knows neither oneDNN's prepacked linear products
    (counted here as ``2 * M * K * N``, like ``mm``) nor the CPU flash-attention kernel (counted like its
    two ``bmm``).
    """
    with FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        fn()
    return counter.get_total_flops()
