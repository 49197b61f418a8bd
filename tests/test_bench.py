"""Smoke tests of the benchmark scripts (``oad/bench``, ``tools/bench*.py``, ``tools/gpu_check.py``): they
run and report the structure they promise. No speed and no FLOP figure is asserted here: figures are
measured by the benchmarks themselves and recorded in docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO


def test_bench_tiny_runs(tmp_path):
    """The streaming benchmark end to end on OadTR's tiny size (the code paths of the paper-size run, which
    takes minutes on a 2-core CPU without native bf16)."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(REPO / "tools" / "bench.py"), "--tiny", "--threads", "1", "--no-e2e",
                        "--json", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "per-step latency" in r.stdout and "acceptance" in r.stdout and "--tiny" in r.stdout
    res = json.loads(out.read_text())
    assert res["tiny"] and res["model"]["in_dim"] == 128 and res["model"]["d_model"] == 32
    for key in ("runner/fp32/1", "runner/bf16/1", "products only/fp32/1", "full forward/fp32/1"):
        row = res["latency"][key]
        assert row["gflop"] > 0 and row["median_s"] > 0, key
    # the products-only floor does a subset of the step's work
    for d in ("fp32", "bf16"):
        assert res["latency"][f"products only/{d}/1"]["gflop"] < res["latency"][f"runner/{d}/1"]["gflop"]


def test_gpu_check_refuses_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the check would run for minutes")
    r = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "no CUDA device" in r.stderr


def test_every_model_builds_at_paper_size_for_the_benchmarks():
    from oad.bench.models import paper_models

    for name, build in paper_models().items():
        build = build[0] if isinstance(build, tuple) else build
        with torch.device("meta"):
            net = build()
        assert net.in_dim == 3072 and getattr(net, "online_step", None), name


def test_model_step_table_structure():
    """oad.bench.models (``tools/bench.py --models``) on small models: one row per model, dtype and
    stream count, FLOPs counted, the fused and the plain OadTR step both timed."""
    from oad.bench import models
    from oad.models.oadtr import OadTR
    from oad.models.testra import TeSTra

    def small_oadtr():
        return OadTR(in_dim=16, window=8, d_model=32, num_heads=4, num_layers=1, mlp_dim=32, num_queries=2,
                     decoder_layers=1, decoder_heads=2, decoder_ffn_dim=32)

    nets = {"oadtr": small_oadtr, "oadtr plain": (small_oadtr, {"fused": False}),
            "testra": lambda: TeSTra(in_dim=16, d_model=32, num_heads=4, ffn_dim=32, long_memory=16, work_memory=4,
                                     enc_queries=(4, 4))}
    r = models.run(streams=(1, 3), dtypes=("fp32",), reps=2, history=6, models=nets, log=lambda s: None)
    rows = {(row["model"], row["streams"]): row for row in r["rows"]}
    assert set(rows) == {(m, n) for m in nets for n in (1, 3)}
    assert rows[("oadtr plain", 1)]["step"] == "plain" and rows[("oadtr", 1)]["step"].startswith("fused")
    for row in rows.values():
        assert row["gflop_per_chunk"] > 0 and row["median_ms"] > 0
    assert "| testra | fp32 | 3 |" in models.format_table(r)
