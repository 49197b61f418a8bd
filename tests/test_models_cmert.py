"""CMeRT: parity with the reference (tests/fixtures/reference_cases/cmert_small.pt): its forward, its test
sampler and batch inference's row rule; causality of the whole-video scores; ``from_reference`` with a
config file in the reference schema; the paper-size parameter count; gradients and the criterion; the
exact online step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from oad.losses import CMeRTCriterion, multi_cross_entropy
from oad.models.cmert import CMeRT
from oad.online.cmert import CMeRTStep

CASES = Path(__file__).parent / "fixtures" / "reference_cases"
TOL = {"atol": 1e-5, "rtol": 1e-5}
W, K, A = 8, 2, 4  # the case's work window, context chunks, anticipation queries

# The THUMOS configuration in the reference's schema (configs/THUMOS/cmert_long256_work4_kinetics_1x.yaml:
# the keys this implementation reads; DATA.FPS and NUM_CLASSES come from its data_info.json there)
PAPER_YAML = """\
DATA: {DATA_NAME: THUMOS}
MODEL:
  MODEL_NAME: CMeRT
  FEATURE_HEAD: {LINEAR_ENABLED: true, LINEAR_OUT_FEATURES: 1024}
  LSTR:
    NUM_HEADS: 8
    DIM_FEEDFORWARD: 1024
    DROPOUT: 0.0
    ACTIVATION: relu
    LONG_MEMORY_SECONDS: 256
    LONG_MEMORY_SAMPLE_RATE: 4
    LONG_MEMORY_USE_PE: false
    LONG_MEMORY_INCLUDE_WORK: true
    WORK_MEMORY_SECONDS: 4
    WORK_MEMORY_SAMPLE_RATE: 1
    CONTEXT_SECONDS: 0.5
    CONTEXT_MEMORY_SAMPLE_RATE: 1
    FUTURE_SECONDS: 12
    FUTURE_SAMPLE_RATE: 1
    ANTICIPATION_SECONDS: 2
    REFINE_TIMES: 1
    ENC_MODULE: [[16, 1, true], [32, 2, true]]
    DEC_MODULE: [-1, 2, true]
    GEN_MODULE: [32, 2, true]
    FUT_MODULE: [[48, 1, true]]
"""

# small tensors, many steps: one thread (a second one only adds synchronisation)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def case() -> dict:
    return torch.load(CASES / "cmert_small.pt", weights_only=False)


@pytest.fixture(scope="module")
def model(case, tmp_path_factory) -> CMeRT:
    path = tmp_path_factory.mktemp("cmert") / "small.yaml"
    path.write_text(case["config"]["yaml"])  # the case's own config, in the reference schema
    return CMeRT.from_reference(case["state_dict"], config_file=path).eval()


def case_video(case) -> torch.Tensor:
    return torch.cat([case["video"]["visual"], case["video"]["motion"]], dim=-1)  # (300, 64)


def reference_rows(case) -> torch.Tensor:
    """The reference batch inference's per-chunk logits: window 0's rows 0..W-1, then row W-1 of window
    ws for chunk ws + W - 1 (main.py's test branch)."""
    win = case["video"]["window_logits"]  # (293, W + A, 22)
    return torch.cat([win[0, :W], win[1:, W - 1]])


def test_config_file_and_sizes(model):
    assert (model.num_long, model.long_stride, model.work_memory, model.context) == (32, 4, 8, 2)
    assert (model.num_queries, model.future, model.num_heads, model.visual_dim, model.in_dim) == (4, 24, 8, 40, 64)
    assert model.online_step == "oad.online.cmert:CMeRTStep" and model.future_offset == 1


def test_reference_forward(case, model):
    x = torch.cat([case["inputs"]["visual_inputs"], case["inputs"]["motion_inputs"]], dim=-1)  # (2, 42, 64)
    mask = case["inputs"]["memory_key_padding_mask"]
    with torch.no_grad():
        passes, future = model(x[:, :32], x[:, 32:], mask)
        passes_bool, _ = model(x[:, :32], x[:, 32:], mask == 0)
    ref = case["outputs"]
    assert passes.shape == (2, 2, W + A, 22) and future.shape == (2, 24, 22)
    for p in range(2):
        assert_close(passes[:, p], ref["work_scores"][p], **TOL)
    assert_close(future, ref["fut_scores"][0], **TOL)
    assert torch.equal(passes_bool, passes)


def test_long_memory_indices_are_the_reference_sampler(case, model):
    video = case["video"]
    idx, valid = model.long_memory_indices(torch.arange(video["window_logits"].shape[0]))
    assert torch.equal(idx, video["batch_long_indices"])
    assert torch.equal(valid, video["batch_memory_key_padding_mask"] == 0)
    # windows 5, 6, 7: chunk 0 is not on the sampling grid, and its padding slot stays unmasked
    assert valid[5].sum() == 2 and idx[5, -2:].tolist() == [0, 1]


def test_forward_video_is_the_reference_batch_inference(case, model):
    """Detection: the reference row rule (window 0 all rows, later windows the last). Anticipation of chunk
    t >= W - 1: the anticipation rows of window t - W + 1. Probabilities: main.py's softmax over 22 columns."""
    logits, future = model.forward_video(case_video(case))
    assert logits.shape == (300, 22) and future.shape == (300, A, 22)
    assert_close(logits, reference_rows(case), **TOL)
    assert_close(future[W - 1:], case["video"]["window_logits"][:, W:], **TOL)
    assert_close(torch.softmax(logits, dim=-1), case["video"]["scores"], **TOL)
    small_batches = model.forward_video(case_video(case), max_batch=7)
    assert_close(small_batches[0], logits, **TOL)
    assert_close(small_batches[1], future, **TOL)


def test_scores_are_causal(case, model):
    """Changing chunks after t moves no score of chunks <= t (detection and anticipation), in window 0
    (t < W - 1) as later."""
    video = case_video(case)[:80]
    logits, future = model.forward_video(video)
    g = torch.Generator().manual_seed(5)
    for t in (0, 3, W - 2, W - 1, 40):
        changed = video.clone()
        changed[t + 1:] = torch.randn(80 - t - 1, 64, generator=g)
        lg, fut = model.forward_video(changed)
        assert torch.equal(lg[:t + 1], logits[:t + 1]) and torch.equal(fut[:t + 1], future[:t + 1]), t
        assert (lg[t + 1:] - logits[t + 1:]).abs().max() > 1e-3


def test_short_video_is_a_right_padded_first_window(case, model):
    g = torch.Generator().manual_seed(3)
    video = torch.randn(6, 64, generator=g)
    padded = torch.cat([video[:1].expand(K, -1), video, 10 * torch.randn(2, 64, generator=g)])  # context, work
    idx, valid = model.long_memory_indices(torch.tensor([0]))
    with torch.no_grad():
        passes, _ = model(video[idx], padded[None], valid)
    assert_close(model.forward_video(video)[0], passes[0, -1, :6], **TOL)


def test_from_reference_defaults_and_overrides(case, tmp_path):
    """Without a config file: the THUMOS lengths (overridable); a config the implementation does not build
    is refused."""
    small = {"long_memory": 128, "work_memory": 8, "anticipation": 4}
    model = CMeRT.from_reference(case["state_dict"], **small)
    assert (model.num_long, model.context, model.num_heads) == (32, 2, 8)
    bad = tmp_path / "bad.yaml"
    bad.write_text(case["config"]["yaml"].replace("LONG_MEMORY_USE_PE: False", "LONG_MEMORY_USE_PE: True"))
    with pytest.raises(NotImplementedError, match="LONG_MEMORY_USE_PE"):
        CMeRT.from_reference(case["state_dict"], config_file=bad)
    bad.write_text(case["config"]["yaml"].replace("NUM_CLASSES: 22", "NUM_CLASSES: 31"))
    with pytest.raises(ValueError, match="NUM_CLASSES 31"):
        CMeRT.from_reference(case["state_dict"], config_file=bad)
    assert CMeRT.recognises_reference(set(case["state_dict"]))
    assert not CMeRT.recognises_reference(set(case["state_dict"]) | {"fut_fusions.0.norm.weight"})


def test_paper_parameter_count(tmp_path):
    """94,685,206 parameters at the THUMOS config (the reference code's count, and its training log's)."""
    path = tmp_path / "cmert_long256_work4_kinetics_1x.yaml"
    path.write_text(PAPER_YAML)
    with torch.device("meta"):
        model = CMeRT(in_dim=3072)
        paper = CMeRT(**CMeRT.reference_config(model.state_dict(), config_file=path))  # widths from tensors
    assert sum(p.numel() for p in model.parameters()) == 94_685_206
    assert sum(p.numel() for p in paper.parameters()) == 94_685_206
    assert (paper.num_long, paper.work_memory, paper.context, paper.num_queries, paper.future) == (256, 16, 2, 8, 48)
    assert paper.visual_dim == 2048 and paper.num_heads == 8


def test_criterion_weights_and_gradients(case, model):
    """0.1 x first pass + 1.0 x refined (work and anticipation rows) + 0.5 x future; every parameter
    learns except the final queries' rows after the first A (the reference builds F rows and uses A)."""
    torch.manual_seed(0)
    net = CMeRT.from_reference(case["state_dict"], long_memory=128, work_memory=8, anticipation=4).train()
    x = torch.cat([case["inputs"]["visual_inputs"], case["inputs"]["motion_inputs"]], dim=-1)
    g = torch.Generator().manual_seed(2)
    target = torch.zeros(2, W + A, 22).scatter_(-1, torch.randint(0, 22, (2, W + A, 1), generator=g), 1.0)
    future_target = torch.zeros(2, 24, 22).scatter_(-1, torch.randint(0, 22, (2, 24, 1), generator=g), 1.0)
    passes, future = net.training_logits({"long_features": x[:, :32], "features": x[:, 32:],
                                          "long_mask": case["inputs"]["memory_key_padding_mask"] == 0})
    terms = CMeRTCriterion(ignore_index=21)(passes, future, target, future_target)
    expected = (0.1 * multi_cross_entropy(passes[:, 0], target, 21) + multi_cross_entropy(passes[:, 1], target, 21)
                + 0.5 * multi_cross_entropy(future, future_target, 21))
    assert_close(terms["loss"], expected)
    terms["loss"].backward()
    for name, p in net.named_parameters():
        grad = p.grad[:A] if name == "final_query.weight" else p.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert net.final_query.weight.grad[A:].abs().sum() == 0  # built as the reference does, never used


def run_step(step, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stream ``videos (S, T, in_dim)`` chunk by chunk -> ``(S, T, C)`` logits, ``(S, T, A, C)`` future."""
    step.start(videos.shape[0])
    outs = [step.step(videos[:, t]) for t in range(videos.shape[1])]
    return torch.stack([o[0] for o in outs], dim=1), torch.stack([o[1] for o in outs], dim=1)


def test_step_on_the_case_video(case, model):
    logits, future = run_step(CMeRTStep(model, torch.device("cpu"), torch.float32), case_video(case)[None])
    assert_close(logits[0], reference_rows(case), **TOL)
    assert_close(future[0, W - 1:], case["video"]["window_logits"][:, W:], **TOL)


@pytest.mark.parametrize("T", [1, 5, 700], ids=["T1", "T5<W", "T700>5L"])
def test_step_equals_forward_video(model, T):
    """Three streams at once; 700 chunks: more than five long memories (128 chunks), so the ring of per-chunk
    terms wraps several times."""
    g = torch.Generator().manual_seed(T)
    videos = torch.randn(3, T, 64, generator=g)
    logits, future = run_step(CMeRTStep(model, torch.device("cpu"), torch.float32), videos)
    for s in range(3):
        ref = model.forward_video(videos[s])
        assert_close(logits[s], ref[0], **TOL)
        assert_close(future[s], ref[1], **TOL)


def test_training_samples_are_the_reference_data_layer(case, model):
    """The training item of window ws = 24 (the reference CMeRTBatchDataLayer's item 3): work targets,
    anticipation targets and future targets; the context chunks, clipped at chunk 0 for an early window."""
    import numpy as np

    from oad.data.base import Video
    from oad.data.samples import cmert_memory_windows

    video = case["video"]
    targets = np.zeros((300, 22), dtype=np.float32)
    targets[np.arange(300), np.arange(300) % 22] = 1  # the case video's targets
    v = Video("vid", (video["visual"].numpy(), video["motion"].numpy()), targets)
    config = {"work_memory": W, "long_memory": 128, "long_stride": 4, "context": K, "anticipation": A, "future": 24}
    data = cmert_memory_windows([v], config, ignore_index=21)
    item = data.item(v, 24 + W)
    ref = case["train_item"]
    assert torch.equal(item["target"], torch.cat([ref["target"], ref["ant_target"]]))
    assert torch.equal(item["future_target"], ref["future_target"])
    assert torch.equal(item["features"], case_video(case)[24 - K:24 + W])
    first = data.item(v, W)
    assert torch.equal(first["features"][:K + 1], case_video(case)[0].expand(K + 1, -1))
    assert first["long_mask"].sum() == 1  # all padding, the last chunk-0 slot unmasked
    ends = data.index[:, 1]
    assert ((ends - W) % W == (ends[0] - W) % W).all() and (ends + 2 * A < 300).all()
    assert ends.max() + W + 2 * A >= 300  # the last window the reference's bound allows
    with torch.no_grad():
        batch = torch.utils.data.default_collate([item, first])
        passes, future = model.training_logits(batch)
    assert passes.shape == (2, 2, W + A, 22) and future.shape == (2, 24, 22)


def test_converter_reads_a_reference_checkpoint(case, model, tmp_path):
    """``oad-convert``: a reference checkpoint (``model_state_dict``, DataParallel prefix) is recognised as
    CMeRT by its names, read with its config file, saved, and loads back to the same scores."""
    from oad.checkpoint import convert_reference_checkpoint, load_network

    src, dst = tmp_path / "epoch-9.pth", tmp_path / "cmert.ckpt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in case["state_dict"].items()}}, src)
    config = tmp_path / "small.yaml"
    config.write_text(case["config"]["yaml"])
    info = convert_reference_checkpoint(src, dst, config_file=str(config))
    assert info["model"] == "CMeRT" and info["net_config"]["work_memory"] == W
    net, _ = load_network(dst)
    video = case_video(case)[:60]
    assert_close(net.eval().forward_video(video)[0], model.forward_video(video)[0], rtol=0, atol=0)


def test_window_bound_video_trains_the_tail_of_every_video():
    """``window_bound="video"``: windows up to ``ws + W < T`` (LSTR's bound), anticipation rows past the end
    take the last chunk's target; a video too short for the reference's bound still gives a window."""
    import numpy as np

    from oad.data.base import Video
    from oad.data.samples import cmert_memory_windows

    T = 3 * W + 5  # W + 2A + 1 = 15 < T: both bounds give windows here
    targets = np.zeros((T, 22), dtype=np.float32)
    targets[np.arange(T), np.arange(T) % 21] = 1
    v = Video("vid", (np.random.default_rng(0).standard_normal((T, 6)).astype(np.float32),), targets)
    config = {"work_memory": W, "long_memory": 16, "long_stride": 4, "context": K, "anticipation": A, "future": 8}
    ref = cmert_memory_windows([v], config, ignore_index=21)
    video = cmert_memory_windows([v], {**config, "window_bound": "video"}, ignore_index=21)
    for rng_seed in range(5):  # every per-epoch offset
        rng = np.random.default_rng(rng_seed)
        s0 = np.random.default_rng(rng_seed).integers(0, W)
        r_ends, v_ends = ref.ends(v, np.random.default_rng(rng_seed)), video.ends(v, rng)
        assert (r_ends + 2 * A < T).all() and (v_ends < T).all()
        assert v_ends.max() + W >= T and set(r_ends) <= set(v_ends) and (v_ends - W)[0] == s0
    last = video.item(v, T - 1)  # the window ending at chunk T - 2: rows past the end are the last chunk's
    expect = targets[np.minimum(np.arange(T - 1 - W, T - 1 + A), T - 1)]
    assert torch.equal(last["target"], torch.from_numpy(expect))
    assert torch.equal(last["target"][-1], torch.from_numpy(targets[T - 1]))
    # a video of W + 2A chunks: nothing under the reference's bound, windows under the video bound
    short = Video("short", (v.streams[0][:W + 2 * A],), targets[:W + 2 * A])
    assert len(cmert_memory_windows([short], config, ignore_index=21)) == 0
    assert len(cmert_memory_windows([short], {**config, "window_bound": "video"}, ignore_index=21)) > 0
    with pytest.raises(ValueError, match="window_bound"):
        cmert_memory_windows([v], {**config, "window_bound": "nosuch"}, ignore_index=21)
