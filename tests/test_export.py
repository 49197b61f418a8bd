"""Exported step models: TorchScript and ONNX reproduce the PyTorch step over consecutive steps (the
first ``L - 1`` with a partial window included), and the step reproduces the offline online scores."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from oad.checkpoint import save_network
from oad.export import export_checkpoint, export_network, step_module
from oad.online.oadtr import OadTRExportStep as OadTRStep
from oad.online.recurrent import TRNExportStep as TRNStep
from oad.tasks.scoring import class_probabilities, score_videos
from oad.models.oadtr import OadTR
from oad.models.trn import TRN

IGNORE = 5
WINDOW = 4
OADTR = dict(in_dim=24, num_classes=6, window=WINDOW, d_model=32, num_heads=4, num_layers=2, mlp_dim=48,
             num_queries=3, decoder_layers=2, decoder_heads=4, decoder_ffn_dim=48)
TRN_CFG = dict(in_dim=24, num_classes=6, window=WINDOW, hidden_dim=32, num_queries=3)


def make_net(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = OadTR(**OADTR) if name == "oadtr" else TRN(**TRN_CFG)
    with torch.no_grad():  # TRN's N(0, 0.001) init gives near-uniform scores: make the outputs differ
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Each model exported once: OadTR through a checkpoint file (the tool's path), TRN directly."""
    out = {}
    for name in ("oadtr", "trn"):
        net = make_net(name)
        d = tmp_path_factory.mktemp(name)
        if name == "oadtr":
            ckpt = d / "model.ckpt"
            save_network(ckpt, net, {"_target_": "oad.models.oadtr.OadTR", **OADTR},
                         {"ignore_index": IGNORE, "class_names": list("abcdef")})
            manifest = export_checkpoint(ckpt, d / "export")
        else:
            manifest = export_network(net, d / "export", ignore_index=IGNORE)
        out[name] = (net, d / "export", manifest)
    return out


def run_steps(run, first_inputs, xs, is_oadtr):
    """Step ``run`` over the chunks ``xs``, feeding its own state back; returns the outputs of each step."""
    inputs, outs = first_inputs, []
    for t in range(len(xs)):
        out = tuple(run(inputs))
        outs.append(out)
        if t + 1 < len(xs):
            state = out[2:]
            inputs = (*state, xs[t + 1]) if is_oadtr else (xs[t + 1], *state)
    return outs


def first_inputs(step, x):
    state = step.init_state(x.shape[0])
    return (*state, x) if isinstance(step, OadTRStep) else (x, *state)


@pytest.mark.parametrize("name", ["oadtr", "trn"])
@pytest.mark.parametrize("streams", [1, 3])
def test_exported_step_matches_pytorch(exported, name, streams):
    net, d, manifest = exported[name]
    assert (d / "step.pt").is_file() and (d / "step.onnx").is_file()
    assert json.loads((d / "export.json").read_text())["model"] == type(net).__name__
    assert max(manifest["max_abs_diff"].values()) < 1e-4  # the exporter's own check

    step = step_module(net, IGNORE)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(streams, net.in_dim, generator=g) for _ in range(2 * WINDOW + 1)]
    init = first_inputs(step, xs[0])
    is_oadtr = isinstance(step, OadTRStep)
    with torch.no_grad():
        ref = run_steps(lambda inp: step(*inp), init, xs, is_oadtr)
        ts = torch.jit.load(str(d / "step.pt"))
        got_ts = run_steps(lambda inp: ts(*inp), init, xs, is_oadtr)
    sess = ort.InferenceSession(str(d / "step.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == list(step.input_names)
    got_onnx = run_steps(
        lambda inp: [torch.from_numpy(np.asarray(o)) for o in sess.run(None, {n: t.numpy() for n, t in zip(names, inp)})],
        init, xs, is_oadtr)

    for t, (r, a, b) in enumerate(zip(ref, got_ts, got_onnx)):
        for i, (rr, aa, bb) in enumerate(zip(r, a, b)):
            msg = f"step {t} output {step.output_names[i]}"
            torch.testing.assert_close(aa, rr, atol=1e-4, rtol=0, msg=msg)
            torch.testing.assert_close(bb.to(rr.dtype), rr, atol=1e-4, rtol=0, msg=msg)
    # the scores change from step to step (a constant output would pass the comparison trivially)
    assert not torch.allclose(ref[0][0], ref[-1][0], atol=1e-3)


@pytest.mark.parametrize("name", ["oadtr", "trn"])
def test_step_reproduces_the_offline_online_scores(name):
    net = make_net(name)
    step = step_module(net, IGNORE)
    T = 2 * WINDOW + 3
    feats = torch.randn(T, net.in_dim, generator=torch.Generator().manual_seed(2))
    (logits, future), = score_videos(net, [feats])
    want = class_probabilities(logits, IGNORE)
    want_future = class_probabilities(future, IGNORE)
    xs = [feats[t : t + 1] for t in range(T)]
    with torch.no_grad():
        outs = run_steps(lambda inp: step(*inp), first_inputs(step, xs[0]), xs, isinstance(step, OadTRStep))
    got = torch.cat([o[0] for o in outs])
    got_future = torch.cat([o[1] for o in outs])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_future, want_future, atol=1e-5, rtol=1e-5)
    assert torch.all(got[:, IGNORE] == 0)


def test_step_module_rejects_other_models():
    from oad.models.linear import ChunkLinear

    with pytest.raises(TypeError, match="no exportable step"):
        step_module(ChunkLinear(in_dim=4, num_classes=3, window=1, num_queries=2))
    assert isinstance(step_module(make_net("trn"), IGNORE), TRNStep)
    with pytest.raises(ValueError, match="ignore_index 21"):
        step_module(make_net("trn"), 21)
