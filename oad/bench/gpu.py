"""One-command check of a machine with an NVIDIA GPU (a few minutes): paper-size OadTR training and
online inference there.

1. Lightning training of the paper-size OadTR (74.7M parameters) in ``bf16-mixed`` on synthetic
   THUMOS-sized data (3072-d features, 22 classes, batch 128, window 64) through ``oad.tasks.training``
   (the real configs, with activation checkpointing off and on): windows per second, GPU memory peak,
   and the test pass over every chunk of the test videos.
2. Raw training steps (``oad.bench.train``'s ``measure``, behind ``tools/bench_train.py``) of every registered
   model (:mod:`oad.models.registry`) at paper size in fp32, ``bf16`` and ``fp16`` autocast at the recipe
   batch sizes.
3. Batch-1 latency of the online step (``oad.online.OnlineDetector``, fp32 and bf16) of every model at
   paper size (``oad.bench.models.paper_models``).

Exits with a message (status 2) on a machine without CUDA. Run: ``python tools/gpu_check.py``;
``--list-models`` prints the models it would run (no GPU needed). Measured figures: docs/benchmarks.md.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from oad.bench import train as bench_train
from oad.models import registry
from oad.timing import device_sync, round_robin

REPO = Path(__file__).resolve().parents[2]
TRAIN_STEPS = 10  # timed raw training steps per model and precision (after 3 warm-up steps)


def check_cuda() -> None:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available here (torch.cuda.is_available() is False); "
              "run it on a machine with an NVIDIA GPU and a CUDA build of torch.", file=sys.stderr)
        sys.exit(2)


class Throughput(L.Callback):
    """Windows per second over the training batches after the first ``skip``."""

    def __init__(self, device: str = "cuda", skip: int = 5):
        self.sync = device_sync(device) or (lambda: None)
        self.skip, self.n, self.t0, self.windows, self.elapsed = skip, 0, None, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.n == self.skip:
            self.sync()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.n += 1
        if self.n > self.skip:
            self.windows += batch["features"].shape[0]

    def on_train_epoch_end(self, trainer, pl_module):
        if self.t0 is not None:
            self.sync()
            self.elapsed += time.perf_counter() - self.t0
            self.t0 = None


# Paper-size OadTR (experiment oadtr_paper_thumos14) on synthetic THUMOS-sized data, bf16-mixed, one GPU.
LIGHTNING_RUN = [
    "experiment=oadtr_paper_thumos14", "data=synthetic", "data.source.rgb_dim=2048", "data.source.flow_dim=1024",
    "data.source.num_videos={train: 60, val: 2, test: 8}", "data.source.length_scale=0.4", "data.batch_size=128",
    "trainer=gpu", "trainer.precision=bf16-mixed", "trainer.max_epochs=1", "trainer.limit_train_batches=60",
    "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "checkpoint.every_n_train_steps=0",
]


def lightning_training(checkpoint_activations: bool, out: Path, overrides: list[str] = (), device: str = "cuda"
                       ) -> dict:
    """``oad.tasks.training`` with ``LIGHTNING_RUN`` (then ``overrides``): throughput, memory, test result."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from oad.tasks import train

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*LIGHTNING_RUN, *overrides,
                                          f"+model.checkpoint_activations={str(checkpoint_activations).lower()}"])
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.output_dir = str(out)
    meter = Throughput(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train(cfg, callbacks=[meter])
    total = time.perf_counter() - t0
    return {
        "checkpoint_activations": checkpoint_activations,
        "windows_per_s": meter.windows / meter.elapsed if meter.elapsed else float("nan"),
        "peak_gpu_GB": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "test_mAP": result["metrics"]["headline"][result["metrics"]["metric"]],
        "chunks_scored": result["metrics"]["protocols"]["all"]["num_chunks_scored"],
        "wall_s": total,
    }


def streaming_latency(device: str = "cuda", repeats: int = 300, warmup: int = 20, nets: dict | None = None
                      ) -> list[str]:
    """Median and 90th-percentile batch-1 latency of one online step of every model (``OnlineDetector``)."""
    from oad.online import OnlineDetector

    lines = []
    from oad.bench.models import paper_models

    for name, build in (nets or paper_models()).items():
        build, options = build if isinstance(build, tuple) else (build, {})
        net = build().to(device).eval()
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(net.in_dim, device=device)
            det = OnlineDetector(net, dtype=dtype, device=device, **options)
            times = sorted(round_robin({"step": lambda: det.step(x)}, repeats, warmup=warmup,
                                       sync=device_sync(device))["step"])
            lines.append(f"{name:<8} {str(dtype).removeprefix('torch.'):<9} {det.implementation} step: median "
                         f"{1e3 * times[len(times) // 2]:.2f} ms, p90 {1e3 * times[int(0.9 * len(times))]:.2f} ms")
        del net, det
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--list-models" in argv:
        from oad.bench.models import model_list

        print("\n".join(model_list()))  # every registered model is trained, its step rows are timed
        return
    if argv:
        print(f"gpu_check: unknown arguments {argv} (options: --list-models)", file=sys.stderr)
        sys.exit(2)
    check_cuda()
    print(bench_train.machine(), flush=True)
    t0 = time.perf_counter()

    print("\n1. Lightning training, paper-size OadTR, bf16-mixed, batch 128, synthetic 3072-d data", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for ckpt_act in (False, True):
            r = lightning_training(ckpt_act, Path(tmp) / f"run_{int(ckpt_act)}")
            print(f"   activation checkpointing {'on ' if ckpt_act else 'off'}: {r['windows_per_s']:.0f} windows/s, "
                  f"peak GPU {r['peak_gpu_GB']:.2f} GB, test over {r['chunks_scored']} chunks: "
                  f"mAP {r['test_mAP']:.4f} (run {r['wall_s']:.0f} s)", flush=True)

    print("\n2. Raw training steps at the recipe batch sizes (tools/bench_train.py)", flush=True)
    rows = []
    for model in registry.names():
        for precision in ("fp32", "bf16", "fp16"):
            rows.append(bench_train.isolated(model, "paper", "cuda", precision, None, None, 3, TRAIN_STEPS))
    print(bench_train.table(rows), flush=True)

    print("\n3. Online step latency, batch 1, paper size", flush=True)
    for line in streaming_latency():
        print("   " + line, flush=True)
    print(f"\ngpu_check done in {time.perf_counter() - t0:.0f} s (torch {torch.__version__})")

