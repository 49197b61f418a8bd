"""LSTR: parity with the reference (tests/fixtures/reference_cases/lstr_small.pt), the batch-mode sampler,
whole-video scoring, the online step, parameter counts, gradients, and the MCE criterion."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from oad.losses import LSTRCriterion
from oad.models.lstr import LSTR
from oad.online.lstr import LSTRStep

CASES = Path(__file__).parent / "fixtures" / "reference_cases"
SMALL = {"num_heads": 4, "long_memory": 128, "long_stride": 4, "work_memory": 8}  # what the case's tensors don't say
TOL = {"atol": 1e-5, "rtol": 1e-5}

# small tensors, many steps: one thread (a second one only adds synchronisation)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def case() -> dict:
    return torch.load(CASES / "lstr_small.pt", weights_only=False)


@pytest.fixture(scope="module")
def model(case) -> LSTR:
    return LSTR.from_reference(case["state_dict"], **SMALL).eval()


def case_inputs(case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.cat([case["inputs"]["visual_inputs"], case["inputs"]["motion_inputs"]], dim=-1)  # (B, N + W, 64)
    return x[:, :32], x[:, 32:], case["inputs"]["memory_key_padding_mask"]


def case_video(case) -> torch.Tensor:
    video = case["sample_info"]["video"]
    return torch.cat([video["visual"], video["motion"]], dim=-1)  # (160, 64)


def run_step(step, videos: torch.Tensor) -> torch.Tensor:
    """Stream ``videos (S, T, in_dim)`` chunk by chunk -> ``(S, T, C)`` logits."""
    step.start(videos.shape[0])
    return torch.stack([step.step(videos[:, t])[0] for t in range(videos.shape[1])], dim=1)


def test_reference_logits(case, model):
    long_x, work_x, mask = case_inputs(case)
    with torch.no_grad():
        assert_close(model(long_x, work_x, mask), case["outputs"]["logits"], **TOL)
        assert_close(model(long_x, work_x, mask == 0), case["outputs"]["logits"], **TOL)  # bool: True = real
    assert model.num_queries == 0 and model.future_offset == 1 and model.num_classes == 22
    assert model.in_dim == 64 and model.online_step == "oad.online.lstr:LSTRStep"


def test_long_memory_indices_are_the_reference_sampler(case, model):
    idx, valid = model.long_memory_indices(case["sample_info"]["work_start"])
    assert torch.equal(idx, case["sample_info"]["long_indices"])
    assert torch.equal(valid, case["inputs"]["memory_key_padding_mask"] == 0)
    # anchored at chunk 0 until full: ws = 0 only chunk 0; ws = 5: chunks 0, 4; ws >= L: ws - L .. ws - 4
    idx, valid = model.long_memory_indices(torch.tensor([0, 5, 128, 131]))
    assert idx[0].tolist() == [0] * 32 and valid[0].tolist() == [False] * 31 + [True]
    assert idx[1, -2:].tolist() == [0, 4] and valid[1].sum() == 2
    assert idx[2].tolist() == list(range(0, 128, 4)) and valid[2].all()
    assert idx[3].tolist() == list(range(3, 131, 4)) and valid[3].all()


def test_forward_video_is_the_reference_batch_mode(case, model):
    video = case_video(case)
    logits, future = model.forward_video(video)
    assert logits.shape == (160, 22) and future.shape == (160, 0, 22)
    for b, ws in enumerate(case["sample_info"]["work_start"].tolist()):  # the case's two windows
        assert_close(logits[ws + 7], case["outputs"]["logits"][b, -1], **TOL)
    # every chunk: window ws = 0 scores chunks 0..W-1, window ws > 0 its last chunk, each a plain forward
    starts = torch.arange(0, 160 - 8 + 1)
    idx, valid = model.long_memory_indices(starts)
    with torch.no_grad():
        full = model(video[idx], video[starts[:, None] + torch.arange(8)], valid)
    assert_close(logits, torch.cat([full[0], full[1:, -1]]), **TOL)
    # windows batched in any grouping give the same scores
    assert_close(model.forward_video(video, max_batch=7)[0], logits, **TOL)


def test_short_video_is_a_right_padded_first_window(model):
    """T < W: the video is one shorter first window; the decoder is causal, so that equals the first T
    rows of the reference's first window on the video right-padded with anything."""
    g = torch.Generator().manual_seed(3)
    video = torch.randn(5, 64, generator=g)
    logits, _ = model.forward_video(video)
    padded = torch.cat([video, 10 * torch.randn(3, 64, generator=g)])  # (W, in_dim)
    idx, valid = model.long_memory_indices(torch.tensor([0]))
    with torch.no_grad():
        ref = model(padded[idx], padded[None], valid)[0, :5]
    assert_close(logits, ref, **TOL)


@pytest.mark.parametrize("T", [1, 5, 160, 400], ids=["T1", "T5<W", "T160", "T400>3L"])
def test_step_equals_forward_video(case, model, T):
    """Two streams at once; 400 chunks is three times the long memory (128), 5 fewer than W (8)."""
    g = torch.Generator().manual_seed(T)
    videos = torch.randn(2, T, 64, generator=g) if T != 160 else torch.stack([case_video(case)] * 2)
    if T == 160:
        videos[1] = videos[1].flip(0)
    step = LSTRStep(model, torch.device("cpu"), torch.float32)
    out = run_step(step, videos)
    ref = torch.stack([model.forward_video(v)[0] for v in videos])
    assert_close(out, ref, **TOL)
    # a restart forgets everything
    assert_close(run_step(step, videos[:1, : min(T, 9)]), ref[:1, : min(T, 9)], **TOL)


def test_paper_parameter_count():
    with torch.device("meta"):
        model = LSTR(in_dim=3072)
    assert sum(p.numel() for p in model.parameters()) == 58_882_070
    assert model.num_long == 512 and model.work_pe_offset == 512


def test_from_reference_strips_module_prefix(case):
    sd = {"module." + k: v for k, v in case["state_dict"].items()}
    model = LSTR.from_reference({"model_state_dict": sd}, **SMALL)
    assert model.enc_queries[0].weight.shape == (8, 64) and len(model.enc_modules[1].layers) == 2


def test_every_parameter_gets_a_gradient(case):
    torch.manual_seed(0)
    model = LSTR.from_reference(case["state_dict"], **SMALL).train()
    long_x, work_x, mask = case_inputs(case)
    target = torch.zeros(2, 8, 22)
    target[..., 3] = 1
    loss = LSTRCriterion(ignore_index=21)(model(long_x, work_x, mask), None, target, None)["loss"]
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_criterion_hand_computed():
    logits = torch.tensor([[[2.0, 0.0, -1.0, 5.0], [0.5, 1.5, 0.0, -3.0], [1.0, 1.0, 1.0, 1.0]]])  # (1, 3, 4)
    target = torch.tensor([[[1.0, 0, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 0, 1.0]]])  # last row: Ambiguous (3)
    out = LSTRCriterion(ignore_index=3)(logits, None, target, None)
    # softmax over columns 0..2 only; row 2 left out of the mean
    lse0 = math.log(math.exp(2.0) + 1 + math.exp(-1.0))
    lse1 = math.log(math.exp(0.5) + math.exp(1.5) + 1)
    expected = ((lse0 - 2.0) + 0.5 * (lse1 - 1.5) + 0.5 * (lse1 - 0.0)) / 2
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert out["current"].item() == pytest.approx(expected, rel=1e-6)
    assert LSTRCriterion().weight_dict == {"current": 1.0}
    # TVSeries: no ignore class, all columns and all rows
    out = LSTRCriterion(ignore_index=None)(logits[:, :2], None, target[:, :2], None)
    lse0 = math.log(math.exp(2.0) + 1 + math.exp(-1.0) + math.exp(5.0))
    lse1 = math.log(math.exp(0.5) + math.exp(1.5) + 1 + math.exp(-3.0))
    expected = ((lse0 - 2.0) + 0.5 * (lse1 - 1.5) + 0.5 * (lse1 - 0.0)) / 2
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_criterion_all_ambiguous_is_zero_with_a_gradient():
    logits = torch.randn(2, 4, 22, requires_grad=True)
    target = torch.zeros(2, 4, 22)
    target[..., 21] = 1
    loss = LSTRCriterion(ignore_index=21)(logits, None, target, None)["loss"]
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
