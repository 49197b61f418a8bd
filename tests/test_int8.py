"""int8 streaming (``OnlineDetector(dtype="int8")``, :mod:`oad.online.quantized`) and the int8 ONNX export.

Every registered model whose online step quantizes (its ``quantize``) is tested, on its shared tiny
instance (``oad.models.registry.tiny_model``: N(0, 0.3) weights, so that scores are peaked and vary from
chunk to chunk), within the bounds its class declares (``int8_tolerance``; probabilities, 22 classes):

- int8 step vs fp32 step, one stream of 30 chunks: ``max |p_int8 - p_fp32| <= int8_tolerance['fp32']``
  (TeSTra's is the widest: its running sums exponentiate the scores, so their noise is amplified) and the
  top class agrees on at least 90% of the chunks;
- int8 streaming vs the quantized copy's whole-video scoring (``forward_videos``): exactly equal where the
  offline path batches the products as the step does (TRN; OadTR/ChunkLinear scored one window at a time
  from chunks embedded one at a time) -- dynamic quantization gives an activation the scale of the whole
  tensor a product is called on, so scoring many windows in one batch (``forward_videos``) changes the
  scales; that is within ``int8_tolerance['offline']``;
- the int8 ONNX step (onnxruntime) vs the PyTorch int8 step and vs fp32: ``oad.export.INT8_TOLERANCE``.

No timing assertions (``tools/bench.py --int8`` times them).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from oad.export import INT8_TOLERANCE, check_int8_exported, export_network, step_module
from oad.models import registry
from oad.models.base import OnlineModel, class_probabilities, resolve, window_rows
from oad.online import OnlineDetector, OnlineStep
from oad.online.quantized import is_int8, is_quantized, pack_linear, quantize_linear

IN_DIM = 24
WINDOW = 8
IGNORE = 21

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def make(kind: str, seed: int = 0) -> torch.nn.Module:
    """The shared tiny instance of a registered model (``oad.models.registry.tiny_model``)."""
    return registry.tiny_model(kind, in_dim=IN_DIM, seed=seed)


def step_class(kind: str) -> type[OnlineStep]:
    return resolve(registry.get(kind).cls.online_step)


def tolerance(kind: str, against: str) -> float | None:
    """The model's bound on ``max |p_int8 - p|`` against ``fp32`` or ``offline`` (its ``int8_tolerance``)."""
    return registry.get(kind).cls.int8_tolerance[against]


def quantized_copy(kind: str, net: torch.nn.Module) -> torch.nn.Module:
    """The int8 copy the step of ``kind`` runs (its step class's ``quantize``)."""
    return step_class(kind).quantize(net)


# every registered model whose online step has an int8 path, and OadTR's plain step beside its fused one
INT8 = [name for name in registry.names() if step_class(name).quantize is not None]
CASES = [(name, {}) for name in INT8] + [("oadtr", {"fused": False})]
OFFLINE = [(name, {"fused": False} if name == "oadtr" else {}) for name in INT8
           if tolerance(name, "offline") is not None]


def features(T: int = 30, n: int | None = None, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*(() if n is None else (n,)), T, IN_DIM, generator=g)


def stream_all(det: OnlineDetector, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    outs = [det.step(feats[..., t, :]) for t in range(feats.shape[-2])]
    dim = 0 if feats.ndim == 2 else 1
    return torch.stack([o.scores for o in outs], dim), torch.stack([o.future_scores for o in outs], dim)


def test_every_int8_step_declares_its_bounds():
    assert {"oadtr", "trn", "linear", "miniroad", "lstr", "testra", "oadtr_sw"} <= set(INT8)
    for name in INT8:
        assert tolerance(name, "fp32") > 0, name


@pytest.mark.parametrize("kind, options", CASES, ids=[f"{k}-{'-'.join(map(str, o.items()))}" for k, o in CASES])
def test_int8_step_is_close_to_fp32(kind, options):
    net = make(kind)
    feats = features()
    det = OnlineDetector(net, dtype="int8", **options)
    assert det.precision == "int8" and det.dtype == torch.float32 and "int8" in det.implementation
    s8, f8 = stream_all(det, feats)
    s32, f32 = stream_all(OnlineDetector(net), feats)
    assert s8.dtype == torch.float32 and s8.shape == s32.shape and f8.shape == f32.shape
    assert (s8 - s32).abs().max() <= tolerance(kind, "fp32")
    if f8.numel():
        assert (f8 - f32).abs().max() <= tolerance(kind, "fp32")
    assert (s8.argmax(-1) == s32.argmax(-1)).float().mean() >= 0.9
    assert torch.all(s8[:, IGNORE] == 0)  # the ignore class is still left out of the softmax


def test_oadtr_fused_and_plain_int8_run_the_same_int8_weights():
    net = make("oadtr")
    q = quantize_linear(net)
    # pack_linear quantizes a weight as quantize_linear quantizes the layer: the same int8 rows and scales
    for lin, qlin in ((net.linear_encoding, q.linear_encoding), (net.decoder[1].conv1, q.decoder[1].conv1.linear)):
        w = lin.weight[..., 0] if lin.weight.dim() == 3 else lin.weight
        mine, _ = torch.ops.quantized.linear_unpack(pack_linear(w, lin.bias))
        theirs = qlin.weight()
        assert torch.equal(mine.int_repr(), theirs.int_repr())
        assert torch.equal(mine.q_per_channel_scales(), theirs.q_per_channel_scales())
    # rows of a fused weight keep their own per-channel quantization
    k, v = net.decoder[0].cross_attention.key_projection, net.decoder[0].cross_attention.value_projection
    fused, _ = torch.ops.quantized.linear_unpack(pack_linear(torch.cat((k.weight, v.weight))))
    alone, _ = torch.ops.quantized.linear_unpack(pack_linear(v.weight))
    assert torch.equal(fused.int_repr()[k.weight.shape[0]:], alone.int_repr())

    feats = features(n=2)
    fused_s, fused_f = stream_all(OnlineDetector(net, dtype="int8"), feats)
    plain_s, plain_f = stream_all(OnlineDetector(net, dtype="int8", fused=False), feats)
    # differences: the fused engine computes the first decoder layer's constant block in float32
    assert (fused_s - plain_s).abs().max() < 0.03 and (fused_f - plain_f).abs().max() < 0.03
    assert (fused_s.argmax(-1) == plain_s.argmax(-1)).float().mean() >= 0.9


@pytest.mark.parametrize("kind", ["oadtr", "linear"])
def test_int8_plain_window_step_equals_offline_scoring_batched_like_it(kind):
    """Each chunk embedded alone and each window scored alone (the products of the step): equal."""
    net = make(kind)
    q = quantize_linear(net)
    feats = features()
    T, L = feats.shape[0], q.window
    with torch.no_grad():
        e = torch.cat([q.embed(feats[t : t + 1]) for t in range(T)])  # (T, d), one chunk at a time
        e = torch.cat((e.new_zeros(L - 1, e.shape[1]), e))
        logits, future = [], []
        for t in range(T):
            rows, mask = window_rows(torch.tensor([t]), L)
            lg, fu = q.forward_embedded(e[rows], mask if t < L - 1 else None)
            logits.append(lg[0])
            future.append(fu[0])
    s, f = stream_all(OnlineDetector(net, dtype="int8", **({"fused": False} if kind == "oadtr" else {})), feats)
    assert_close(s, class_probabilities(torch.stack(logits), IGNORE), rtol=0, atol=1e-6)
    assert_close(f, class_probabilities(torch.stack(future), IGNORE), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind, options", OFFLINE)
def test_int8_streaming_matches_the_quantized_copys_forward_videos(kind, options):
    net = make(kind)
    feats = features()
    q = quantized_copy(kind, net)
    assert is_quantized(q) and not is_quantized(net)
    with torch.no_grad():
        logits, future = q.forward_videos([feats])[0]
    off_s, off_f = class_probabilities(logits, IGNORE), class_probabilities(future, IGNORE)
    s, f = stream_all(OnlineDetector(net, dtype="int8", **options), feats)
    # a bound of 0: forward_videos steps the same products as the stream (TRN), exactly equal
    tol = max(tolerance(kind, "offline"), 1e-6)
    assert (s - off_s).abs().max() <= tol
    if f.numel():
        assert (f - off_f).abs().max() <= tol
    assert (s.argmax(-1) == off_s.argmax(-1)).float().mean() >= 0.9


@pytest.mark.parametrize("kind", ["oadtr", "trn", "miniroad"])
def test_int8_streams_reset_and_prime(kind):
    """N streams at once, reset, and prime work in int8 (N streams at once are close to each alone, not
    equal: the activation scale of a product is that of all N rows)."""
    net = make(kind)
    feats = features(n=3)
    det = OnlineDetector(net, dtype=torch.qint8)
    together, _ = stream_all(det, feats)
    for i in range(3):
        det.reset()
        alone, _ = stream_all(det, feats[i])
        assert (alone - together[i]).abs().max() < tolerance(kind, "fp32")
    det.reset()
    det.prime(feats[:, :20])
    primed = det.step(feats[:, 20]).scores
    det.reset()
    stepped, _ = stream_all(det, feats[:, :21])
    assert (primed - stepped[:, -1]).abs().max() < tolerance(kind, "fp32")


def test_the_wrapped_model_is_left_alone():
    net = make("oadtr")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    OnlineDetector(net, dtype="int8")
    OnlineDetector(net, dtype="int8", fused=False)
    assert not is_quantized(net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


class NoInt8Step(OnlineStep):
    """A step that reads raw float weights and declares no int8 path."""

    def __init__(self, net, device, dtype):
        super().__init__(net, device, dtype)
        self.w = net.fc.weight.to(device=device, dtype=dtype)

    def start(self, n):
        pass

    def step(self, x):
        logits = x @ self.w.T
        return logits, logits.new_zeros(x.shape[0], 0, logits.shape[1])


class RawWeights(OnlineModel):
    online_step = "tests.test_int8:NoInt8Step"

    def __init__(self):
        super().__init__()
        self.in_dim, self.num_classes, self.num_queries = IN_DIM, 22, 0
        self.fc = torch.nn.Linear(IN_DIM, 22)


def test_refusals_are_clear():
    assert is_int8("int8") and is_int8(torch.qint8) and not is_int8(torch.float32) and not is_int8(torch.int8)
    with pytest.raises(ValueError, match=r"int8 is not supported for RawWeights: its online step NoInt8Step"):
        OnlineDetector(RawWeights(), dtype="int8")
    OnlineDetector(RawWeights())  # fp32 still runs
    with pytest.raises(ValueError, match=r"CPU only.*cuda"):
        OnlineDetector(make("oadtr"), dtype="int8", device="cuda")
    with pytest.raises(ValueError, match=r"CPU only.*cuda"):
        OnlineDetector(make("trn"), dtype=torch.qint8, device="cuda:0")
    with pytest.raises(ValueError, match="prepack"):
        OnlineDetector(make("oadtr"), dtype="int8", prepack=True)
    with pytest.raises(ValueError, match=r"bfloat16 or 'int8'"):
        OnlineDetector(make("linear"), dtype=torch.float16)
    with pytest.raises(ValueError, match=r"bfloat16 or 'int8'"):
        OnlineDetector(make("linear"), dtype=torch.int8)  # an integer dtype is not int8 quantization


# ---------------------------------------------------------------------------------------------------
# The int8 ONNX export
# ---------------------------------------------------------------------------------------------------


EXPORT_INT8 = [name for name in INT8 if registry.get(name).cls.export_step]


@pytest.fixture(scope="module")
def exported_int8(tmp_path_factory) -> dict:
    out = {}
    for kind in EXPORT_INT8:
        net = make(kind)
        d = tmp_path_factory.mktemp(f"{kind}_int8")
        manifest = export_network(net, d, ignore_index=IGNORE, precision="int8")
        out[kind] = (net, d, manifest)
    return out


@pytest.mark.parametrize("kind", EXPORT_INT8)
def test_int8_onnx_export_matches_the_pytorch_int8_step(exported_int8, kind):
    import onnxruntime as ort

    net, d, manifest = exported_int8[kind]
    assert (d / "step_int8.onnx").is_file() and (d / "step.onnx").is_file()
    on_disk = json.loads((d / "export.json").read_text())
    assert on_disk["precision"] == "int8" and on_disk["int8"]["onnx"] == "step_int8.onnx"
    check = on_disk["int8"]["check"]
    for key, tol in INT8_TOLERANCE.items():  # the exporter's own check
        assert check[key] <= tol, (key, check[key])
    assert max(manifest["max_abs_diff"].values()) < 1e-4  # the fp32 files as before

    # int8 weights in the file: MatMulInteger nodes, and (nearly) every fp32 matrix became an int8 one
    import onnx

    def matrix_elements(path, data_type):
        return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer
                   if t.data_type == data_type and len(t.dims) >= 2)

    model = onnx.load(str(d / "step_int8.onnx"))
    assert any(n.op_type == "MatMulInteger" for n in model.graph.node)
    fp32_matrices = matrix_elements(d / "step.onnx", onnx.TensorProto.FLOAT)
    assert matrix_elements(d / "step_int8.onnx", onnx.TensorProto.INT8) >= 0.8 * fp32_matrices
    assert matrix_elements(d / "step_int8.onnx", onnx.TensorProto.FLOAT) <= 0.2 * fp32_matrices

    # another input sequence, more streams, each runtime feeding its own state back
    step8 = step_module(quantized_copy(kind, net), IGNORE)
    again = check_int8_exported(step_module(net, IGNORE), step8, d / "step_int8.onnx", steps=2 * WINDOW + 1,
                                num_streams=4, seed=3)
    for key, tol in INT8_TOLERANCE.items():
        assert again[key] <= tol, (key, again[key])
    assert again["same_top_class_onnx_int8_vs_pytorch_int8"] >= 0.85

    # the int8 file takes the fp32 file's inputs and outputs
    sess = ort.InferenceSession(str(d / "step_int8.onnx"), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(d / "step.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [i.name for i in ref.get_inputs()]
    assert [o.name for o in sess.get_outputs()] == [o.name for o in ref.get_outputs()]
    inputs = {i.name: np.zeros([1 if s == "N" or not isinstance(s, int) else s for s in i.shape],
                               np.int64 if "int64" in i.type else np.float32) for i in sess.get_inputs()}
    scores = sess.run(None, inputs)[0]
    assert scores.shape == (1, net.num_classes) and np.allclose(scores.sum(-1), 1, atol=1e-5)


def test_export_precision_is_checked(tmp_path):
    with pytest.raises(ValueError, match="precision"):
        export_network(make("trn"), tmp_path, precision="int4")


def test_int8_bench_table_structure():
    """``tools/bench.py --int8`` logic (oad.bench.int8) on a tiny OadTR: every configuration at every N."""
    from oad.bench import int8

    r = int8.run(streams=(1, 2), reps=2, in_dim=IN_DIM, log=lambda s: None,
                 model_kwargs={"window": WINDOW, "d_model": 32, "num_heads": 4, "num_layers": 1, "mlp_dim": 48,
                               "num_queries": 2, "decoder_layers": 2, "decoder_heads": 2, "decoder_ffn_dim": 40})
    assert {(row["config"], row["streams"]) for row in r["rows"]} == {(c, n) for c in int8.CONFIGS for n in (1, 2)}
    assert all(row["median_ms"] > 0 for row in r["rows"]) and not r["errors"]
    assert set(r["speedups"]["1"]) == {"int8_vs_fp32", "int8_vs_bf16", "int8_vs_int8 plain"}
    table = int8.format_table(r)
    assert "| int8 | 1 | fused int8 dynamic" in table and "int8 speedup, N=2" in table
    json.dumps(r, default=str)
