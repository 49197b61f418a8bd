"""Tests of ``oad.models.miniroad.MiniROAD``, its criterion and its online step: reference equivalence
(the ``miniroad_small.pt`` case of the reference ``MROAD``), paper sizes, gradients and streaming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from oad.losses import MiniROADCriterion
from oad.models.miniroad import MiniROAD
from oad.online.miniroad import MiniROADStep

REFERENCE_CASE = Path(__file__).parent / "fixtures" / "reference_cases" / "miniroad_small.pt"

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def case() -> dict:
    return torch.load(REFERENCE_CASE, weights_only=False)


def _reference_model(case: dict, **overrides) -> MiniROAD:
    cfg = case["config"]
    return MiniROAD.from_reference(case["state_dict"], window=cfg["window_size"], **overrides).eval()


def test_from_reference_reads_sizes_off_the_weights(case):
    cfg = case["config"]
    model = _reference_model(case)
    assert model.in_dim == cfg["input_dim"] == cfg["rgb_dim"] + cfg["flow_dim"]
    assert model.embedding_dim == cfg["embedding_dim"]
    assert model.hidden_dim == cfg["hidden_dim"]
    assert model.num_layers == cfg["num_layers"]
    assert model.num_classes == cfg["num_classes"]
    assert model.window == cfg["window_size"]
    assert model.num_queries == 0 and model.future_offset == 1
    assert MiniROAD.online_step == "oad.online.miniroad:MiniROADStep"


def test_from_reference_reproduces_eval_scores(case):
    model = _reference_model(case)
    with torch.no_grad():
        logits = model.forward_dense(case["input"])
    assert logits.shape == case["outputs"]["logits"].shape
    # Our eval mode returns raw logits (the reference returns their softmax: its quirk 5).
    assert not torch.allclose(logits, case["outputs"]["logits"], atol=1e-2)
    torch.testing.assert_close(torch.softmax(logits, dim=-1), case["outputs"]["logits"], **TOL)


def test_train_mode_logits_match_reference(case):
    # train_logits: the reference's train-mode branch with dropout off.
    model = _reference_model(case, dropout=0.0).train()
    with torch.no_grad():
        logits = model.forward_dense(case["input"])
    torch.testing.assert_close(logits, case["train_logits"], **TOL)
    last, future = model(case["input"])
    torch.testing.assert_close(last, case["train_logits"][:, -1], **TOL)
    assert future.shape == (3, 0, case["config"]["num_classes"])


def test_from_reference_accepts_dataparallel_prefix_and_is_strict(case):
    prefixed = {f"module.{k}": v for k, v in case["state_dict"].items()}
    model = MiniROAD.from_reference(prefixed)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, case["state_dict"][name], atol=0, rtol=0)
    state = dict(case["state_dict"])
    state.pop("f_classification.0.bias")
    with pytest.raises(RuntimeError):
        MiniROAD.from_reference(state)


def test_criterion_matches_reference_loss(case):
    crit = MiniROADCriterion()
    assert crit.weight_dict == {"current": 1.0}
    logits, target = case["train_logits"], case["target"]
    future = logits.new_zeros(3, 0, 22)
    terms = crit(logits, future, target, future)
    torch.testing.assert_close(terms["loss"], case["loss"], **TOL)
    torch.testing.assert_close(terms["current"], case["loss"], **TOL)
    torch.testing.assert_close(crit.per_sample(logits, target), case["loss_per_sample"], **TOL)
    # (B, C) inputs (the model's last step) give the same loss.
    terms_last = crit(logits[:, -1], future, target[:, -1], future)
    torch.testing.assert_close(terms_last["loss"], case["loss"], **TOL)


def test_criterion_l2_normalises_multi_label_rows():
    crit = MiniROADCriterion()
    logits = torch.randn(3, 5)
    target = torch.zeros(3, 5)
    target[0, 1] = 1.0  # one-hot: plain cross entropy
    target[1, [2, 4]] = 1.0  # two labels: each weighs 1/sqrt(2), not 1/2
    # row 2: all zero -> 0, still counted in the mean (nothing ignored)
    logp = torch.log_softmax(logits, dim=1)
    expected = torch.stack([-logp[0, 1], -(logp[1, 2] + logp[1, 4]) / 2**0.5, torch.tensor(0.0)])
    torch.testing.assert_close(crit.per_sample(logits, target), expected)
    torch.testing.assert_close(crit(logits, None, target, None)["loss"], expected.mean())


def test_stream_step_matches_reference_scores_and_state(case):
    model = _reference_model(case)
    x = case["input"]
    runner = MiniROADStep(model, torch.device("cpu"), torch.float32)
    runner.start(x.shape[0])
    scores = []
    with torch.inference_mode():
        for t in range(x.shape[1]):
            logits, future = runner.step(x[:, t])
            assert logits.shape == (3, 22) and future.shape == (3, 0, 22)
            scores.append(torch.softmax(logits, dim=-1))
    scores = torch.stack(scores, dim=1)  # T x (B, C) -> (B, T, C)
    torch.testing.assert_close(scores, case["stream_scores"], **TOL)
    torch.testing.assert_close(scores, case["outputs"]["logits"], **TOL)
    torch.testing.assert_close(runner.h, case["stream_h_n"], **TOL)

    # start() forgets the streams; prime() leaves the state stepping would.
    runner.start(3)
    assert not runner.h.any()
    with torch.inference_mode():
        runner.prime(x[:, :-1])
        logits, _ = runner.step(x[:, -1])
    torch.testing.assert_close(torch.softmax(logits, -1), case["outputs"]["logits"][:, -1], **TOL)
    torch.testing.assert_close(runner.h, case["stream_h_n"], **TOL)


def test_stream_step_copies_the_net(case):
    model = _reference_model(case)
    runner = MiniROADStep(model, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        model.f_classification[0].bias.add_(1.0)
    assert runner.net is not model and not runner.net.training
    assert not torch.equal(runner.net.f_classification[0].bias, model.f_classification[0].bias)


def test_model_step_and_forward_video_match_forward_dense(case):
    model = _reference_model(case)
    x = case["input"]
    with torch.no_grad():
        dense = model.forward_dense(x)
        h = model.init_state(3)
        assert h.shape == (1, 3, case["config"]["hidden_dim"]) and not h.any()
        for t in range(x.shape[1]):
            logits, h = model.step(x[:, t], h)
            torch.testing.assert_close(logits, dense[:, t], **TOL)
        torch.testing.assert_close(h, case["stream_h_n"], **TOL)
        # h0: continuing from the state after the first half equals the whole sequence.
        _, h_half = model.gru(model.layer1(x[:, :10]))
        torch.testing.assert_close(model.forward_dense(x[:, 10:], h_half), dense[:, 10:], **TOL)
        for b in range(x.shape[0]):
            logits, future = model.forward_video(x[b])
            assert future.shape == (x.shape[1], 0, 22)
            torch.testing.assert_close(logits, dense[b], **TOL)


def test_mask_is_ignored_and_zero_padding_matters(case):
    # The reference feeds its zero front padding through the network: the mask changes nothing, and
    # the zero rows change the state (layer1 maps zeros to a non-zero embedding).
    model = _reference_model(case)
    x = torch.cat((torch.zeros(3, 5, 64), case["input"]), dim=1)
    mask = torch.zeros(3, 25, dtype=torch.bool)
    mask[:, 5:] = True
    with torch.no_grad():
        with_mask, _ = model(x, mask)
        without, _ = model(x)
        unpadded, _ = model(case["input"])
    torch.testing.assert_close(with_mask, without, atol=0, rtol=0)
    assert not torch.allclose(with_mask, unpadded, atol=1e-4)


def test_parameter_count_at_paper_size():
    with torch.device("meta"):
        thumos = MiniROAD(in_dim=3072)
        tvseries = MiniROAD(in_dim=4096, num_classes=31)
    assert sum(p.numel() for p in thumos.parameters()) == 15_763_478
    assert sum(p.numel() for p in thumos.gru.parameters()) == 9_443_328
    assert sum(p.numel() for p in thumos.layer1.parameters()) == 6_293_504 + 4_096
    assert sum(p.numel() for p in tvseries.parameters()) == 17_869_855
    assert thumos.window == 128 and thumos.stride == 4


def test_shapes_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = MiniROAD(in_dim=12, num_classes=7, embedding_dim=10, hidden_dim=8, num_layers=2).train()
    x = torch.randn(4, 6, 12)
    logits, future = model(x)
    assert logits.shape == (4, 7) and future.shape == (4, 0, 7)
    assert model.forward_dense(x).shape == (4, 6, 7)
    target = nn.functional.one_hot(torch.randint(0, 7, (4,)), 7).float()
    loss = MiniROADCriterion()(logits, future, target, target.new_zeros(4, 0, 7))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_multi_layer_stream_step_matches_forward_dense():
    torch.manual_seed(1)
    model = MiniROAD(in_dim=12, num_classes=7, embedding_dim=10, hidden_dim=8, num_layers=2).eval()
    x = torch.randn(2, 9, 12)
    with torch.no_grad():
        dense = model.forward_dense(x)
    assert torch.isfinite(dense).all()
    runner = MiniROADStep(model, torch.device("cpu"), torch.float32)
    runner.start(2)
    with torch.inference_mode():
        steps = torch.stack([runner.step(x[:, t])[0] for t in range(9)], dim=1)  # (N, T, C)
    torch.testing.assert_close(steps, dense, **TOL)
    assert runner.h.shape == (2, 2, 8)
