"""Exported step models: TorchScript and ONNX reproduce the PyTorch step over consecutive steps (the
first ``L - 1`` with a partial window included), and the step reproduces the offline online scores."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from oad.checkpoint import save_network
from oad.export import export_checkpoint, step_module
from oad.models import registry
from oad.models.base import OnlineModel
from oad.models.oadtr_sw import OadTRSW
from oad.online.recurrent import TRNExportStep
from oad.tasks.scoring import class_probabilities, score_videos

IGNORE = 5
NUM_CLASSES = 6
IN_DIM = 24
STEPS = 17  # more than twice the tiny window models' windows: partial windows, then full ones
EXPORTABLE = [name for name in registry.names() if registry.get(name).cls.export_step]


def make_net(name: str) -> torch.nn.Module:
    return registry.tiny_model(name, in_dim=IN_DIM, num_classes=NUM_CLASSES)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Every exportable model exported once, through a checkpoint file as tools/export.py does it."""
    out = {}
    for name in EXPORTABLE:
        net = make_net(name)
        d = tmp_path_factory.mktemp(name)
        config = {"_target_": registry.get(name).target, "in_dim": IN_DIM, "num_classes": NUM_CLASSES,
                  **type(net).tiny}
        save_network(d / "model.ckpt", net, config, {"ignore_index": IGNORE, "class_names": list("abcdef")})
        out[name] = (net, d / "export", export_checkpoint(d / "model.ckpt", d / "export"))
    return out


def run_steps(run, step, xs):
    """Step ``run`` over the chunks ``xs`` from the initial state, feeding its own state back; returns the
    outputs of each step."""
    state, outs = step.init_state(xs[0].shape[0]), []
    for x in xs:
        out = tuple(run(step.arrange(state, x)))
        outs.append(out)
        state = out[2:]
    return outs


@pytest.mark.parametrize("streams", [1, 3])
@pytest.mark.parametrize("name", EXPORTABLE)
def test_exported_step_matches_pytorch(exported, name, streams):
    net, d, manifest = exported[name]
    assert (d / "step.pt").is_file() and (d / "step.onnx").is_file()
    assert json.loads((d / "export.json").read_text())["model"] == type(net).__name__
    assert max(manifest["max_abs_diff"].values()) < 1e-4  # the exporter's own check

    step = step_module(net, IGNORE)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(streams, net.in_dim, generator=g) for _ in range(STEPS)]
    with torch.no_grad():
        ref = run_steps(lambda inp: step(*inp), step, xs)
        ts = torch.jit.load(str(d / "step.pt"))
        got_ts = run_steps(lambda inp: ts(*inp), step, xs)
    sess = ort.InferenceSession(str(d / "step.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == list(step.input_names)
    got_onnx = run_steps(
        lambda inp: [torch.from_numpy(np.asarray(o)) for o in sess.run(None, {n: t.numpy() for n, t in zip(names, inp)})],
        step, xs)

    for t, (r, a, b) in enumerate(zip(ref, got_ts, got_onnx)):
        for i, (rr, aa, bb) in enumerate(zip(r, a, b)):
            msg = f"step {t} output {step.output_names[i]}"
            torch.testing.assert_close(aa, rr, atol=1e-4, rtol=0, msg=msg)
            torch.testing.assert_close(bb.to(rr.dtype), rr, atol=1e-4, rtol=0, msg=msg)
    # the scores change from step to step (a constant output would pass the comparison trivially)
    assert not torch.allclose(ref[0][0], ref[-1][0], atol=1e-3)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_step_reproduces_the_offline_online_scores(name):
    net = make_net(name)
    step = step_module(net, IGNORE)
    feats = torch.randn(STEPS + 2, net.in_dim, generator=torch.Generator().manual_seed(2))
    (logits, future), = score_videos(net, [feats])
    want = class_probabilities(logits, IGNORE)
    want_future = class_probabilities(future, IGNORE)
    with torch.no_grad():
        outs = run_steps(lambda inp: step(*inp), step, [f[None] for f in feats])
    got = torch.cat([o[0] for o in outs])
    got_future = torch.cat([o[1] for o in outs])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_future, want_future, atol=1e-5, rtol=1e-5)
    assert torch.all(got[:, IGNORE] == 0)


class NoExport(OnlineModel):
    online_step = "oad.online.window:WindowStep"

    def __init__(self):
        super().__init__()
        self.in_dim, self.num_classes, self.num_queries = 4, 3, 0


def test_step_module_rejects_other_models():
    assert {"oadtr", "trn", "linear", "oadtr_sw"} <= set(EXPORTABLE)
    with pytest.raises(TypeError, match="readout='cross' only"):
        step_module(OadTRSW(in_dim=IN_DIM, num_classes=NUM_CLASSES, **{**OadTRSW.tiny, "readout": "encoder",
                                                                      "long_memory": 0}), IGNORE)
    with pytest.raises(TypeError, match="no exportable step"):
        step_module(NoExport())
    assert isinstance(step_module(make_net("trn"), IGNORE), TRNExportStep)
    with pytest.raises(ValueError, match="ignore_index 21"):
        step_module(make_net("trn"), 21)
