"""Tests of ``oad.models.trn.TRN``: reference equivalence, size, gradients, streaming and padding."""

from __future__ import annotations


import pytest
import torch
from torch import Tensor, nn

from oad.models.trn import TRN

from tests.conftest import fixture_file

SMALL = dict(in_dim=32, num_classes=22, window=8, hidden_dim=16, num_queries=4)


def _small_model(seed: int = 0, **kwargs) -> TRN:
    torch.manual_seed(seed)
    model = TRN(**{**SMALL, **kwargs})
    # Widen the reference N(0, 0.001) weights so that outputs depend visibly on the input and state.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def reference_case() -> dict:
    return torch.load(fixture_file("reference_cases", "trn_small.pt"), weights_only=False)


def test_class_attributes_and_window():
    assert TRN.samples == "oad.data.samples:dense_windows"
    assert TRN.future_offset == 0
    with torch.device("meta"):
        model = TRN(in_dim=8, hidden_dim=4, window=13, num_queries=3)
    assert model.window == 13
    assert model.num_queries == 3


def _reference_model(case: dict) -> TRN:
    cfg = case["config"]
    return TRN.from_reference(case["state_dict"], window=cfg["window"], num_queries=cfg["dec_steps"]).eval()


def test_from_reference_reads_sizes_off_the_weights(reference_case):
    cfg = reference_case["config"]
    model = _reference_model(reference_case)
    assert model.in_dim == cfg["rgb_dim"] + cfg["flow_dim"]
    assert model.hidden_dim == cfg["hidden"]
    assert model.num_classes == cfg["num_classes"]
    assert model.num_queries == cfg["dec_steps"]
    assert model.window == cfg["window"]


# The reference case is well conditioned (only the Linear weights widened, the orthogonal LSTM weights as
# the reference initialises them; float64 and float32 agree to 7e-7), so the whole 16-step sequence is
# compared at float32 1e-5 on any CPU, and in float64 too.
def test_from_reference_reproduces_reference_scores(reference_case):
    model = _reference_model(reference_case)
    x = reference_case["input"]
    with torch.no_grad():
        enc_logits, dec_logits = model.forward_dense(x)
        logits, future_logits = model(x)
    torch.testing.assert_close(logits, enc_logits[:, -1], atol=0, rtol=0)
    torch.testing.assert_close(future_logits, dec_logits[:, -1], atol=0, rtol=0)
    assert enc_logits.shape == reference_case["enc_scores"].shape
    assert dec_logits.shape == reference_case["dec_scores"].shape
    torch.testing.assert_close(enc_logits, reference_case["enc_scores"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dec_logits, reference_case["dec_scores"], atol=1e-5, rtol=1e-5)


def test_from_reference_reproduces_reference_scores_float64(reference_case):
    model = _reference_model(reference_case).double()
    with torch.no_grad():
        enc_logits, dec_logits = model.forward_dense(reference_case["input"].double())
    torch.testing.assert_close(enc_logits, reference_case["enc_scores"].double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dec_logits, reference_case["dec_scores"].double(), atol=1e-5, rtol=1e-5)


def test_from_reference_accepts_dataparallel_prefix(reference_case):
    prefixed = {f"module.{k}": v for k, v in reference_case["state_dict"].items()}
    model = TRN.from_reference(prefixed, num_queries=reference_case["config"]["dec_steps"])
    expected = _reference_model(reference_case).state_dict()
    assert model.state_dict().keys() == expected.keys()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0)


def test_from_reference_is_strict(reference_case):
    state = dict(reference_case["state_dict"])
    state.pop("classifier.bias")
    with pytest.raises(RuntimeError):
        TRN.from_reference(state, num_queries=reference_case["config"]["dec_steps"])


def test_parameter_count_at_paper_size():
    with torch.device("meta"):
        model = TRN(in_dim=3072, num_classes=22, hidden_dim=4096)
    assert sum(p.numel() for p in model.parameters()) == 357_828_630


def test_reference_initialisation():
    torch.manual_seed(0)
    model = TRN(in_dim=64, hidden_dim=64, num_classes=22)
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            assert 0.0005 < m.weight.std().item() < 0.002, name
            # Biases keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), far wider than 0.001.
            assert m.bias.abs().max().item() > 0.01, name


@pytest.mark.parametrize("num_queries", [1, 4])
def test_shapes_and_every_parameter_gets_a_gradient(num_queries):
    model = _small_model(num_queries=num_queries).train()
    torch.manual_seed(1)
    x = torch.randn(3, SMALL["window"], SMALL["in_dim"])
    enc_logits, dec_logits = model.forward_dense(x)
    assert enc_logits.shape == (3, SMALL["window"], SMALL["num_classes"])
    assert dec_logits.shape == (3, SMALL["window"], num_queries, SMALL["num_classes"])

    enc_target = torch.randint(0, SMALL["num_classes"], enc_logits.shape[:-1])
    dec_target = torch.randint(0, SMALL["num_classes"], dec_logits.shape[:-1])
    loss = nn.functional.cross_entropy(
        enc_logits.flatten(0, 1), enc_target.flatten()
    ) + nn.functional.cross_entropy(dec_logits.flatten(0, 2), dec_target.flatten())
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        if num_queries == 1 and (name.startswith("fusion_linear") or name == "dec_cell.weight_ih"):
            # With one decoder step its only input is the zero start, so the fed-back score embedding and
            # the decoder's input weights are unused, as in the reference.
            continue
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _step_loop_equals_forward_dense(model: TRN, x: Tensor) -> tuple[Tensor, Tensor]:
    """Runs ``model.step`` over ``x (B, T, D)``, asserts it equals ``forward_dense`` exactly, returns the latter."""
    with torch.no_grad():
        enc_logits, dec_logits = model.forward_dense(x)
        state = model.init_state(x.shape[0])
        for t in range(x.shape[1]):
            logits, future_logits, state = model.step(x[:, t], state)
            torch.testing.assert_close(logits, enc_logits[:, t], atol=0, rtol=0)
            torch.testing.assert_close(future_logits, dec_logits[:, t], atol=0, rtol=0)
    return enc_logits, dec_logits


def test_step_loop_equals_forward_dense():
    model = _small_model()
    torch.manual_seed(2)
    x = torch.randn(2, 6, SMALL["in_dim"])
    enc_logits, _ = _step_loop_equals_forward_dense(model, x)
    # The state carries information: the same chunk scores differently after a different history.
    with torch.no_grad():
        assert not torch.allclose(enc_logits[0, 1:], model.forward_dense(x[:1, 1:])[0][0], atol=1e-4)


def test_init_state_shapes():
    model = _small_model()
    h, c, future_input = model.init_state(5, dtype=torch.float64)
    assert h.shape == c.shape == (5, SMALL["hidden_dim"])
    assert future_input.shape == (5, SMALL["in_dim"])
    assert h.dtype == torch.float64
    assert not (h.any() or c.any() or future_input.any())


def test_left_padding_matches_unpadded_sequence():
    model = _small_model()
    torch.manual_seed(3)
    length = 8
    valid = [8, 5, 1]
    x = torch.randn(len(valid), length, SMALL["in_dim"]) * 3  # padded positions hold garbage on purpose
    mask = torch.zeros(len(valid), length, dtype=torch.bool)
    for b, n in enumerate(valid):
        mask[b, length - n :] = True
    with torch.no_grad():
        enc_logits, dec_logits = model.forward_dense(x, mask)
        logits, future_logits = model(x, mask)
        for b, n in enumerate(valid):
            ref_enc, ref_dec = model.forward_dense(x[b : b + 1, length - n :])
            torch.testing.assert_close(enc_logits[b : b + 1, length - n :], ref_enc)
            torch.testing.assert_close(dec_logits[b : b + 1, length - n :], ref_dec)
            torch.testing.assert_close(logits[b : b + 1], ref_enc[:, -1])
            torch.testing.assert_close(future_logits[b : b + 1], ref_dec[:, -1])
        # Without the mask the padding would change the outputs, so the check above means something.
        unmasked, _ = model.forward_dense(x)
        assert not torch.allclose(unmasked[1, -1], enc_logits[1, -1], atol=1e-4)


def test_init_option():
    torch.manual_seed(0)
    ref = TRN(in_dim=32, hidden_dim=16, window=8, init="reference")
    dflt = TRN(in_dim=32, hidden_dim=16, window=8, init="pytorch")
    assert ref.input_linear[0].weight.std() < 0.002
    assert dflt.input_linear[0].weight.std() > 0.05  # PyTorch's kaiming-uniform: ~1/sqrt(3*32)
    with pytest.raises(ValueError, match="init"):
        TRN(in_dim=32, hidden_dim=16, init="zeros")


def test_input_norm_option():
    """``input_norm=True``: Linear -> LayerNorm -> ReLU, every chunk's pre-activations centred, streamed exactly."""
    plain = _small_model()
    model = _small_model(input_norm=True)
    assert [type(m) for m in model.input_linear] == [nn.Linear, nn.LayerNorm, nn.ReLU]
    assert [type(m) for m in plain.input_linear] == [nn.Linear, nn.ReLU]
    torch.manual_seed(4)
    x = torch.rand(2, 6, SMALL["in_dim"]) + 5.0  # non-negative with a large common offset
    enc_logits, _ = _step_loop_equals_forward_dense(model, x)
    with torch.no_grad():
        pre = model.input_linear[:2](x)
        torch.testing.assert_close(pre.mean(-1), torch.zeros(2, 6), atol=1e-5, rtol=0)
        # Same Linear weights (same seed), so the LayerNorm alone changes the scores.
        assert not torch.allclose(enc_logits, plain.forward_dense(x)[0], atol=1e-3)
