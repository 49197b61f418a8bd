"""Benchmark of the online runner (``oad.online.OnlineDetector``) at paper size, behind ``tools/bench.py``.

Measured in one run, on one machine state (the figures are compared only within the run):

1. **Matrix-multiply ceiling**: the best GFLOP/s of ``torch.mm`` (and of oneDNN with a prepacked weight,
   the kernel the runner uses on the CPU) on the model's own matrix shapes -- the input projection,
   encoder qkv/proj/FFN on ``N * (L + 1)`` rows, the fused decoder keys/values, the decoder's
   ``N * Q``-row products -- for batch 1 and for ``N`` streams, fp32 and bf16. Hot (the same matrices
   again and again), best of several timings, each timing repeating the product for as many FLOPs as
   one runner step does (so it lasts as long as the step it is compared with: on a shared machine a
   1 ms timing catches quiet moments a 1 s step cannot).
2. **Per-step latency** of the runner (window full, the steady state) with 1 and ``N`` streams, fp32
   and bf16, against the plain full-window forward of the same model (``model(x)``, ``x (N, 64, in_dim)``),
   all timed round-robin so that load changes hit every configuration alike; the runner without
   prepacked weights (plain ``F.linear``) is timed at batch 1 to show what prepacking gives.
   GFLOP per step are counted with :func:`oad.bench.common.count_flops` (``FlopCounterMode``, with
   oneDNN's prepacked products and the CPU flash-attention kernel added).
3. **bf16 vs fp32**: the same random stream through both runners, top class compared on every chunk.
4. **Streams sustained** at 4 chunks per second: the largest batch ``N`` whose step takes at most
   0.25 s, estimated from the 1- and N-stream latencies and then measured at that ``N``.
5. **End to end** from a video file (written here with PyAV): ResNet-50 features (random weights, for
   speed only) and the runner, through :func:`oad.tasks.streaming.stream`, in chunks per second.

Random weights throughout (speed does not depend on them). The model is OadTR at the paper's sizes:
window 64, d 1024, 3 encoder / 5 decoder layers, 8 queries, in_dim 3072 (2048 for the video run,
ResNet-50 RGB only). Measured figures: docs/benchmarks.md, section 3.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oad.bench.common import DTYPES, count_flops, load_line, machine_info
from oad.models.oadtr import OadTR
from oad.online import OnlineDetector, can_prepack
from oad.timing import round_robin

__all__ = ["run_bench", "format_report", "matmul_shapes", "products_only"]

logger = logging.getLogger(__name__)

THUMOS_NAMES = ["Background"] + [f"action_{i}" for i in range(1, 21)] + ["Ambiguous"]


# ---------------------------------------------------------------------------------------------------
# Matrix shapes and the matrix-multiply ceiling
# ---------------------------------------------------------------------------------------------------


def matmul_shapes(model: OadTR, n: int) -> list[tuple[str, int, int, int]]:
    """``(name, M, K, N)`` of the matrix products of one runner step of ``n`` streams."""
    S, Q, d = model.window + 1, model.num_queries, model.d_model
    enc, dec = model.encoder[0], model.decoder[0]
    shapes = [
        ("input projection", n, model.in_dim, d),
        ("enc qkv", n * S, d, 3 * d),
        ("enc proj", n * S, d, d),
        ("enc fc1", n * S, d, enc.fc1.out_features),
        ("enc fc2", n * S, enc.fc2.in_features, d),
        ("dec keys/values (all layers)", n * S, d, 2 * len(model.decoder) * d),
        ("dec self qkv", n * Q, d, 3 * d),
        ("dec q/out", n * Q, d, d),
        ("dec ffn1", n * Q, d, dec.conv1.out_channels),
        ("dec ffn2", n * Q, dec.conv2.in_channels, d),
    ]
    seen, out = set(), []
    for name, m, k, nn_ in shapes:
        if (m, k, nn_) not in seen:
            seen.add((m, k, nn_))
            out.append((name, m, k, nn_))
    return out


def _best_time(fn: Callable[[], Any], flops: float, reps: int, min_flops: float = 3e8) -> float:
    """Best seconds per call over ``reps`` timings, each of enough calls to do ``min_flops``."""
    inner = max(1, int(math.ceil(min_flops / max(flops, 1))))
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t) / inner)
    return best


@torch.inference_mode()
def matmul_rates(shapes: list[tuple[str, int, int, int]], dtype: torch.dtype, reps: int,
                 window_flops: float = 3e8) -> list[dict]:
    """GFLOP/s of ``torch.mm`` and of oneDNN with a prepacked weight on each shape.

    Hot (the same matrices again and again); each timing repeats the product for ``window_flops``
    (so that it lasts about as long as the runner step it is compared with); the best of ``reps``.
    """
    rows = []
    gen = torch.Generator().manual_seed(0)
    for name, m, k, n in shapes:
        a = torch.randn(m, k, generator=gen).to(dtype)
        w = (torch.randn(n, k, generator=gen) * k**-0.5).to(dtype)  # (out, in), as a Linear stores it
        b = w.t().contiguous()  # (K, N)
        flops = 2 * m * k * n
        row = {"name": name, "shape": (m, k, n),
               "mm": flops / _best_time(lambda: torch.mm(a, b), flops, reps, window_flops) / 1e9}
        if can_prepack(torch.device("cpu"), dtype):
            packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
            op = torch.ops.mkldnn._linear_pointwise.default
            row["onednn"] = flops / _best_time(lambda: op(a, packed, None, "none", [], ""), flops, reps, window_flops) / 1e9
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------
# Runner latency
# ---------------------------------------------------------------------------------------------------


def _primed(model: OadTR, dtype: torch.dtype, n: int, gen: torch.Generator,
            prepack: bool | None = None) -> tuple[OnlineDetector, torch.Tensor]:
    """A runner of ``n`` streams with a full window (the steady state) and an input chunk for it."""
    det = OnlineDetector(model, dtype=dtype, prepack=prepack)
    det.prime(torch.randn(n, model.window, model.in_dim, generator=gen))  # window full: the steady state
    return det, torch.randn(n, model.in_dim, generator=gen)


def products_only(det: OnlineDetector, x: torch.Tensor) -> Callable[[], Any]:
    """The matrix products of one OadTR runner step alone: same weights, kernels, shapes and order.

    No attention, norms, softmax or ring buffer (inputs are fixed random tensors of the right shapes).
    Its time is the floor the runner's own work sets: what the step would take if everything else
    were free -- the reference for how far the runner is from its products, and for how much faster
    bf16 can possibly be than fp32 on this machine.
    """
    e = det._engine.impl  # the fused engine (OadTRStep.impl)
    N, S, Q, d = x.shape[0], e.L + 1, e.Q, e.d
    g = torch.Generator().manual_seed(1)
    dt = x.dtype
    a_s = torch.randn(N, S, d, generator=g).to(dt)
    a_q = torch.randn(N, Q, d, generator=g).to(dt)
    pooled = torch.randn(N, 2 * d, generator=g).to(dt)
    lin, lin_gelu, lin_add = e.linear, e.linear_gelu, e.linear_add

    def run() -> None:
        with torch.inference_mode():
            lin(x, *e.emb)
            for p in e.enc:
                lin(a_s, *p["qkv"])
                lin_add(a_s, *p["proj"], a_s)
                lin_add(lin_gelu(a_s, *p["fc1"]), *p["fc2"], a_s)
            lin(a_s, *e.kv)
            for j, p in enumerate(e.dec):
                if j:
                    lin(a_q, *p["sa_qkv"])
                    lin_add(a_q, *p["sa_out"], a_q)
                    lin(a_q, *p["ca_q"])
                lin_add(a_q, *p["ca_out"], a_q)
                lin_add(lin_gelu(a_q, *p["ff1"]), *p["ff2"], a_q)
            lin(a_q, *e.cls)
            lin(pooled, *e.head)

    return run


def _stats(ts: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(ts), "min_s": min(ts), "n": len(ts)}


def _streams_sustained(model: OadTR, dtype: torch.dtype, lat1: float, latn: float, n: int, rate: float,
                       reps: int, gen: torch.Generator) -> dict[str, Any]:
    """Largest batch whose step takes at most one chunk period: estimated from the latencies at 1 and
    ``n`` streams (linear in N), then measured there (and lower, until a measured batch fits)."""
    period = 1.0 / rate
    slope = max((latn - lat1) / max(n - 1, 1), 1e-9)
    est = max(0, min(int(math.floor((period - (lat1 - slope)) / slope)), 512))
    tried: list[dict] = []
    k = est
    while k >= 1 and len(tried) < 4:
        det, x = _primed(model, dtype, k, gen)
        with torch.inference_mode():
            med = statistics.median(round_robin({"s": lambda: det.step(x)}, reps)["s"])
        del det
        tried.append({"streams": k, "median_s": med})
        if med <= period:
            return {"streams": k, "step_s": med, "estimate": est, "tried": tried}
        k = min(k - 1, int(math.floor(k * period / med)))
    return {"streams": 0 if k < 1 else None, "step_s": None, "estimate": est, "tried": tried}


# ---------------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------------


def write_test_video(path: Path, seconds: float, fps: int = 25, size: tuple[int, int] = (320, 240)) -> Path:
    """A short MPEG-4 video with PyAV: a moving bright square over a slowly changing gradient."""
    import av

    w, h = size
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.bit_rate = 2_000_000
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(int(round(seconds * fps))):
            img = np.empty((h, w, 3), np.uint8)
            img[..., 0] = (xx + 3 * i) % 256
            img[..., 1] = (yy + 2 * i) % 256
            img[..., 2] = (xx + yy + i) % 256
            x0 = (4 * i) % (w - 40)
            img[100:140, x0 : x0 + 40] = 255
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def end_to_end(seconds: float, dtypes: list[str], workdir: Path, backbone: str = "resnet50") -> list[dict]:
    """Chunks per second of :func:`oad.tasks.streaming.stream` on a generated video, per dtype."""
    from omegaconf import OmegaConf

    from oad.checkpoint import save_network
    from oad.tasks.streaming import stream
    from oad.video import build_backbone

    video = write_test_video(workdir / "bench.mp4", seconds)
    dim = build_backbone(backbone, "random", True).dim
    torch.manual_seed(0)
    net_config = {"_target_": "oad.models.oadtr.OadTR", "in_dim": dim, "num_classes": 22}
    ckpt = workdir / "oadtr_paper_rgb.ckpt"
    save_network(ckpt, OadTR(in_dim=dim, num_classes=22), net_config,
                 {"class_names": THUMOS_NAMES, "ignore_index": 21, "fps": 4.0, "stream_dims": [dim]})
    rows = []
    for name in dtypes:
        cfg = OmegaConf.create({
            "video": str(video), "features": None, "ckpt_path": str(ckpt), "rate": None,
            "backbone": {"name": backbone, "weights": "random", "allow_random": True},
            "flow": False, "flow_backbone": {"name": backbone, "weights": "random", "pairs": 5},
            "batch_chunks": 1, "resize": 256, "crop": 224, "device": "cpu", "bf16": name == "bf16",
            "ignore_index": "auto", "events": {"on_threshold": 0.5, "off_threshold": 0.3, "min_length": 2,
                                               "background_index": 0},
            "progress": False, "plot": False, "output_dir": str(workdir / f"out_{name}"),
        })
        res = stream(cfg)
        m = res["meta"]
        rows.append({"dtype": name, "backbone": backbone, "in_dim": dim, "chunks": m["num_chunks"],
                     "video_s": m["duration_s"], "wall_s": m["wall_s"],
                     "chunks_per_s": m["num_chunks"] / m["wall_s"], "real_time_factor": m["real_time_factor"],
                     "detector_ms": m["detector_ms_per_chunk"]})
    return rows


# ---------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------


def run_bench(quick: bool = False, streams: int | None = None, threads: int | None = None,
              video_seconds: float | None = None, e2e: bool = True, seed: int = 0, tiny: bool = False,
              log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Run everything; returns the figures (``format_report`` turns them into the printed table).

    Args:
        quick: a smoke run (few repetitions, a 2 s video): the figures are rough.
        streams: ``N`` of the multi-stream configuration (default 16; 4 with ``quick``).
        threads: ``torch.set_num_threads`` (None: leave as is).
        video_seconds: length of the generated video (default 10 s, 2 s with ``quick``).
        e2e: include the end-to-end video run.
        seed: weights and inputs.
        tiny: OadTR's tiny test size (``OadTR.tiny``, in_dim 128) instead of the paper size: a smoke run of
            the code, its figures mean nothing.
        log: progress messages.
    """
    if threads:
        torch.set_num_threads(int(threads))
    t_all = time.perf_counter()
    streams = streams or (4 if quick else 16)
    info = machine_info()
    reps_mm = 2 if quick else 6
    reps_1 = 4 if quick else 25
    reps_n = 2 if quick else 5
    agree_chunks = 16 if quick else 160
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    size = {"in_dim": 128, **OadTR.tiny} if tiny else {"in_dim": 3072}
    model = OadTR(num_classes=22, **size).eval().requires_grad_(False)
    models = {"fp32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16)}
    result: dict[str, Any] = {
        "machine": info, "quick": quick, "tiny": tiny, "streams": streams,
        "model": {"class": "OadTR", "in_dim": model.in_dim, "window": model.window, "d_model": model.d_model,
                  "num_queries": model.num_queries, "parameters": sum(p.numel() for p in model.parameters())},
    }

    # 1. matrix-multiply ceiling on the model's shapes
    log("matrix-multiply rates on the model's shapes ...")
    peaks: dict[str, dict] = {}
    step_flops = dict.fromkeys((1, streams), 3e6 if tiny else 3e8)  # quick: short timings
    if not quick:
        for k in (1, streams):
            det, x = _primed(model, torch.float32, k, gen)
            step_flops[k] = count_flops(lambda det=det, x=x: det.step(x))
            del det
    for dname, dtype in DTYPES.items():
        for n in (1, streams):
            rows = matmul_rates(matmul_shapes(model, n), dtype, reps_mm if n == 1 else max(2, reps_mm // 2),
                                window_flops=step_flops[n])
            mm = max(r["mm"] for r in rows)
            anyk = max(max(r["mm"], r.get("onednn", 0.0)) for r in rows)
            peaks[f"{dname}/{n}"] = {"rows": rows, "mm": mm, "best": anyk}
    result["matmul"] = peaks

    # 2. per-step latency, round robin
    log("per-step latency ...")
    latency: dict[str, dict] = {}
    flops: dict[str, int] = {}
    for n, reps in ((1, reps_1), (streams, reps_n)):
        fns = {}
        for dname, dtype in DTYPES.items():
            det, x = _primed(model, dtype, n, gen)
            flops[f"runner/{dname}/{n}"] = count_flops(lambda det=det, x=x: det.step(x))
            fns[f"runner/{dname}/{n}"] = lambda det=det, x=x: det.step(x)
            if n == 1:
                prod = products_only(det, x.to(dtype))
                flops[f"products only/{dname}/{n}"] = count_flops(prod)
                fns[f"products only/{dname}/{n}"] = prod
            if n == 1 and can_prepack(torch.device("cpu"), dtype):
                det_p, x_p = _primed(model, dtype, n, gen, prepack=False)
                flops[f"runner F.linear/{dname}/{n}"] = count_flops(lambda det=det_p, x=x_p: det.step(x))
                fns[f"runner F.linear/{dname}/{n}"] = lambda det=det_p, x=x_p: det.step(x)
            xw = torch.randn(n, model.window, model.in_dim, generator=gen).to(dtype)
            m = models[dname]
            with torch.no_grad():
                flops[f"full forward/{dname}/{n}"] = count_flops(lambda m=m, xw=xw: m(xw))

            def full(m=m, xw=xw):
                with torch.inference_mode():
                    return m(xw)

            fns[f"full forward/{dname}/{n}"] = full
        for k, ts in round_robin(fns, reps).items():
            latency[k] = {**_stats(ts), "gflop": flops[k] / 1e9}
        del fns
    result["latency"] = latency

    # 3. bf16 vs fp32 on one stream
    log("bf16 vs fp32 top class ...")
    dets = {d: OnlineDetector(model, dtype=t) for d, t in DTYPES.items()}
    feats = torch.randn(agree_chunks, model.in_dim, generator=gen)
    same, maxdiff = 0, 0.0
    for t in range(agree_chunks):
        a, b = dets["fp32"].step(feats[t]).scores, dets["bf16"].step(feats[t]).scores
        same += int(a.argmax() == b.argmax())
        maxdiff = max(maxdiff, float((a - b).abs().max()))
    del dets
    result["agreement"] = {"chunks": agree_chunks, "same_top_class": same / agree_chunks, "max_abs_prob_diff": maxdiff}

    # 4. streams sustained at 4 chunks/s
    log("streams sustained at 4 chunks/s ...")
    result["sustained"] = {
        d: _streams_sustained(model, t, latency[f"runner/{d}/1"]["median_s"],
                              latency[f"runner/{d}/{streams}"]["median_s"], streams, 4.0, 2 if quick else 4, gen)
        for d, t in DTYPES.items()
    }
    del models

    # 5. end to end
    if e2e:
        log("end to end from a video file ...")
        with tempfile.TemporaryDirectory(prefix="oad_bench_") as tmp:
            result["end_to_end"] = end_to_end(video_seconds or (2.0 if quick else 10.0), list(DTYPES), Path(tmp))
    try:
        result["machine"]["loadavg_after"] = os.getloadavg()
    except OSError:
        pass
    result["total_s"] = time.perf_counter() - t_all
    result["acceptance"] = acceptance(result)
    return result


def acceptance(r: dict[str, Any]) -> dict[str, Any]:
    """The targets: fp32 batch 1 >= 75% and N streams >= 80% of the matmul ceiling; bf16 >= 2x, >= 99% same top class."""
    lat, mm, n = r["latency"], r["matmul"], r["streams"]

    def frac(dname: str, k: int, stat: str, ceiling: str) -> float:
        row = lat[f"runner/{dname}/{k}"]
        return row["gflop"] / row[stat] / mm[f"{dname}/{k}"][ceiling]

    speed_med = lat["runner/fp32/1"]["median_s"] / lat["runner/bf16/1"]["median_s"]
    speed_min = lat["runner/fp32/1"]["min_s"] / lat["runner/bf16/1"]["min_s"]
    out = {
        "fp32_batch1_of_ceiling": {"median": frac("fp32", 1, "median_s", "best"), "best": frac("fp32", 1, "min_s", "best"),
                                   "median_vs_mm_only": frac("fp32", 1, "median_s", "mm"), "target": 0.75},
        "bf16_speedup": {"median": speed_med, "best": speed_min, "target": 2.0},
        "bf16_same_top_class": {"value": r["agreement"]["same_top_class"], "target": 0.99},
    }
    for d in DTYPES:
        out[f"{d}_{n}streams_of_ceiling"] = {"median": frac(d, n, "median_s", "best"), "best": frac(d, n, "min_s", "best"),
                                             "median_vs_mm_only": frac(d, n, "median_s", "mm"), "target": 0.80}
    for v in out.values():
        key = "median" if "median" in v else "value"
        v["met"] = bool(v[key] >= v["target"])
    return out


def format_report(r: dict[str, Any]) -> str:
    """The printed report: machine, ceiling, latency table, agreement, streams, end to end, acceptance."""
    m, n = r["machine"], r["streams"]
    kind = (" (--tiny: a smoke run, the figures mean nothing)" if r["tiny"]
            else " (--quick: rough figures)" if r["quick"] else "")
    lines = [
        f"oad streaming benchmark{kind}  {m['date']}",
        f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch threads {m['torch_threads']}, "
        f"{m['platform']}",
        f"versions: python {m['python']}, torch {m['torch']}, numpy {m['numpy']}, oneDNN {m['mkldnn']} "
        f"(bf16 {m['mkldnn_bf16']}), CPU capability {m['cpu_capability']}",
        load_line(m),
        f"model: OadTR window {r['model']['window']}, d {r['model']['d_model']}, in_dim {r['model']['in_dim']}, "
        f"{r['model']['parameters']:,} parameters, random weights",
        "",
        "matrix-multiply ceiling on the model's own shapes (GFLOP/s, hot, best of several):",
    ]
    for key, p in r["matmul"].items():
        best_row = max(p["rows"], key=lambda x: max(x["mm"], x.get("onednn", 0.0)))
        lines.append(f"  {key:<8} torch.mm best {p['mm']:7.1f}   any kernel best {p['best']:7.1f}   "
                     f"(at {best_row['name']} {best_row['shape'][0]}x{best_row['shape'][1]}x{best_row['shape'][2]})")
        for row in p["rows"]:
            m_, k_, n_ = row["shape"]
            extra = f"  oneDNN prepacked {row['onednn']:7.1f}" if "onednn" in row else ""
            lines.append(f"      {row['name']:<28} {m_:>5}x{k_}x{n_:<6} mm {row['mm']:7.1f}{extra}")
    lines += ["", "per-step latency (ms; round robin; window full):",
              f"  {'configuration':<30} {'GFLOP':>7} {'median':>9} {'min':>9} {'GFLOP/s':>8} {'% ceiling':>10}"]
    for key, row in r["latency"].items():
        kind, dname, k = key.rsplit("/", 2)
        ceil = r["matmul"][f"{dname}/{k}"]["best"]
        rate = row["gflop"] / row["median_s"]
        lines.append(f"  {kind + ' ' + dname + ' N=' + k:<30} {row['gflop']:7.2f} {1e3 * row['median_s']:9.1f} "
                     f"{1e3 * row['min_s']:9.1f} {rate:8.1f} {100 * rate / ceil:9.0f}%")
    for dname in DTYPES:
        for k in ("1", str(n)):
            runner, full = r["latency"][f"runner/{dname}/{k}"], r["latency"][f"full forward/{dname}/{k}"]
            lines.append(f"  runner vs full forward, {dname} N={k}: {full['median_s'] / runner['median_s']:.2f}x faster")
    a = r["agreement"]
    lines += ["", f"bf16 vs fp32, one stream of {a['chunks']} random chunks: same top class on "
                  f"{100 * a['same_top_class']:.1f}% of chunks, max |p_fp32 - p_bf16| {a['max_abs_prob_diff']:.4f}"]
    for d, s in r["sustained"].items():
        tried = ", ".join(f"N={t['streams']}: {1e3 * t['median_s']:.0f} ms" for t in s["tried"])
        got = "?" if s["streams"] is None else s["streams"]
        lines.append(f"streams sustained at 4 chunks/s ({d}): {got} (estimate {s['estimate']}; measured {tried or '-'})")
    if "end_to_end" in r:
        lines.append("")
        for e in r["end_to_end"]:
            lines.append(f"end to end ({e['dtype']}, {e['backbone']} random weights + OadTR in_dim {e['in_dim']}, "
                         f"{e['video_s']:.1f} s video, {e['chunks']} chunks): {e['chunks_per_s']:.2f} chunks/s, "
                         f"real-time factor {e['real_time_factor']:.2f}, detector {e['detector_ms']:.1f} ms/chunk")
    lines += ["", "acceptance (median-based; best-of in brackets):"]
    for k, v in r["acceptance"].items():
        if "median" in v:
            extra = f" (vs torch.mm-only ceiling {100 * v['median_vs_mm_only']:.0f}%)" if "median_vs_mm_only" in v else ""
            fmt = (lambda x: f"{x:.2f}x") if k == "bf16_speedup" else (lambda x: f"{100 * x:.0f}%")
            lines.append(f"  {k:<28} {fmt(v['median'])} [{fmt(v['best'])}] target {fmt(v['target'])}: "
                         f"{'met' if v['met'] else 'NOT met'}{extra}")
        else:
            lines.append(f"  {k:<28} {100 * v['value']:.1f}% target {100 * v['target']:.0f}%: {'met' if v['met'] else 'NOT met'}")
    lat = r["latency"]
    if "products only/fp32/1" in lat and "products only/bf16/1" in lat:
        p32, p16 = lat["products only/fp32/1"], lat["products only/bf16/1"]
        ceil = r["matmul"]["fp32/1"]["best"]
        lines += ["context: the runner's matrix products alone (no attention, norms, softmax), batch 1:",
                  f"  fp32 {p32['gflop'] / p32['median_s']:.1f} GFLOP/s = "
                  f"{100 * p32['gflop'] / p32['median_s'] / ceil:.0f}% of the ceiling; "
                  f"bf16 {p32['median_s'] / p16['median_s']:.2f}x faster than fp32 "
                  f"(the most the whole step could gain from bf16 here)"]
    lines.append(f"total {r['total_s']:.0f} s")
    return "\n".join(lines)
