"""OadTR-SW (``oad/models/oadtr_sw.py``, ``oad/online/oadtr_sw.py``, ``oad/data/sequences.py``): streaming
equals offline scoring for short, medium and long videos and 1 or 3 streams; causality (a chunk's state
never changes); left padding and tiling are invisible; every parameter is trained; the training sequences;
the paper-size parameter count; the step's FLOPs against OadTR's; bf16; one epoch through the real task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close
from torch.utils.flop_counter import FlopCounterMode

from oad.checkpoint import load_network, save_network
from oad.data.base import Video
from oad.data.samples import dense_sequences
from oad.data.sequences import SequenceDataset, sequence_lengths
from oad.losses import OadCriterion
from oad.models.base import class_probabilities, count_parameters
from oad.models.oadtr import OadTR
from oad.models.oadtr_sw import OadTRSW, alibi_slopes
from oad.online import OnlineDetector
from oad.online.oadtr_sw import OadTRSWExportStep, OadTRSWStep
from oad.tasks.scoring import score_videos
from tests.conftest import TINY, compose_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IN_DIM, WINDOW, K = 24, 8, 4
# the task token read out by cross-attention, through the encoder, and with a long memory reaching past the
# receptive field (R = 3 * (WINDOW - 1) = 21 chunks)
VARIANTS = {"cross": {"long_memory": 0}, "encoder": {"readout": "encoder", "long_memory": 0},
            "long": {"long_memory": 3 * WINDOW + 1, "long_decays": (0.7, 1.0)}}


SIZES = {"window": WINDOW, "d_model": 32, "num_heads": 4, "num_layers": 2, "mlp_dim": 48, "num_queries": 4,
         "decoder_layers": 3, "decoder_heads": 2, "decoder_dim": 16, "decoder_ffn_dim": 40, "decoder_window": K}


def small(seed: int = 0, **kw) -> OadTRSW:
    torch.manual_seed(seed)
    net = OadTRSW(in_dim=IN_DIM, num_classes=22, **{**SIZES, "long_memory": 0, **kw})
    for p in net.parameters():  # larger than the default init, so the scores vary between chunks
        torch.nn.init.normal_(p, std=0.3)
    net.tile = 16  # several tiles on the longer videos
    return net.eval()


def stream(det: OnlineDetector, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step every chunk of ``(N, T, D)``; ``(N, T, C)``, ``(N, T, Q, C)``."""
    outs = [det.step(feats[:, t]) for t in range(feats.shape[1])]
    return torch.stack([o.scores for o in outs], 1), torch.stack([o.future_scores for o in outs], 1)


# ---------------------------------------------------------------------------------------------------
# Streaming == offline
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("T", [WINDOW - 3, 2 * WINDOW + 3, 10 * WINDOW])
@pytest.mark.parametrize("N", [1, 3])
def test_streaming_equals_offline_scoring(T, N, variant):
    net = small(**VARIANTS[variant])
    feats = torch.randn(N, T, IN_DIM, generator=torch.Generator().manual_seed(T + N))
    offline = score_videos(net, list(feats))
    det = OnlineDetector(net)
    assert det.implementation == "kv-cache"
    scores, future = stream(det, feats)
    assert scores.shape == (N, T, 22) and future.shape == (N, T, 4, 22)
    for i, (logits, fut) in enumerate(offline):
        assert logits.shape == (T, 22) and fut.shape == (T, 4, 22)
        assert_close(scores[i], class_probabilities(logits, 21), atol=1e-5, rtol=0)
        assert_close(future[i], class_probabilities(fut, 21), atol=1e-5, rtol=0)
    # the comparison is not between constants
    assert scores.argmax(-1).unique().numel() > 1 or scores.std(1).max() > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_prime_and_reset_leave_the_state_stepping_would(variant):
    net = small(1, **VARIANTS[variant])
    feats = torch.randn(2, 3 * WINDOW, IN_DIM, generator=torch.Generator().manual_seed(3))
    ref = stream(OnlineDetector(net), feats)[0]
    for k in (0, 3, WINDOW, 2 * WINDOW + 1):
        det = OnlineDetector(net)
        det.prime(feats[:, :k])
        assert_close(stream(det, feats[:, k:])[0], ref[:, k:], atol=1e-5, rtol=0)
    det = OnlineDetector(net)
    stream(det, feats[:1])
    det.reset()
    assert_close(stream(det, feats)[0], ref, atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["cross", "long"])
def test_the_export_step_streams_as_the_online_step(variant):
    """The exportable step (caches held oldest first, explicit state) == the ring-buffer step, past the
    filling of every buffer; the TorchScript/ONNX files themselves: tests/test_export.py."""
    net = small(15, **VARIANTS[variant])
    feats = torch.randn(2, 4 * WINDOW, IN_DIM, generator=torch.Generator().manual_seed(16))
    ref, ref_future = stream(OnlineDetector(net), feats)
    step = OadTRSWExportStep(net, ignore_index=21)
    state = step.init_state(2)
    with torch.no_grad():
        for t in range(feats.shape[1]):
            scores, future, *state = step(*step.arrange(tuple(state), feats[:, t]))
            assert_close(scores, ref[:, t], atol=1e-5, rtol=0)
            assert_close(future, ref_future[:, t], atol=1e-5, rtol=0)
    assert int(state[-1][0]) == step.window == max(WINDOW, K, VARIANTS[variant].get("long_memory", 0))


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiling_does_not_change_the_scores(variant):
    net = small(2, **VARIANTS[variant])
    x = torch.randn(5 * WINDOW + 1, IN_DIM, generator=torch.Generator().manual_seed(4))
    ref = net.forward_video(x)
    for tile in (1, 7, 1000):
        net.tile = tile
        out = net.forward_video(x)
        assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)
        assert_close(out[1], ref[1], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Causality, padding
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_chunk_never_changes_once_computed(variant):
    """Its encoder state does not change when later chunks are appended, nor its outputs when the
    features after it change."""
    net = small(5, **VARIANTS[variant])
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 4 * WINDOW, IN_DIM, generator=gen)
    with torch.no_grad():
        full = net.encode(net.embed(x), None)
        for t in (0, WINDOW - 1, 3 * WINDOW):
            assert_close(net.encode(net.embed(x[:, : t + 1]), None), full[:, : t + 1], atol=1e-5, rtol=1e-5)
        t = 2 * WINDOW + 1
        y = x.clone()
        y[:, t + 1:] = torch.randn(1, y.shape[1] - t - 1, IN_DIM, generator=gen) * 10
        a, b = net(x), net(y)
    assert_close(a[0][:, : t + 1], b[0][:, : t + 1], atol=1e-5, rtol=1e-5)
    assert_close(a[1][:, : t + 1], b[1][:, : t + 1], atol=1e-5, rtol=1e-5)
    assert (a[0][:, t + 1:] - b[0][:, t + 1:]).abs().max() > 1e-3


def assert_depends_back_to(net: OadTRSW, x: Tensor, t: int, first: int) -> None:
    """The output at ``t`` depends on chunk ``first`` and on no chunk before it."""
    with torch.no_grad():
        ref = net(x)[0][:, t]
        older = x.clone()
        older[:, :first] += 5  # the chunks before: no effect
        assert_close(net(older)[0][:, t], ref, atol=1e-5, rtol=1e-5)
        edge = x.clone()
        edge[:, first] += 5  # that chunk: an effect
        assert (net(edge)[0][:, t] - ref).abs().max() > 1e-6


def test_receptive_field_is_the_default_context():
    """The output at t depends on chunk t - R (R = (num_layers + 1) * (L - 1)) and on nothing older."""
    net = small(7)
    R = (2 + 1) * (WINDOW - 1)
    assert net.context == R and net.seq_len == 2 * WINDOW
    x = torch.randn(1, R + 5, IN_DIM, generator=torch.Generator().manual_seed(8))
    assert_depends_back_to(net, x, R + 4, 4)


def test_long_memory_reaches_back_its_length_and_no_further():
    """With a long memory of M > R chunks the output at t depends on chunk t - M + 1 and on nothing older;
    the default context is M - 1, and a training sequence scores its tail as the whole video does."""
    M = 3 * WINDOW + 1
    net = small(11, long_memory=M, long_decays=(0.7, 1.0))
    assert net.context == M - 1 and sequence_lengths({"window": WINDOW, "num_layers": 2, "long_memory": M}) == (16, M - 1)
    x = torch.randn(1, M + 6, IN_DIM, generator=torch.Generator().manual_seed(12))
    t = M + 5
    assert_depends_back_to(net, x, t, t - M + 1)  # older than the encoder's receptive field
    with torch.no_grad():
        # a sequence of 4 scored chunks after its M - 1 chunks of history == the whole video's
        assert_close(net(x[:, t - 3 - (M - 1): t + 1], start=M - 1)[0][0], net(x)[0][0, t - 3: t + 1],
                     atol=1e-5, rtol=1e-5)


def test_long_memory_tokens_are_exponential_means_of_the_embeddings():
    M, decays = 6, (0.5, 1.0)
    net = small(13, long_memory=M, long_decays=decays)
    x = torch.randn(1, 10, IN_DIM, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        e = net.embed(x)[0]
        mask = torch.ones(1, 13, dtype=torch.bool)
        mask[:, :3] = False  # left padding: not averaged in
        got = net.long_tokens(torch.cat((torch.randn(1, 3, IN_DIM) * 9, x), dim=1), mask, 3, 13)[0]
        for t in (0, 2, 9):
            for j, d in enumerate(decays):
                ages = torch.arange(min(t + 1, M), dtype=torch.float32)
                w = d ** ages
                summary = (w[:, None] * e[t - ages.long()]).sum(0) / w.sum()
                want = F.layer_norm(summary, (32,), net.long_norm.weight, net.long_norm.bias) + net.long_embed[0, 0, j]
                assert_close(got[t, j], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="long_decays"):
        small(long_memory=4, long_decays=(1.5,))
    with pytest.raises(ValueError, match="readout='cross'"):
        small(long_memory=4, readout="encoder")


def test_a_checkpoint_saved_before_the_long_memory_loads_as_it_was(tmp_path):
    """Its model config has no ``long_memory``: the class default (none) rebuilds the network it holds."""
    net = small(17)
    save_network(tmp_path / "old.ckpt", net, {"_target_": "oad.models.oadtr_sw.OadTRSW", "in_dim": IN_DIM,
                                              "num_classes": 22, **SIZES}, {"ignore_index": 21})
    loaded, _ = load_network(tmp_path / "old.ckpt")
    x = torch.randn(30, IN_DIM, generator=torch.Generator().manual_seed(18))
    assert loaded.long_memory == 0
    assert_close(loaded.forward_video(x)[0], net.forward_video(x)[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padding_is_invisible_and_start_scores_the_tail(variant):
    net = small(9, **VARIANTS[variant])
    gen = torch.Generator().manual_seed(10)
    short = torch.randn(2, 11, IN_DIM, generator=gen)
    padded = torch.cat([torch.randn(2, 7, IN_DIM, generator=gen) * 100, short], dim=1)  # garbage in the padding
    mask = torch.zeros(2, 18, dtype=torch.bool)
    mask[:, 7:] = True
    mask[1, 7] = False  # another history length in the same batch
    with torch.no_grad():
        a = net(padded, mask, start=7)
        b = net(short)
        c = net(short[1:, 1:])
    assert a[0].shape == (2, 11, 22) and a[1].shape == (2, 11, 4, 22)
    assert_close(a[0][0], b[0][0], atol=1e-5, rtol=1e-5)
    assert_close(a[1][0], b[1][0], atol=1e-5, rtol=1e-5)
    assert_close(a[0][1, 1:], c[0][0], atol=1e-5, rtol=1e-5)
    assert_close(a[1][1, 1:], c[1][0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(net(padded, mask)[0]).all()  # padded positions: finite, unused


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------


def make_videos(lengths, in_dim=IN_DIM, seed=0) -> list[Video]:
    rng = np.random.default_rng(seed)
    out = []
    for i, T in enumerate(lengths):
        feats = rng.normal(size=(T, in_dim)).astype(np.float32)
        feats[:, 0] = np.arange(T)  # the chunk index, to check the alignment
        lab = rng.integers(0, 22, size=T)
        out.append(Video(f"v{i}", (feats[:, :3], feats[:, 3:]), np.eye(22, dtype=np.float32)[lab]))
    return out


def test_sequences_carry_their_history_and_supervise_every_chunk_once():
    videos = make_videos([5, 37, 100])
    S, ctx, Q = 16, 21, 4
    ds = SequenceDataset(videos, S, ctx, Q, future_offset=1, seed=3)
    offsets = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        seen = {i: np.zeros(v.num_chunks, int) for i, v in enumerate(videos)}
        for i in range(len(ds)):
            item = ds[i]
            vi, end = int(item["video"]), int(item["end"])
            v = videos[vi]
            f, m = item["features"].numpy(), item["mask"].numpy()
            assert f.shape == (S + ctx, IN_DIM) and item["target"].shape == (S, 22)
            assert item["future_target"].shape == (S, Q, 22)
            t_all = np.arange(end - S - ctx, end)
            assert (m == (t_all >= 0)).all()
            assert (f[m, 0] == t_all[m]).all() and (f[~m] == 0).all()
            t_sup = t_all[ctx:]
            real = t_sup >= 0
            assert (item["target"].numpy()[real] == v.targets[t_sup[real]]).all()
            assert (item["target"].numpy()[~real] == 0).all()
            fut = item["future_target"].numpy()
            for j in range(Q):
                ok = real & (t_sup + 1 + j < v.num_chunks)
                assert (fut[ok, j] == v.targets[t_sup[ok] + 1 + j]).all()
                assert (fut[~ok, j] == 0).all()
            seen[vi][t_sup[real]] += 1
        for vi, count in seen.items():
            assert (count >= 1).all()  # every chunk once (the clipped last sequence may repeat some)
        offsets.append(tuple(int(ds.index[i, 1]) for i in range(len(ds))))
    assert offsets[0] != offsets[1]  # new random offsets every epoch
    # the samples function reads the model's config; defaults are the model's
    assert sequence_lengths({"window": 8, "num_layers": 2}) == (16, 21)
    d = dense_sequences(videos, {"window": 8, "num_layers": 2, "num_queries": 4, "future_offset": 1},
                        ignore_index=21, seed=0)
    assert (d.seq_len, d.context, d.num_queries) == (16, 21, 4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_gets_a_gradient_through_the_criterion(variant):
    torch.manual_seed(0)
    net = OadTRSW(in_dim=IN_DIM, window=WINDOW, d_model=32, num_heads=4, num_layers=2, mlp_dim=48, num_queries=4,
                  decoder_layers=2, decoder_heads=2, decoder_dim=16, decoder_ffn_dim=40, decoder_window=K,
                  **VARIANTS[variant]).train()
    videos = make_videos([30, 9, 60], seed=1)
    ds = dense_sequences(videos, {"window": WINDOW, "num_layers": 2, "num_queries": 4, "future_offset": 1,
                                  **VARIANTS[variant]}, ignore_index=21, seed=0)
    assert ds.context == net.context
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    assert not batch["mask"].all()  # padded histories are in the batch
    logits, future = net.training_logits(batch)
    assert logits.shape == batch["target"].shape and future.shape == batch["future_target"].shape
    terms = OadCriterion(ignore_index=21)(logits, future, batch["target"], batch["future_target"])
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_one_epoch_through_the_train_task(tmp_path):
    from oad.tasks import train

    cfg = compose_cfg("train", ["model=oadtr_sw", *TINY], tmp_path)
    assert cfg.model.window == 32 and cfg.data.batch_size == 8 and cfg.model.seq_len == 16
    result = train(cfg)
    mAP = result["metrics"]["headline"]["mAP"]
    assert math.isfinite(mAP) and 0.0 <= mAP <= 1.0


# ---------------------------------------------------------------------------------------------------
# Sizes and cost
# ---------------------------------------------------------------------------------------------------


PAPER_PARAMETERS = 46_796_332  # in_dim 3072, 22 classes, the defaults = configs/model/oadtr_sw.yaml
# (46,791,212 without the long memory: its LayerNorm and 3 token embeddings are 5,120 more)


def test_paper_parameter_count_and_config(tmp_path):
    with torch.device("meta"):
        net = OadTRSW(in_dim=3072, long_memory=2048)
        old = OadTRSW(in_dim=3072)  # the class default: no long memory, as checkpoints saved before it
    assert count_parameters(net) == PAPER_PARAMETERS and count_parameters(old) == 46_791_212
    assert (net.window, net.d_model, net.decoder_dim, net.decoder_window, net.num_queries) == (64, 1024, 512, 16, 8)
    assert (net.seq_len, net.context, net.long_memory) == (128, 2047, 2048)  # the long memory's 2047 chunks before
    cfg = compose_cfg("train", ["model=oadtr_sw", "size=paper"], tmp_path)
    kwargs = {k: v for k, v in cfg.model.items() if k != "_target_"}
    with torch.device("meta"):
        from_cfg = OadTRSW(in_dim=3072, num_classes=22, **kwargs)
    assert count_parameters(from_cfg) == PAPER_PARAMETERS
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4 and cfg.trainer.gradient_clip_val == 1.0
    assert cfg.data.batch_size * cfg.model.seq_len == 128  # OadTR's 128 supervised chunks per step


def step_flops(window: int, history: int | None = None, **kw) -> int:
    """FLOPs of one step (batch 1, after ``history`` chunks; default: every ring full) of the paper-size
    model, on the meta device."""
    meta = torch.device("meta")
    with meta:
        net = OadTRSW(in_dim=3072, window=window, **{"long_memory": 2048, **kw})  # the paper config's
    step = OadTRSWStep(net, meta, torch.float32)
    step.start(1)
    step.prime(torch.zeros(1, 2, 3072, device=meta))
    # (the biases and masks are all the count selects)
    step.count = 2 * max(window, net.long_memory) if history is None else history
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        step.step(torch.zeros(1, 3072, device=meta))
    return fc.get_total_flops()


def test_step_flops_are_10x_below_oadtr_and_almost_flat_in_the_window():
    meta = torch.device("meta")
    with meta:
        oadtr = OadTR(in_dim=3072).eval().requires_grad_(False)
    with FlopCounterMode(display=False) as fc:
        oadtr(torch.zeros(1, 64, 3072, device=meta))
    full = fc.get_total_flops()
    assert 4.9e9 < full < 5.0e9  # ~4.95 GFLOP: OadTR re-encodes its window at every chunk
    f64, f256, f1024 = step_flops(64), step_flops(256), step_flops(1024)
    # measured: 0.324 / 0.328 / 0.340 GFLOP with the long memory of 2048 chunks (15.3x below OadTR at L = 64;
    # +4.9% at L = 1024); without it 0.267 (18.5x below OadTR)
    assert full / f64 >= 10, (full, f64)
    assert f64 < f256 < f1024 < 1.25 * f64, (f64, f256, f1024)
    assert 0.31e9 < f64 < 0.34e9 and 0.26e9 < step_flops(64, long_memory=0) < 0.28e9
    # flat as the history grows: the same work after 1 chunk as after 2048 and 10,000 (every buffer full)
    assert step_flops(64, history=1) == step_flops(64, history=2048) == step_flops(64, history=10_000) == f64
    # the task token through the encoder layers: one more query row per layer and chunk
    e64, e1024 = (step_flops(w, readout="encoder", long_memory=0) for w in (64, 1024))
    assert 0.27e9 < e64 < 0.5e9 and e1024 < 1.25 * e64, (e64, e1024)


def test_alibi_slopes():
    assert alibi_slopes(8) == [2.0 ** -(i + 1) for i in range(8)]
    assert alibi_slopes(4) == [2.0 ** -(2 * (i + 1)) for i in range(4)]
    s = alibi_slopes(6)
    assert len(s) == 6 and s[:4] == alibi_slopes(4) and all(a > 0 for a in s)


def test_bf16_runs_and_agrees_with_fp32_on_the_top_class():
    torch.manual_seed(0)
    net = OadTRSW(in_dim=64, window=WINDOW, d_model=64, num_heads=4, num_layers=2, mlp_dim=64, num_queries=4,
                  decoder_layers=2, decoder_heads=2, decoder_dim=32, decoder_ffn_dim=64, decoder_window=K,
                  long_memory=2 * WINDOW).eval()
    feats = torch.randn(3, 3 * WINDOW, 64, generator=torch.Generator().manual_seed(7))
    fp32 = stream(OnlineDetector(net), feats)[0]
    bf16, future = stream(OnlineDetector(net, dtype=torch.bfloat16), feats)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all() and torch.isfinite(future).all()
    assert_close(bf16.sum(-1), torch.ones(bf16.shape[:2]), atol=1e-4, rtol=0)
    agree = (bf16.argmax(-1) == fp32.argmax(-1)).float().mean().item()
    assert agree > 0.9, agree
    assert all(p.dtype == torch.float32 for p in net.parameters())  # the model is left alone
