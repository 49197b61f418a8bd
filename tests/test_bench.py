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


@pytest.mark.slow
def test_bench_quick_runs(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(REPO / "tools" / "bench.py"), "--quick", "--threads", "1", "--no-e2e",
                        "--json", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "per-step latency" in r.stdout and "acceptance" in r.stdout
    res = json.loads(out.read_text())
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
        with torch.device("meta"):
            net = build()
        assert net.in_dim == 3072 and getattr(net, "online_step", None), name
