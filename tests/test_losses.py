"""The reference criterion against a hand-computed case."""

from __future__ import annotations

import math

import torch

from oad.losses import OadCriterion, soft_cross_entropy


def test_soft_cross_entropy_hand_computed():
    # 4 classes, class 3 is ignored. Row 0: target class 1; row 1: Ambiguous (excluded);
    # row 2: no label (excluded); row 3: soft target 0.5/0.5 on classes 0 and 2.
    logits = torch.tensor([[1.0, 2.0, 0.0, 50.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 1.0, 0.0], [0.0, 1.0, 2.0, -9.0]])
    target = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0.5, 0, 0.5, 0]], dtype=torch.float32)
    # log-softmax over columns 0..2 only (the ignored column's logit of 50 must not matter)
    z0 = math.log(math.exp(1) + math.exp(2) + math.exp(0))
    row0 = -(2 - z0)
    z3 = math.log(1 + math.e + math.exp(2))
    row3 = -(0.5 * (0 - z3) + 0.5 * (2 - z3))
    expected = (row0 + row3) / 2
    got = soft_cross_entropy(logits, target, ignore_index=3)
    assert abs(got.item() - expected) < 1e-6


def test_no_ignore_index_uses_all_columns():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    target = torch.tensor([[0.0, 0.0, 1.0]])
    expected = -(2 - math.log(1 + math.e + math.exp(2)))
    assert abs(soft_cross_entropy(logits, target, None).item() - expected) < 1e-6


def test_criterion_weights_and_terms():
    torch.manual_seed(0)
    crit = OadCriterion(current_weight=1.0, future_weight=0.5, ignore_index=21)
    logits, future = torch.randn(4, 22, requires_grad=True), torch.randn(4, 8, 22)
    target = torch.eye(22)[torch.tensor([0, 3, 21, 5])]
    fut_t = torch.eye(22)[torch.randint(0, 21, (4, 8))]
    terms = crit(logits, future, target, fut_t)
    assert set(terms) == {"current", "future", "loss"}
    torch.testing.assert_close(terms["loss"], terms["current"] + 0.5 * terms["future"])
    torch.testing.assert_close(terms["current"], soft_cross_entropy(logits[[0, 1, 3]], target[[0, 1, 3]], 21))
    terms["loss"].backward()
    assert logits.grad[2].abs().sum() == 0  # the Ambiguous sample contributes nothing


def test_all_rows_invalid_gives_zero_not_nan():
    logits = torch.randn(2, 22, requires_grad=True)
    target = torch.zeros(2, 22)
    target[:, 21] = 1
    loss = soft_cross_entropy(logits, target, 21)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_ambiguous_rule_for_soft_and_multi_label_rows():
    """Left out exactly when the Ambiguous entry is 1 (the reference's rule), whatever the other entries."""
    logits = torch.randn(4, 4, requires_grad=True)
    target = torch.tensor(
        [
            [0.0, 1.0, 0.0, 0.0],  # plain label: kept
            [0.0, 1.0, 0.0, 1.0],  # multi-label with Ambiguous 1: left out
            [0.0, 0.5, 0.0, 0.5],  # soft, Ambiguous 0.5: kept (mass 0.5 on class 1)
            [0.0, 0.0, 0.0, 1.0],  # Ambiguous: left out
        ]
    )
    got = soft_cross_entropy(logits, target, ignore_index=3)
    logp = torch.log_softmax(logits[:, :3], dim=1)
    expected = (-logp[0, 1] - 0.5 * logp[2, 1]) / 2
    torch.testing.assert_close(got, expected)
    got.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[3].abs().sum() == 0
    assert logits.grad[2].abs().sum() > 0
