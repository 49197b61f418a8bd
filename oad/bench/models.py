"""Every model's online step side by side at paper size: GFLOP per chunk, batch-1 and 16-stream latency,
fp32 and bf16, in one run (``tools/bench.py --models``).

Each step is built with :class:`oad.online.OnlineDetector` on a paper-size model with random weights,
primed with ``history`` chunks (the long memories' slots are computed whether they hold real chunks or
padding, so the cost per chunk does not depend on how full they are; TeSTra's amortised exact
recomputation of its running sums, every ``N / 4`` pushes of a phase, is counted in its FLOPs per chunk
by averaging over a whole recomputation period), then stepped ``reps`` times round-robin with the
others, so load changes hit all alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from oad.bench.common import DTYPES, count_flops, machine_info
from oad.models import registry
from oad.online import OnlineDetector
from oad.timing import median_ms, round_robin


def model_list(only: list[str] | None = None) -> list[str]:
    """One line per registered model: its name and its benchmark rows (``paper_variants``); ``only``:
    keep the rows whose label starts with one of these prefixes (a model without such a row is left out)."""
    lines = []
    for entry in registry.entries():
        labels = [label for label in entry.paper_variants() if not only or any(label.startswith(x) for x in only)]
        if labels:
            lines.append(f"{entry.name}: {', '.join(labels)}")
    return lines


def paper_models() -> dict[str, Callable[[], torch.nn.Module] | tuple[Callable[[], torch.nn.Module], dict]]:
    """Builders of every registered model at its THUMOS'14 paper size (its ``configs/model/<name>.yaml``, in_dim
    3072, 22 classes), one per row of its ``paper_variants``; a tuple adds the online step's options (e.g.
    OadTR's plain step beside its fused CPU engine)."""
    rows: dict = {}
    for entry in registry.entries():
        for label, (config, step) in entry.paper_variants().items():
            build = functools.partial(entry.build_paper, **config)
            rows[label] = (build, step) if step else build
    return rows


def _flops_per_chunk(det, x: torch.Tensor, chunks: int) -> float:
    total = count_flops(lambda: [det.step(x) for _ in range(chunks)])
    return total / chunks


def run(streams: tuple[int, ...] = (1, 16), dtypes: tuple[str, ...] = ("fp32", "bf16"), reps: int = 20,
        history: int = 40, models: dict | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``{'machine', 'rows': [{model, dtype, streams, step, gflop_per_chunk, median_ms, min_ms}]}``.

    Every configuration (model, dtype, streams) is built and primed first, then all are stepped
    round-robin ``reps`` times, so a load change on the machine hits every row alike.
    """
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    rows, configs = [], []
    for name, build in (models or paper_models()).items():
        build, options = build if isinstance(build, tuple) else (build, {})
        net = build().eval().requires_grad_(False)
        for dname in dtypes:
            for n in streams:
                try:
                    det = OnlineDetector(net, dtype=DTYPES[dname], **options)
                    det.prime(torch.randn(n, history, net.in_dim, generator=gen))
                except Exception as e:  # noqa: BLE001 - a model without a path for this dtype: a row with its error
                    rows.append({"model": name, "dtype": dname, "streams": n, "error": f"{type(e).__name__}: {e}"})
                    continue
                x = torch.randn(n, net.in_dim, generator=gen)
                # TeSTra recomputes a phase's sums every N / 4 pushes of that phase: count FLOPs over a period
                period = max(1, getattr(det._engine, "period", 1)) * int(getattr(net, "long_stride", 1))
                chunks = min(period, 64) if n == 1 else 1
                flops = _flops_per_chunk(det, x, chunks) / n
                configs.append({"model": name, "dtype": dname, "streams": n, "step": det.implementation,
                                "gflop_per_chunk": flops / 1e9, "params": sum(p.numel() for p in net.parameters()),
                                "det": det, "x": x})
        log(f"  built {name}")
    # no warm-up round: counting the FLOPs above already stepped every configuration
    times = round_robin({i: (lambda c=c: c["det"].step(c["x"])) for i, c in enumerate(configs)}, reps, warmup=0)
    for i, c in enumerate(configs):
        c.pop("det"), c.pop("x")
        rows.append({**c, "median_ms": median_ms(times[i]), "min_ms": 1e3 * min(times[i])})
        log(f"  {c['model']:<22} {c['dtype']} x{c['streams']:<3} {rows[-1]['median_ms']:8.2f} ms")
    return {"machine": machine_info(), "threads": torch.get_num_threads(), "reps": reps, "history": history,
            "rows": rows}


def format_table(r: dict[str, Any]) -> str:
    """Markdown table: per model and dtype, GFLOP per chunk and ms per step at each stream count."""
    lines = [f"threads {r['threads']}, {r['reps']} round-robin steps each after a {r['history']}-chunk history",
             "", "| model | dtype | streams | step | GFLOP/chunk | median ms/step | min ms | ms per chunk |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['dtype']} | {row['streams']} | error: {row['error']} | | | | |")
            continue
        lines.append(f"| {row['model']} | {row['dtype']} | {row['streams']} | {row['step']} | "
                     f"{row['gflop_per_chunk']:.2f} | {row['median_ms']:.2f} | {row['min_ms']:.2f} | "
                     f"{row['median_ms'] / row['streams']:.2f} |")
    return "\n".join(lines)
