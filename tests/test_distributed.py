"""Training at scale: DDP evaluation scores every chunk exactly once (two CPU processes give what one
gives, also with a process left without videos), DDP training runs, mixed precision and gradient
accumulation work, activation checkpointing changes no gradient and keeps less for backward, and a seeded
run repeats exactly.

Lightning's DDP launcher re-executes the script, so the multi-process runs are ``tools/*.py``
subprocesses with ``trainer=ddp_cpu``.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from oad.data.sources import SyntheticSource
from oad.distributed import VideoBatches, VideoShardSampler, shard_by_length
from oad.models.oadtr import OadTR
from oad.tasks import evaluate, train
from tests.conftest import REPO, TINY, compose_cfg

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def run_tool(tool: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), *args], cwd=cwd,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{tool} {' '.join(args)}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


# -- the sharding ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_video_once_and_balance_lengths(n, world):
    rng = np.random.default_rng(n * 10 + world)
    lengths = rng.integers(10, 1000, size=n).tolist()
    shards = shard_by_length(lengths, world)
    assert len(shards) == world
    assert sorted(i for s in shards for i in s) == list(range(n))
    loads = [sum(lengths[i] for i in s) for s in shards]
    if n:
        assert max(loads) - min(loads) <= max(lengths)  # greedy longest-first bound
    samplers = [VideoShardSampler(list(range(n)), lengths, batch_size=2, num_replicas=world, rank=r)
                for r in range(world)]
    batches = [list(s) for s in samplers]
    for b in batches:
        assert len(b) >= 1 and all(len(x) <= 2 for x in b)  # every process runs at least one batch
    assert sorted(i for b in batches for x in b for i in x) == list(range(n))


def test_video_batches_reads_a_batch_or_one_video():
    ds = VideoBatches(["a", "b", "c"])
    assert ds[[2, 0]] == ["c", "a"] and ds[[]] == [] and ds[1] == ["b"]


# -- DDP evaluation and training ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train")
    train(compose_cfg("train", [*TINY, "trainer.limit_train_batches=3", "test=false"], run))
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("num_test", [5, 1])  # 5: uneven over 2 processes; 1: one process scores nothing
def test_ddp_evaluation_equals_single_process(checkpoint, num_test, tmp_path):
    data = ["data=synthetic", f"data.source.num_videos={{train: 2, val: 1, test: {num_test}}}",
            "data.source.length_scale=0.1"]
    out = {}
    for trainer in ("cpu", "ddp_cpu"):  # the single process here, the two DDP processes through the tool
        run = tmp_path / trainer
        args = [f"ckpt_path={checkpoint}", f"trainer={trainer}", "trainer.enable_progress_bar=false", *data]
        if trainer == "cpu":
            evaluate(compose_cfg("eval", args, run))
        else:
            run_tool("eval", [*args, f"hydra.run.dir={run}"], tmp_path)
        with open(run / "predictions.pkl", "rb") as f:
            out[trainer] = (json.loads((run / "metrics.json").read_text()), pickle.load(f))
    assert (tmp_path / "ddp_cpu" / "train_ddp_process_1.log").is_file()  # a second process did run

    videos = SyntheticSource(num_videos={"train": 2, "val": 1, "test": num_test}, rgb_dim=64, flow_dim=32,
                             seed=0, length_scale=0.1).load("test")
    (m1, p1), (m2, p2) = out["cpu"], out["ddp_cpu"]
    for protocol in ("all", "windows"):
        a, b = m1["protocols"][protocol], m2["protocols"][protocol]
        if "error" in a:
            assert "error" in b
            continue
        assert b["mAP"] == pytest.approx(a["mAP"], abs=1e-6)
        assert b["num_chunks_scored"] == a["num_chunks_scored"]
        assert b["num_videos"] == a["num_videos"] == num_test
    assert m2["protocols"]["all"]["num_chunks_scored"] == sum(v.num_chunks for v in videos)
    scores1, scores2 = p1["perframe_pred_scores"], p2["perframe_pred_scores"]
    assert sorted(scores2) == sorted(scores1) == sorted(v.name for v in videos)
    for name in scores1:
        np.testing.assert_allclose(scores2[name], scores1[name], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_ddp_training_completes(tmp_path):
    run = tmp_path / "run"
    res = run_tool("train", ["trainer=ddp_cpu", "trainer.max_epochs=2", "trainer.limit_train_batches=3", *QUIET,
                             "data.batch_size=16",
                             "data.source.num_videos={train: 4, val: 1, test: 3}", "data.source.length_scale=0.1",
                             "checkpoint.every_n_train_steps=2", f"hydra.run.dir={run}"], tmp_path)
    assert res.stdout.strip().splitlines()[-1].startswith("test/mAP=")
    assert (run / "train_ddp_process_1.log").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocols"]["all"]["num_videos"] == 3
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 6  # per process: 3 batches x 2 epochs
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")) == []


# -- precision, accumulation, activation checkpointing, determinism -------------------------------------
@pytest.mark.parametrize("model", ["oadtr", "trn"])
def test_bf16_mixed_with_gradient_accumulation(model, tmp_path):
    test = model == "oadtr"  # TRN's whole-video scoring is slow on the CPU; OadTR's covers the bf16 test path
    cfg = compose_cfg("train", [f"model={model}", *TINY, "trainer.precision=bf16-mixed",
                                "trainer.accumulate_grad_batches=2", "trainer.limit_train_batches=4",
                                "trainer.limit_val_batches=0", "data.batch_size=4", f"test={test}"], tmp_path)
    result = train(cfg)
    if test:
        assert 0.0 <= result["metrics"]["headline"]["mAP"] <= 1.0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2  # 4 batches, one optimizer step per 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> tuple[int, tuple]:
    """Bytes kept for backward by one forward, and the outputs."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, mask)
    return total, out


def test_activation_checkpointing_same_gradients_less_memory():
    kw = dict(in_dim=16, num_classes=5, window=48, d_model=32, num_heads=4, num_layers=2, mlp_dim=64,
              num_queries=4, decoder_layers=2, decoder_heads=4, decoder_ffn_dim=64, dropout=0.2, attn_dropout=0.1)
    plain, ckpt = OadTR(**kw), OadTR(**kw, checkpoint_activations=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(6, 48, 16)
    mask = torch.ones(6, 48, dtype=torch.bool)
    mask[:2, :20] = False
    results = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(3)  # the same dropout masks in both (checkpoint restores the RNG on recompute)
        saved, (logits, future) = _saved_bytes(model, x, mask)
        (logits.square().sum() + future.square().sum()).backward()
        results.append((saved, logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (saved_plain, lg_plain, g_plain), (saved_ckpt, lg_ckpt, g_ckpt) = results
    torch.testing.assert_close(lg_ckpt, lg_plain)
    for name, g in g_plain.items():
        torch.testing.assert_close(g_ckpt[name], g, msg=name)
    assert saved_ckpt < 0.5 * saved_plain, (saved_ckpt, saved_plain)
    # evaluation does not checkpoint (nothing to save anyway)
    ckpt.eval()
    with torch.no_grad():
        torch.testing.assert_close(ckpt(x, mask)[0], plain.eval()(x, mask)[0])


def test_seeded_training_repeats_exactly(tmp_path):
    runs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        result = train(compose_cfg("train", [*TINY, "trainer.limit_train_batches=3", "trainer.limit_val_batches=0"],
                                   out))
        with open(out / "predictions.pkl", "rb") as f:
            runs.append((result["metrics"], pickle.load(f)["perframe_pred_scores"]))
    (m0, p0), (m1, p1) = runs
    assert m1["headline"]["mAP"] == m0["headline"]["mAP"]
    assert m1["protocols"] == m0["protocols"]
    for name in p0:
        np.testing.assert_array_equal(p1[name], p0[name])
