"""Export the online step of a trained network as TorchScript and ONNX, for deployment without ``oad``.

The streaming runner (``oad.online.OnlineDetector``) keeps its state inside a Python object; an
exported model cannot, so the exported step is a pure function of explicit state: the
:class:`oad.online.base.ExportStep` its model names in ``export_step``, kept next to the model's online
step (window models such as OadTR and the linear floor: :class:`oad.online.window.WindowExportStep`, an
explicit buffer of projected inputs; TRN: :class:`oad.online.recurrent.TRNExportStep`, the recurrent state;
OadTR-SW: :class:`oad.online.oadtr_sw.OadTRSWExportStep`, its key/value caches and long memory).

Scores are probabilities: the softmax over the classes other than the ignore class (probability 0), as
``oad.models.base.class_probabilities`` computes them. The batch dimension ``N`` (streams stepped together)
is dynamic in both formats. ``export_network`` writes ``step.pt`` (TorchScript, ``torch.jit.load``),
``step.onnx`` and ``export.json`` (input/output names and shapes, sizes, class names), and checks that
both files reproduce the PyTorch step over a sequence of steps longer than the window.

int8 (``precision="int8"``, ``tools/export.py precision=int8``): also ``step_int8.onnx``, the fp32 ONNX step
quantized by ``onnxruntime.quantization.quantize_dynamic`` (int8 weights per output channel, symmetric,
7-bit range, :func:`quantize_onnx`; activations quantized on the fly per tensor to uint8:
``DynamicQuantizeLinear`` + ``MatMulInteger`` / ``ConvInteger``; the attention products between activations
stay float32). The same inputs, outputs and state as ``step.onnx``. It is checked with onnxruntime (each
runtime feeding its own state back) against the PyTorch int8 step -- the export module over
:func:`oad.online.quantized.quantize_linear`'s copy, the weights ``OnlineDetector(dtype="int8")`` runs --
and against the fp32 PyTorch step, on the probabilities
(``scores`` and ``future_scores``); ``export.json`` records the largest differences, the share of
``(stream, step)`` pairs whose top class agrees, and the tolerances :data:`INT8_TOLERANCE` (a warning is
logged above them). The two int8 runtimes do not compute the same function bit for bit: onnxruntime
quantizes activations to 8 bits and weights to 7 (``max|w| / 63``), PyTorch's x86/fbgemm engine
activations to 7 bits and weights to 8 (``max|w| / 127.5``); both are quantization noise of the size of
int8's own difference from fp32, and so are the tolerances (measured differences: ``docs/benchmarks.md``).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from oad.io import atomic_path, write_json
from oad.models.base import resolve
from oad.online.base import ExportStep

log = logging.getLogger(__name__)

__all__ = ["step_module", "export_network", "export_checkpoint", "check_exported",
           "check_int8_exported", "quantize_onnx", "INT8_TOLERANCE", "PRECISIONS"]

PRECISIONS = ("fp32", "int8")
# Largest |p_a - p_b| over all probabilities of a parity check (random inputs, 3 streams, window + 3 steps),
# for int8: the ONNX int8 step against the PyTorch int8 step, and against fp32 (see the module docstring).
INT8_TOLERANCE = {"onnx_int8_vs_pytorch_int8": 0.05, "onnx_int8_vs_fp32": 0.08}


def step_module(net: nn.Module, ignore_index: int | None = 21) -> ExportStep:
    """The exportable step of ``net``: the :class:`~oad.online.base.ExportStep` its model names in
    ``export_step``."""
    path = getattr(net, "export_step", None)
    if not path:
        raise TypeError(f"no exportable step for {type(net).__name__} (its class names no 'export_step')")
    return resolve(path)(net, ignore_index)


def _first_inputs(step: ExportStep, x: Tensor) -> tuple[Tensor, ...]:
    """Inputs of the first step of ``len(x)`` streams: the zero state and the first chunk ``x``."""
    return step.arrange(step.init_state(x.shape[0]), x)


def _feed_back(step: ExportStep, outputs: tuple[Tensor, ...], x: Tensor) -> tuple[Tensor, ...]:
    """Inputs of the next step: the state returned by this one and the next chunk ``x``."""
    return step.arrange(tuple(outputs[2:]), x)


def export_network(net: nn.Module, output_dir: str | os.PathLike, ignore_index: int | None = 21,
                   meta: dict[str, Any] | None = None, opset_version: int = 18, check_steps: int | None = None,
                   precision: str = "fp32") -> dict[str, Any]:
    """Write ``step.pt`` (TorchScript), ``step.onnx`` and ``export.json`` for ``net`` into ``output_dir``
    (and ``step_int8.onnx`` for ``precision="int8"``).

    Args:
        net: a trained model whose class names an ``export_step``.
        output_dir: created if missing.
        ignore_index: class left out of the softmax, or None.
        meta: extra facts for ``export.json`` (class names, fps, the checkpoint, ...).
        opset_version: ONNX opset.
        check_steps: steps of the parity check after writing (default: ``window + 3``, the step's longest
            buffer, so the partial windows of the first ``L - 1`` chunks and some full ones are compared);
            0 skips it.
        precision: ``"fp32"`` or ``"int8"`` (also the int8 ONNX step, checked: see the module docstring).
    Returns:
        The manifest written to ``export.json`` (with the parity check's largest differences).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    step = step_module(net.cpu(), ignore_index).eval()
    example = _first_inputs(step, torch.randn(2, step.in_dim, generator=torch.Generator().manual_seed(0)))

    with torch.no_grad(), warnings.catch_warnings():
        # the window-length check in OadTR.forward_embedded is constant for the exported window
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(step, example, check_trace=False)
    ts_path = output_dir / "step.pt"
    with atomic_path(ts_path) as p:
        torch.jit.save(traced, str(p))

    onnx_path = output_dir / "step.onnx"
    batch = torch.export.Dim("N")
    with atomic_path(onnx_path) as p:
        torch.onnx.export(
            step, example, str(p), input_names=list(step.input_names), output_names=list(step.output_names),
            dynamic_shapes=tuple({0: batch} for _ in example), opset_version=opset_version, dynamo=True,
            external_data=False, verbose=False)

    with torch.no_grad():
        example_out = step(*example)
    # the longest buffer the step holds (OadTR-SW: its long memory), else the model's window
    window = getattr(step, "window", None) or getattr(net, "window", None)
    manifest: dict[str, Any] = {
        "model": type(net).__name__,
        "torchscript": ts_path.name,
        "onnx": onnx_path.name,
        "opset_version": opset_version,
        # N (dynamic): streams stepped together
        "inputs": {n: _describe(t) for n, t in zip(step.input_names, example)},
        "outputs": {n: _describe(t) for n, t in zip(step.output_names, example_out)},
        "state": "feed each next_<x> output back as input <x> at the next step; start from zeros",
        "in_dim": int(net.in_dim),
        "num_classes": int(net.num_classes),
        "num_queries": int(net.num_queries),
        "window": getattr(step, "window", None),  # the exported buffer's length (None: a recurrent state)
        "future_offset": int(getattr(net, "future_offset", 1)),
        "ignore_index": ignore_index,
        "precision": precision,
        **(meta or {}),
    }
    steps = (window or 8) + 3 if check_steps is None else check_steps
    if steps:
        manifest["max_abs_diff"] = check_exported(step, ts_path, onnx_path, steps=steps)
        log.info("export parity over %d steps: %s", steps, manifest["max_abs_diff"])
    if precision == "int8":
        int8_path = output_dir / "step_int8.onnx"
        quantize_onnx(onnx_path, int8_path)
        manifest["int8"] = {
            "onnx": int8_path.name,
            "quantization": "onnxruntime.quantization.quantize_dynamic: int8 weights per output channel, 7-bit "
                            "(reduce_range, symmetric), activations uint8 per tensor on the fly; float32 in and out",
            "tolerance": dict(INT8_TOLERANCE),
        }
        if steps:
            from oad.online.quantized import quantize_linear

            int8_step = step_module(quantize_linear(net), ignore_index).eval()
            check = check_int8_exported(step, int8_step, int8_path, steps=steps)
            manifest["int8"]["check"] = check
            log.info("int8 export parity over %d steps: %s", steps, check)
            over = {k: check[k] for k, tol in INT8_TOLERANCE.items() if check[k] > tol}
            if over:
                log.warning("int8 export: %s above the tolerances %s", over, INT8_TOLERANCE)
    write_json(output_dir / "export.json", manifest)
    return manifest


def quantize_onnx(fp32_path: str | os.PathLike, int8_path: str | os.PathLike) -> Path:
    """``onnxruntime.quantization.quantize_dynamic`` of an fp32 step model: int8 weights per output channel,
    7-bit (``reduce_range``).

    On x86 CPUs without VNNI (this project's AVX2 machines) onnxruntime's u8 x s8 products accumulate pairs
    in int16 and saturate with full-range int8 weights: on the test models that made the int8 ONNX step
    2-3x further from fp32 than PyTorch's int8 (which keeps 7-bit activations for the same reason);
    with ``reduce_range`` both are about equally close (``tests/test_int8.py``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_path = Path(int8_path)
    with atomic_path(int8_path) as p:  # (it logs a root warning suggesting shape pre-processing: not needed)
        quantize_dynamic(str(fp32_path), str(p), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    return int8_path


def _describe(t: Tensor) -> dict[str, Any]:
    return {"shape": ["N", *t.shape[1:]], "dtype": str(t.dtype).removeprefix("torch.")}


@torch.no_grad()
def check_exported(step: ExportStep, torchscript_path: str | os.PathLike | None = None,
                   onnx_path: str | os.PathLike | None = None, steps: int = 8, num_streams: int = 3,
                   seed: int = 0) -> dict[str, float]:
    """Run the PyTorch step and the exported files side by side for ``steps`` consecutive chunks.

    Each runtime carries its own state (its outputs are fed back to itself). Returns the largest absolute
    difference to PyTorch over all steps and outputs, per format.
    """
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(num_streams, step.in_dim, generator=g) for _ in range(steps)]
    init = _first_inputs(step, xs[0])

    runners: dict[str, Any] = {}
    if torchscript_path is not None:
        ts = torch.jit.load(str(torchscript_path))
        runners["torchscript"] = lambda inp: tuple(ts(*inp))
    if onnx_path is not None:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]

        def run_onnx(inp):
            out = sess.run(None, {n: t.numpy() for n, t in zip(names, inp)})
            return tuple(torch.from_numpy(np.asarray(o)) for o in out)

        runners["onnx"] = run_onnx

    worst = {name: 0.0 for name in runners}
    ref_in = init
    their_in = dict.fromkeys(runners, init)
    for t in range(steps):
        ref_out = tuple(step(*ref_in))
        for name, run in runners.items():
            out = run(their_in[name])
            for a, b in zip(ref_out, out):
                if a.dtype.is_floating_point:
                    worst[name] = max(worst[name], float((a - b.to(a.dtype)).abs().max()))
                elif not torch.equal(a, b.to(a.dtype)):
                    worst[name] = float("inf")
            if t + 1 < steps:
                their_in[name] = _feed_back(step, out, xs[t + 1])
        if t + 1 < steps:
            ref_in = _feed_back(step, ref_out, xs[t + 1])
    return worst


def _onnx_runner(onnx_path: str | os.PathLike):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(inp):
        out = sess.run(None, {n: t.numpy() for n, t in zip(names, inp)})
        return tuple(torch.from_numpy(np.asarray(o)) for o in out)

    return run


@torch.no_grad()
def check_int8_exported(step: ExportStep, int8_step: ExportStep, onnx_int8_path: str | os.PathLike,
                        steps: int = 8, num_streams: int = 3, seed: int = 0) -> dict[str, float]:
    """The int8 ONNX step against the PyTorch int8 step and the fp32 step, ``steps`` consecutive chunks.

    Each of the three carries its own state. Returns the largest ``|p_a - p_b|`` over the probabilities
    (``scores`` and ``future_scores``) and the share of ``(stream, step)`` pairs with the same top class
    (``scores``), for ``onnx_int8_vs_pytorch_int8``, ``onnx_int8_vs_fp32`` and ``pytorch_int8_vs_fp32``.
    """
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(num_streams, step.in_dim, generator=g) for _ in range(steps)]
    onnx_run = _onnx_runner(onnx_int8_path)
    runs = {"fp32": lambda inp: tuple(step(*inp)), "pytorch_int8": lambda inp: tuple(int8_step(*inp)),
            "onnx_int8": onnx_run}
    inputs = dict.fromkeys(runs, _first_inputs(step, xs[0]))
    pairs = [("onnx_int8", "pytorch_int8"), ("onnx_int8", "fp32"), ("pytorch_int8", "fp32")]
    worst = {f"{a}_vs_{b}": 0.0 for a, b in pairs}
    same = {f"{a}_vs_{b}": 0 for a, b in pairs}
    for t in range(steps):
        outs = {k: run(inputs[k]) for k, run in runs.items()}
        for a, b in pairs:
            key = f"{a}_vs_{b}"
            for i in (0, 1):  # scores, future_scores
                worst[key] = max(worst[key], float((outs[a][i].float() - outs[b][i].float()).abs().max()))
            same[key] += int((outs[a][0].argmax(-1) == outs[b][0].argmax(-1)).sum())
        if t + 1 < steps:
            inputs = {k: _feed_back(step, outs[k], xs[t + 1]) for k in runs}
    total = steps * num_streams
    return {**worst, **{f"same_top_class_{k}": v / total for k, v in same.items()}}


def export_checkpoint(ckpt_path: str | os.PathLike, output_dir: str | os.PathLike,
                      ignore_index: int | str | None = "auto", opset_version: int = 18,
                      precision: str = "fp32") -> dict[str, Any]:
    """Export the network of an ``oad`` checkpoint (see :func:`export_network`).

    ``ignore_index='auto'`` takes the checkpoint's dataset ignore class (THUMOS: Ambiguous).
    """
    from oad.checkpoint import load_network

    net, info = load_network(ckpt_path)
    data = info.get("data_info") or {}
    if ignore_index == "auto":
        ignore_index = data.get("ignore_index")
    meta = {
        "ckpt_path": str(ckpt_path),
        "epoch": info.get("epoch"),
        "class_names": data.get("class_names"),
        "fps": data.get("fps"),
        "net_config": info.get("net_config"),
    }
    return export_network(net, output_dir, ignore_index=None if ignore_index is None else int(ignore_index),
                          meta=meta, opset_version=opset_version, precision=precision)
