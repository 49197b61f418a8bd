"""int8 vs bf16 vs fp32 online steps at paper size, and int8's agreement on a trained model
(``tools/bench.py --int8 [--int8-ckpt <checkpoint>] [--int8-onnx] [--int8-models]``).

1. **Latency**: OadTR at the paper's sizes (in_dim 3072, window 64, d 1024, 3 encoder / 5 decoder layers,
   random weights), :class:`oad.online.OnlineDetector` with a full window (the steady state), batch 1 and
   ``N`` streams: fp32 (the fused oneDNN engine), bf16 (the fused engine in bf16), int8 (the fused engine
   on fbgemm int8 weights, :mod:`oad.online.quantized`) and int8 on the plain window step (``fused=False``),
   all timed round-robin (load changes hit all alike); median and best ms per step, and the int8
   speedups over fp32 and bf16 (ratios of medians). ``--int8-onnx`` also exports the fp32 step to ONNX,
   quantizes it with onnxruntime (``oad.export.quantize_onnx``) and times both ONNX files in the same
   round robin (one onnxruntime thread per torch thread).
2. ``--int8-models``: every model's step at paper size (``oad.bench.models.paper_models``), fp32 vs int8
   at batch 1, round-robin per model.
3. **Agreement** on a trained checkpoint (``--int8-ckpt``, from ``tools/train.py``): every test video of
   the checkpoint's own data config scored chunk by chunk through ``OnlineDetector`` in fp32, bf16, int8
   and int8 plain; the share of chunks whose top class equals fp32's, the largest and mean
   ``|p - p_fp32|``, and the test per-frame mAP (:func:`oad.metrics.perframe_map`, the dataset's ignore
   class, THUMOS' Ambiguous column 21, ignored) of each.

On a CPU without bf16 instructions (no oneDNN bf16: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is
False) bf16 runs but slower than fp32: the fused engine's bf16 products then run without oneDNN's prepacked
weights, on PyTorch's generic bf16 kernels. PyTorch's fused int8 is the runner's int8: it needs no export
(an ONNX export and quantization of the paper-size step takes a while) and keeps up with onnxruntime's int8;
the ONNX int8 file is offered for deployment (``tools/export.py precision=int8``). Measured figures:
docs/benchmarks.md, section 8.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from oad.bench.common import load_line, machine_info
from oad.online import OnlineDetector
from oad.timing import median_ms, round_robin

__all__ = ["CONFIGS", "agreement", "all_models", "format_table", "run"]

# name -> (dtype, step options)
CONFIGS: dict[str, tuple[Any, dict[str, Any]]] = {
    "fp32": (torch.float32, {}),
    "bf16": (torch.bfloat16, {}),
    "int8": ("int8", {}),
    "int8 plain": ("int8", {"fused": False}),
}


def _onnx_sessions(net: torch.nn.Module, workdir: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The fp32 ONNX step of ``net`` and its onnxruntime int8 quantization, as sessions."""
    import onnxruntime as ort

    from oad.export import export_network, quantize_onnx

    t0 = time.perf_counter()
    export_network(net, workdir, check_steps=0)
    quantize_onnx(f"{workdir}/step.onnx", f"{workdir}/step_int8.onnx")
    log(f"  ONNX export + quantization: {time.perf_counter() - t0:.0f} s")
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = max(1, torch.get_num_threads())
    return {name: ort.InferenceSession(f"{workdir}/{f}", so, providers=["CPUExecutionProvider"])
            for name, f in (("onnx fp32", "step.onnx"), ("onnx int8", "step_int8.onnx"))}


def run(streams: tuple[int, ...] = (1, 16), reps: int = 20, reps_streams: int | None = None, in_dim: int = 3072,
        onnx: bool = False, ckpt: str | None = None, configs: dict | None = None, model_kwargs: dict | None = None,
        models: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Latency of every configuration at each stream count (and agreement on ``ckpt``); see the module docstring.

    Args:
        streams: stream counts ``N`` (each configuration's runner is reset to each in turn).
        reps: round-robin steps per configuration at ``N = 1``; ``reps_streams`` at larger ``N``
            (default ``max(3, reps // 4)``).
        in_dim, model_kwargs: the OadTR's sizes (default: the paper's).
        onnx: also time the fp32 and int8 ONNX steps with onnxruntime.
        ckpt: a trained checkpoint for :func:`agreement`.
        models: also :func:`all_models` (every model, fp32 vs int8, batch 1).
    """
    import tempfile

    from oad.models.oadtr import OadTR

    t_start = time.perf_counter()
    configs = configs or CONFIGS
    reps_streams = reps_streams or max(3, reps // 4)
    machine = machine_info()
    torch.manual_seed(0)
    net = OadTR(in_dim=in_dim, **(model_kwargs or {})).eval().requires_grad_(False)
    dets: dict[str, OnlineDetector] = {}
    errors: dict[str, str] = {}
    build_s: dict[str, float] = {}
    for name, (dtype, options) in configs.items():
        t0 = time.perf_counter()
        try:
            dets[name] = OnlineDetector(net, dtype=dtype, **options)
        except Exception as e:  # noqa: BLE001 - a configuration this machine cannot run is a row with its error
            errors[name] = f"{type(e).__name__}: {e}"
            log(f"  {name}: {errors[name]}")
            continue
        build_s[name] = time.perf_counter() - t0
    sessions: dict[str, Any] = {}
    tmp = None
    if onnx:
        tmp = tempfile.TemporaryDirectory(prefix="oad_int8_bench_")
        try:
            sessions = _onnx_sessions(net, tmp.name, log)
        except Exception as e:  # noqa: BLE001
            errors["onnx"] = f"{type(e).__name__}: {e}"
            log(f"  onnx: {errors['onnx']}")

    gen = torch.Generator().manual_seed(0)
    rows: list[dict[str, Any]] = []
    try:
        for n in streams:
            history = torch.randn(n, net.window, in_dim, generator=gen)
            x = torch.randn(n, in_dim, generator=gen)
            fns: dict[str, Callable[[], Any]] = {}
            for name, det in dets.items():
                det.reset()
                det.prime(history)  # window full: the steady state
                fns[name] = lambda det=det, x=x: det.step(x)
            if sessions:
                feed = {"buffer": torch.randn(n, net.window, net.d_model, generator=gen).numpy(),  # window full
                        "count": np.full((n,), net.window, np.int64), "features": x.numpy()}
                for name, sess in sessions.items():
                    fns[name] = lambda sess=sess, feed=feed: sess.run(None, feed)
            k = reps if n == 1 else reps_streams
            with torch.inference_mode():
                times = round_robin(fns, k)
            for name, ts in times.items():
                det = dets.get(name)
                rows.append({"config": name, "streams": n, "reps": k, "median_ms": median_ms(ts),
                             "min_ms": 1e3 * min(ts), "ms_per_chunk": median_ms(ts) / n,
                             "step": det.implementation if det is not None else "onnxruntime CPU"})
                log(f"  {name:<11} N={n:<3} {rows[-1]['median_ms']:9.1f} ms")
    finally:
        if tmp is not None:
            tmp.cleanup()
    speedups: dict[str, dict[str, float]] = {}
    for n in streams:
        med = {r["config"]: r["median_ms"] for r in rows if r["streams"] == n}
        if "int8" in med:
            speedups[str(n)] = {f"int8_vs_{ref}": med[ref] / med["int8"] for ref in med if ref != "int8"}
    result: dict[str, Any] = {
        "machine": machine, "threads": torch.get_num_threads(), "quantized_engine": torch.backends.quantized.engine,
        "model": {"name": "OadTR", "in_dim": in_dim, "window": net.window, "d_model": net.d_model,
                  "parameters": sum(p.numel() for p in net.parameters()), **(model_kwargs or {})},
        "rows": rows, "speedups": speedups, "errors": errors, "build_s": build_s,
    }
    del dets, net
    if models:
        result["models"] = all_models(reps=max(3, reps // 2), log=log)
    if ckpt:
        result["agreement"] = agreement(ckpt, log=log)
    result["machine"]["loadavg_after"] = machine_info()["loadavg"]
    result["total_s"] = time.perf_counter() - t_start
    return result


@torch.inference_mode()
def agreement(ckpt: str, configs: dict | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every test video of a trained checkpoint's data, chunk by chunk through ``OnlineDetector`` in each
    configuration: top-class agreement with fp32, ``|p - p_fp32|`` and the test per-frame mAP."""
    from hydra.utils import instantiate

    from oad.checkpoint import load_network
    from oad.metrics import perframe_map

    configs = configs or CONFIGS
    net, info = load_network(ckpt)
    data_info = info.get("data_info") or {}
    data_cfg = data_info.get("data_config")
    if not data_cfg:
        raise ValueError(f"checkpoint {ckpt} stores no data config: cannot find its test videos")
    dm = instantiate(data_cfg)
    dm.setup("test")
    videos = dm.videos("test")
    ignore_index = data_info.get("ignore_index", dm.ignore_index)
    targets = np.concatenate([v.targets for v in videos])
    scores: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {"ckpt": str(ckpt), "model": type(net).__name__, "epoch": info.get("epoch"),
                           "videos": len(videos), "chunks": int(targets.shape[0]), "ignore_index": ignore_index,
                           "configs": {}}
    for name, (dtype, options) in configs.items():
        t0 = time.perf_counter()
        try:
            det = OnlineDetector(net, dtype=dtype, ignore_index=ignore_index, **options)
        except Exception as e:  # noqa: BLE001 - reported in the table
            out["configs"][name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        rows = []
        for v in videos:
            det.reset()
            feats = torch.from_numpy(v.features())
            rows += [det.step(feats[t]).scores.numpy() for t in range(feats.shape[0])]
        scores[name] = np.stack(rows)
        out["configs"][name] = {"step": det.implementation, "seconds": time.perf_counter() - t0}
        log(f"  agreement: {name} scored in {time.perf_counter() - t0:.0f} s")
    ref = scores.get("fp32")
    for name, s in scores.items():
        c = out["configs"][name]
        c["mAP"] = float(perframe_map(s, targets, ignore_index=ignore_index)["mAP"])
        if ref is not None:
            c["same_top_class_as_fp32"] = float((s.argmax(1) == ref.argmax(1)).mean())
            c["max_abs_prob_diff"] = float(np.abs(s - ref).max())
            c["mean_abs_prob_diff"] = float(np.abs(s - ref).mean())
    return out


def all_models(reps: int = 10, streams: tuple[int, ...] = (1,), history: int = 40,
               log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every model's online step at paper size (``oad.bench.models.paper_models``), fp32 vs int8, timed
    round-robin per model after a ``history``-chunk prime: ``[{model, streams, fp32_ms, int8_ms, speedup,
    fp32_step, int8_step}]`` (medians), or the error of a configuration that does not build."""
    from oad.bench.models import paper_models

    gen = torch.Generator().manual_seed(0)
    out = []
    for name, build in paper_models().items():
        build, options = build if isinstance(build, tuple) else (build, {})  # (builder, step options)
        torch.manual_seed(0)
        net = build().eval().requires_grad_(False)
        for n in streams:
            dets, row = {}, {"model": name, "streams": n}
            hist = torch.randn(n, history, net.in_dim, generator=gen)
            x = torch.randn(n, net.in_dim, generator=gen)
            for p, dtype in (("int8", "int8"), ("fp32", torch.float32)):
                try:
                    dets[p] = OnlineDetector(net, dtype=dtype, **options)
                    dets[p].prime(hist)
                    row[f"{p}_step"] = dets[p].implementation
                except Exception as e:  # noqa: BLE001 - e.g. a model whose step has no int8 path
                    dets.pop(p, None)
                    row[f"{p}_error"] = f"{type(e).__name__}: {e}"
                    break  # not timed: nothing to compare with
            if len(dets) < 2:
                dets.clear()  # a configuration failed: nothing to compare
            with torch.inference_mode():
                times = round_robin({p: (lambda d=d: d.step(x)) for p, d in dets.items()}, reps)
            for p, ts in times.items():
                row[f"{p}_ms"] = median_ms(ts)
            if "fp32_ms" in row and "int8_ms" in row:
                row["speedup"] = row["fp32_ms"] / row["int8_ms"]
            out.append(row)
            log(f"  {name:<20} N={n}: " + (", ".join(f"{p} {row[f'{p}_ms']:.1f} ms" for p in times)
                                           if "speedup" in row else str(row.get("int8_error", row.get("fp32_error")))))
            del dets
        del net
    return out


def format_table(r: dict[str, Any]) -> str:
    """The printed report: machine, latency table, speedups, agreement."""
    m = r["machine"]
    mdl = r["model"]
    lines = [
        f"oad int8 benchmark  {m['date']}",
        (f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch threads {r['threads']}, CPU capability "
         f"{m['cpu_capability']}, oneDNN bf16 {m['mkldnn_bf16']}, quantized engine {r['quantized_engine']}"),
        load_line(m),
        (f"model: OadTR in_dim {mdl['in_dim']}, window {mdl['window']}, d {mdl['d_model']}, "
         f"{mdl['parameters']:,} parameters, random weights; window full (steady state), round robin"),
        "",
        "| config | streams | step | median ms/step | min ms | ms per chunk | reps |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['config']} | {row['streams']} | {row['step']} | {row['median_ms']:.1f} | "
                     f"{row['min_ms']:.1f} | {row['ms_per_chunk']:.1f} | {row['reps']} |")
    for name, err in r["errors"].items():
        lines.append(f"| {name} | - | error: {err} | | | | |")
    lines.append("")
    for n, sp in r["speedups"].items():
        lines.append(f"int8 speedup, N={n} (median): " + ", ".join(f"{v:.2f}x vs {k.removeprefix('int8_vs_')}"
                                                              for k, v in sp.items()))
    if r.get("models"):
        lines += ["", "every model's step at paper size, fp32 vs int8 (round robin, median ms/step):", "",
                  "| model | streams | fp32 step | int8 step | fp32 ms | int8 ms | int8 speedup |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["models"]:
            if "speedup" not in row:
                err = row.get("int8_error") or row.get("fp32_error")
                lines.append(f"| {row['model']} | {row['streams']} | {row.get('fp32_step', '-')} | error: {err} "
                             "| | | |")
                continue
            lines.append(f"| {row['model']} | {row['streams']} | {row['fp32_step']} | {row['int8_step']} | "
                         f"{row['fp32_ms']:.1f} | {row['int8_ms']:.1f} | {row['speedup']:.2f}x |")
    a = r.get("agreement")
    if a:
        head = (f"agreement on {a['ckpt']} ({a['model']}, epoch {a['epoch']}): {a['videos']} test videos, "
                f"{a['chunks']} chunks, chunk by chunk through OnlineDetector; mAP ignores class {a['ignore_index']}")
        lines += ["", head, "",
                  "| config | step | same top class as fp32 | max abs p diff | mean abs p diff | test mAP |",
                  "|---|---|---|---|---|---|"]
        for name, c in a["configs"].items():
            if "error" in c:
                lines.append(f"| {name} | error: {c['error']} | | | | |")
                continue
            nan = float("nan")
            lines.append(f"| {name} | {c['step']} | {100 * c.get('same_top_class_as_fp32', nan):.2f}% | "
                         f"{c.get('max_abs_prob_diff', nan):.4f} | {c.get('mean_abs_prob_diff', nan):.5f} | "
                         f"{100 * c['mAP']:.2f} |")
    lines.append(f"total {r['total_s']:.0f} s")
    return "\n".join(lines)
