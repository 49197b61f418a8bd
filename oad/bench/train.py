"""Training throughput of OadTR and TRN: windows per second and peak memory, demo and paper sizes.

A training step is what ``OadLitModule`` does per batch, without Lightning's bookkeeping: forward on a
batch of windows (``forward`` for OadTR, ``forward_dense`` for TRN), the recipe's loss, backward, gradient
clipping where the recipe clips, and the recipe's optimizer step (Adam). Models, losses, optimizers and
batch sizes come from the real configs (``configs/recipe/<model>_<size>.yaml``); inputs are random
windows of the right shape (demo: the built-in data's 96-d features; paper: THUMOS' 3072-d two-stream
TSN features), 22 classes. Every configuration runs in a fresh process, so its peak memory is its own:
CPU peak RSS (``resource.getrusage``, including what the interpreter and torch hold) and, on a GPU,
``torch.cuda.max_memory_allocated``.

On the CPU, paper sizes run a few steps at a small batch (the ``batch`` column; the recipes use 128 for
OadTR and 32 for TRN). With CUDA the same table is printed for the GPU at the recipe batch sizes.

Run: ``python tools/bench_train.py``. Measured figures: docs/benchmarks.md, section 4.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 22
IGNORE_INDEX = 21
PAPER_IN_DIM = 3072  # TSN RGB 2048 + flow 1024 (THUMOS'14 features of the paper)

# (model, size, batch or None for the recipe's, window or None for the model's, warm-up steps, timed steps)
CPU_RUNS = [
    ("oadtr", "demo", None, None, 2, 10),
    ("trn", "demo", None, None, 1, 4),
    ("oadtr", "paper", 8, None, 1, 5),
    # TRN at paper width is memory-bound on a CPU: several seconds per chunk (encoder step + 8 decoder
    # steps, forward and backward) at batch 2 on 2 cores, so a 64-chunk window takes minutes per step.
    # Timed on 4-chunk windows; its cost is linear in the window (chunks/s is the figure that carries over).
    ("trn", "paper", 2, 4, 1, 1),
]
GPU_RUNS = [
    ("oadtr", "demo", None, None, 3, 20),
    ("trn", "demo", None, None, 3, 20),
    ("oadtr", "paper", None, None, 3, 20),
    ("trn", "paper", None, None, 2, 10),
]


def recipe(model: str, size: str):
    """The composed training config of ``model=<model> size=<size>``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=[f"model={model}", f"size={size}"])


def synthetic_batch(net_cfg: dict, batch: int, in_dim: int, device):
    """One training batch of the model's own samples (its ``samples`` function, :mod:`oad.data.samples`)
    drawn from random videos long enough for its windows and memories, with one-hot targets that are
    never the ignore class."""
    import functools

    import numpy as np
    from hydra.utils import get_class
    from torch.utils.data import default_collate

    from oad.data.base import Video
    from oad.models.base import resolve

    cls = get_class(net_cfg["_target_"])
    span = int(net_cfg.get("window") or 0) + int(net_cfg.get("long_memory") or 0) + int(net_cfg.get("work_memory") or 0)
    T = max(2 * span, 64)
    rng = np.random.default_rng(0)
    videos = [Video(f"v{i}", (rng.standard_normal((T, in_dim), dtype=np.float32),),
                    np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES - 1, T)]) for i in range(2)]
    make = functools.partial(resolve(cls.samples), config={**net_cfg, "future_offset": cls.future_offset})
    ds = make(videos, ignore_index=IGNORE_INDEX, seed=0)
    items = [ds[int(k)] for k in rng.choice(len(ds), batch, replace=len(ds) < batch)]
    return {k: v.to(device) for k, v in default_collate(items).items()}


def measure(model: str, size: str, device: str, precision: str, batch: int | None, window: int | None,
            warmup: int, steps: int, threads: int | None = None, extra_model_args: dict | None = None) -> dict:
    """Time ``steps`` training steps after ``warmup`` ones; windows per second and peak memory."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = recipe(model, size)
    in_dim = PAPER_IN_DIM if size == "paper" else int(cfg.data.source.rgb_dim + cfg.data.source.flow_dim)
    net_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    net_cfg.update(in_dim=in_dim, num_classes=NUM_CLASSES, **(extra_model_args or {}))
    if window:
        net_cfg["window"] = window
    net = instantiate(net_cfg).to(device).train()
    criterion = instantiate(cfg.criterion, ignore_index=IGNORE_INDEX)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    clip = cfg.trainer.get("gradient_clip_val")
    batch = batch or int(cfg.data.batch_size)
    data = synthetic_batch(net_cfg, batch, in_dim, device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    cuda = device.startswith("cuda")

    def step() -> float:
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
            logits, future = net.training_logits(data)
            loss = criterion(logits, future, data["target"], data["future_target"])["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()  # float(loss) synchronises
    elapsed = time.perf_counter() - t0
    window = getattr(net, "window", None) or getattr(net, "work_memory", 1)  # chunks per training sample
    return {
        "model": model, "size": size, "device": device, "precision": precision, "batch": batch, "window": window,
        "steps": steps, "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
        "windows_per_s": batch * steps / elapsed, "chunks_per_s": batch * window * steps / elapsed,
        "step_s": elapsed / steps, "loss": loss,
        "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_GB": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def isolated(*args, **kwargs) -> dict:
    """``measure`` in a fresh process (its own peak memory, no state carried between runs)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, *args, **kwargs).result()


def machine() -> str:
    import lightning
    import torch

    from oad.bench.common import cpu_name

    lines = [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: {platform.node()}, {cpu_name()}, {os.cpu_count()} CPUs visible, "
        f"torch threads {torch.get_num_threads()}",
        f"python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}",
    ]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(f"gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    return "\n".join(lines)


def _num(v: float) -> str:
    """Rates from 0.05 to 50,000 in a column: whole numbers from 100, three significant digits below."""
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def table(rows: list[dict]) -> str:
    head = (f"{'model':<6} {'size':<6} {'device':<6} {'prec':<5} {'params':>7} {'batch':>5} {'L':>3} {'steps':>5} "
            f"{'s/step':>8} {'windows/s':>10} {'chunks/s':>10} {'peak RSS':>9} {'peak GPU':>9}")
    out = [head, "-" * len(head)]
    for r in rows:
        gpu = "-" if r["peak_gpu_GB"] is None else f"{r['peak_gpu_GB']:.2f} GB"
        out.append(f"{r['model']:<6} {r['size']:<6} {r['device'][:6]:<6} {r['precision']:<5} {r['params_M']:>6.1f}M "
                   f"{r['batch']:>5} {r['window']:>3} {r['steps']:>5} {r['step_s']:>8.3f} {_num(r['windows_per_s']):>10} "
                   f"{_num(r['chunks_per_s']):>10} {r['peak_rss_GB']:>6.2f} GB {gpu:>9}")
    return "\n".join(out)


def main() -> None:
    import torch

    print(machine(), flush=True)
    threads = torch.get_num_threads()
    rows = []
    t0 = time.perf_counter()
    for model, size, batch, window, warmup, steps in CPU_RUNS:
        for precision in ("fp32", "bf16"):
            rows.append(isolated(model, size, "cpu", precision, batch, window, warmup, steps, threads=threads))
            print(f"  done: {model} {size} cpu {precision} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                  flush=True)
    if torch.cuda.is_available():
        for model, size, batch, window, warmup, steps in GPU_RUNS:
            for precision in ("fp32", "bf16"):
                rows.append(isolated(model, size, "cuda", precision, batch, window, warmup, steps))
    print()
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s. CPU paper sizes at a reduced batch (recipes: OadTR 128, "
          "TRN 32), TRN's on 4-chunk windows (paper: 64; its cost is linear in the window).")

