"""What batching independent streams saves: :class:`oad.online.StreamPool` against one detector per stream.

``python -m oad.bench.pool [--models oadtr miniroad] [--streams 16] [--reps 10] [--threads 1]``: for each
model at paper size (:mod:`oad.models.registry`), milliseconds per tick of ``N`` streams fed together:

- ``pool``: the pool, its streams one cohort (one batched step per tick);
- ``detector xN``: one :class:`oad.online.OnlineDetector` stepping the ``N`` streams as one batch (the
  pool's floor: what its bookkeeping adds is the difference);
- ``N detectors``: one detector per stream, stepped one after the other (the pool before batching);
- ``pool, one skips``: the pool when one stream skips every other tick (ticks of ``N`` and ``N - 1``
  streams; with a window or memory its history is then shorter than the others', so it is stepped apart,
  a second call on the ticks it has a chunk; a recurrent model merges it back each time).

Timed with :func:`oad.timing.round_robin` (the configurations in turn). Prints a Markdown table and the
machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from typing import Any

import torch

from oad.bench.common import load_line, machine_info
from oad.models import registry
from oad.online import OnlineDetector, StreamPool
from oad.timing import round_robin

__all__ = ["run"]


def _configs(net: torch.nn.Module, n: int, gen: torch.Generator) -> dict[str, Callable[[], Any]]:
    """Name -> one tick (a step of every stream) of each configuration."""
    dim = net.in_dim
    pool, skipping, batch = StreamPool(net), StreamPool(net), OnlineDetector(net)
    alone = [OnlineDetector(net) for _ in range(n)]
    for p in (pool, skipping):
        for k in range(n):
            p.open(k)
    tick = {"skip": 0}

    def skip_one() -> None:
        tick["skip"] += 1
        keys = range(n) if tick["skip"] % 2 else range(1, n)  # stream 0 skips every other tick
        skipping.step({k: torch.randn(dim, generator=gen) for k in keys})

    return {
        "pool": lambda: pool.step({k: torch.randn(dim, generator=gen) for k in range(n)}),
        f"detector x{n}": lambda: batch.step(torch.randn(n, dim, generator=gen)),
        f"{n} detectors": lambda: [d.step(torch.randn(dim, generator=gen)) for d in alone],
        "pool, one skips": skip_one,
    }


def run(models: list[str], streams: int, reps: int, tiny: bool = False) -> list[dict[str, Any]]:
    """Median ms per tick of every configuration of every model (paper size, float32, CPU; ``tiny``: the
    tests' tiny instances, to check the benchmark runs)."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for name in models:
        torch.manual_seed(0)
        net = registry.tiny_model(name) if tiny else registry.get(name).build_paper().eval()
        times = round_robin(_configs(net, streams, gen), reps=reps, warmup=2)
        rows.append({"model": name, **{k: 1e3 * statistics.median(v) for k, v in times.items()}})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["oadtr", "miniroad"])
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    m = machine_info()
    rows = run(args.models, args.streams, args.reps)
    m["loadavg_after"] = os.getloadavg()
    cols = list(rows[0])[1:]
    print(f"ms per tick, {args.streams} streams, float32, median of {args.reps}")
    print("| model | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for r in rows:
        print(f"| {r['model']} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")
    print(f"{m['date']}, {m['cpu']}, {m['torch_threads']} thread(s), torch {m['torch']}; {load_line(m)}")


if __name__ == "__main__":
    main()
