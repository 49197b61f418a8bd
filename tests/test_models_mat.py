"""MAT: parity with the reference (tests/fixtures/reference_cases/mat_small.pt) under both grouping rules and
the reference batch inference's rows, causality of oad's own scoring, the online step, the paper-size
parameter count, and ``from_reference`` with a config file in the reference schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch.testing import assert_close

from oad.models.mat import MAT
from oad.online.mat import MATStep

CASES = Path(__file__).parent / "fixtures" / "reference_cases"
# what the case's tensors don't say (the config file says it too: test_from_reference_reads_a_config_file)
SMALL = {"num_heads": 4, "dropout": 0.0, "activation": "gelu", "long_memory": 128, "long_stride": 4,
         "work_memory": 8, "anticipation": 4, "groups": 4}
TOL = {"atol": 1e-5, "rtol": 1e-5}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def case() -> dict:
    return torch.load(CASES / "mat_small.pt", weights_only=False)


@pytest.fixture(scope="module")
def model(case) -> MAT:
    return MAT.from_reference(case["state_dict"], **SMALL).eval()


def case_inputs(case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.cat([case["inputs"]["visual_inputs"], case["inputs"]["motion_inputs"]], dim=-1)  # (4, N + W, 64)
    return x[:, :32], x[:, 32:], case["inputs"]["memory_key_padding_mask"]


def case_video(case) -> torch.Tensor:
    video = case["sample_info"]["video"]
    return torch.cat([video["visual"], video["motion"]], dim=-1)  # (200, 64)


def run_step(step, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stream ``videos (S, T, in_dim)`` chunk by chunk -> ``(S, T, C)`` logits, ``(S, T, A, C)`` futures."""
    step.start(videos.shape[0])
    out = [step.step(videos[:, t]) for t in range(videos.shape[1])]
    return torch.stack([o[0] for o in out], dim=1), torch.stack([o[1] for o in out], dim=1)


def assert_stages(out, work, future):
    assert len(out.work) == len(work) == 3 and len(out.future) == len(future) == 2
    for got, ref in zip(out.work + out.future, work + future):
        assert_close(got, ref, **TOL)


def test_reference_forward_batch_rule(case, model):
    """The reference's batch-wide rule: 19 padded slots in the batch, so no window is compressed in groups."""
    long_x, work_x, mask = case_inputs(case)
    model.grouping = "batch"
    try:
        with torch.no_grad():
            assert_stages(model(long_x, work_x, mask), case["outputs"]["work_logits"], case["outputs"]["future_logits"])
    finally:
        model.grouping = "sample"
    assert model.num_queries == 4 and model.future_offset == 1 and model.num_long == 32


def test_reference_forward_per_sample_rule_is_the_reference_at_batch_size_1(case, model):
    long_x, work_x, mask = case_inputs(case)
    with torch.no_grad():
        out = model(long_x, work_x, mask)
        assert_stages(out, case["outputs"]["single_work_logits"], case["outputs"]["single_future_logits"])
        assert_stages(model(long_x, work_x, mask == 0), case["outputs"]["single_work_logits"],
                      case["outputs"]["single_future_logits"])  # bool mask: True = real
        # per sample: a window's scores do not depend on its batch; under the reference's rule three of the
        # four windows (memory full or 2 padded slots) take the other path and move by O(0.1)
        assert model.grouped(mask == 0).tolist() == [True, False, True, True]
        for b in range(4):
            alone = model(long_x[b:b + 1], work_x[b:b + 1], mask[b:b + 1])
            assert_close(alone.work[-1][0], out.work[-1][b], **TOL)
        # the inference path: per-chunk keys and values, the learned queries' constant blocks
        keys, values = model.long_kv(model.feature_head_long(long_x))
        work = model.pos_encoding(model.feature_head_work(work_x), 0)
        assert_stages(model.forward_kv(keys, values, mask == 0, work, model.inference_constants()),
                      case["outputs"]["single_work_logits"], case["outputs"]["single_future_logits"])
    moved = (case["outputs"]["work_logits"][-1] - case["outputs"]["single_work_logits"][-1]).abs().amax(dim=(1, 2))
    assert moved[1] == 0 and (moved[[0, 2, 3]] > 1e-2).all()


def test_forward_video_reference_rows(case, model):
    """The reference batch inference of the whole video (LSTR's test sampler, window 0 scores chunks 0..W-1
    in one pass, later windows their last work row), and the anticipation rows of every window."""
    logits, future = model.forward_video(case_video(case), reference_rows=True)
    assert logits.shape == (200, 22) and future.shape == (200, 4, 22)
    assert_close(logits, case["sample_info"]["video_logits"], **TOL)
    assert_close(future[7:], case["sample_info"]["video_anticipation_logits"][7:], **TOL)
    assert_close(model.forward_video(case_video(case), reference_rows=True, max_batch=7)[0], logits, **TOL)


def test_own_scoring_is_causal(case, model):
    """Changing chunks after ``t`` leaves the scores of chunks ``<= t`` exactly as they were; the reference's
    first window does not (its chunk 0 sees chunk W-1 through the future tokens)."""
    video = case_video(case)
    logits, future = model.forward_video(video)
    ref_logits, _ = model.forward_video(video, reference_rows=True)
    assert torch.equal(logits[8:], ref_logits[8:])
    assert_close(logits[7], ref_logits[7], **TOL)  # the same window ``0 .. 7``, in another batch
    for t in (0, 3, 7, 60):
        changed = video.clone()
        changed[t + 1:] = torch.randn_like(changed[t + 1:])
        lg, fut = model.forward_video(changed)
        assert torch.equal(lg[: t + 1], logits[: t + 1]) and torch.equal(fut[: t + 1], future[: t + 1])
        assert not torch.allclose(lg[t + 1:], logits[t + 1:])
    changed = video.clone()
    changed[7] += 1.0
    moved = (model.forward_video(changed, reference_rows=True)[0][:7] - ref_logits[:7]).abs().max()
    assert moved > 1e-4


@pytest.mark.parametrize("T", [1, 5, 200, 420], ids=["T1", "T5<W", "T200", "T420>3L"])
def test_step_equals_forward_video(case, model, T):
    """Two streams at once; 420 chunks is over three times the long memory (128), 5 fewer than W (8)."""
    g = torch.Generator().manual_seed(T)
    videos = torch.randn(2, T, 64, generator=g) if T != 200 else torch.stack([case_video(case)] * 2)
    if T == 200:
        videos[1] = videos[1].flip(0)
    step = MATStep(model, torch.device("cpu"), torch.float32)
    logits, future = run_step(step, videos)
    ref = [model.forward_video(v) for v in videos]
    assert_close(logits, torch.stack([r[0] for r in ref]), **TOL)
    assert_close(future, torch.stack([r[1] for r in ref]), **TOL)
    assert_close(run_step(step, videos[:1, : min(T, 9)])[0], logits[:1, : min(T, 9)], **TOL)  # a restart


def test_paper_parameter_count():
    with torch.device("meta"):
        model = MAT(in_dim=3072)
    assert sum(p.numel() for p in model.parameters()) == 107_259_926
    assert model.num_long == 256 and model.num_queries == 8 and model.visual_dim == 2048


def test_from_reference_reads_a_config_file(case, tmp_path):
    """A YAML in the reference schema (seconds, DATA.FPS) gives what the tensors do not; without one the
    THUMOS MAT config applies; the widths come from the weights."""
    cfg = tmp_path / "mat_small.yaml"
    cfg.write_text(yaml.safe_dump(case["config"]))
    sd = {"module." + k: v for k, v in case["state_dict"].items()}
    model = MAT.from_reference({"model_state_dict": sd}, cfg).eval()
    kw = MAT.reference_config(case["state_dict"], cfg)
    assert {k: kw[k] for k in SMALL} == SMALL
    assert (kw["in_dim"], kw["visual_dim"], kw["d_model"], kw["ffn_dim"]) == (64, 40, 64, 128)
    assert (kw["enc_queries"], kw["gen_queries"], kw["future_steps"], kw["cci_times"]) == (8, 8, 12, 2)
    long_x, work_x, mask = case_inputs(case)
    with torch.no_grad():
        assert_stages(model(long_x, work_x, mask), case["outputs"]["single_work_logits"],
                      case["outputs"]["single_future_logits"])
    paper = MAT.reference_config(case["state_dict"])
    assert (paper["long_memory"], paper["work_memory"], paper["anticipation"], paper["groups"]) == (1024, 32, 8, 8)
    other = dict(case["config"], DATA={"FPS": 4, "NUM_CLASSES": 30})
    cfg.write_text(yaml.safe_dump(other))
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        MAT.reference_config(case["state_dict"], cfg)
    assert MAT.recognises_reference(set(case["state_dict"]))


def test_every_parameter_gets_a_gradient(case):
    torch.manual_seed(0)
    model = MAT.from_reference(case["state_dict"], **SMALL).train()
    long_x, work_x, mask = case_inputs(case)
    batch = {"long_features": long_x, "features": work_x, "long_mask": mask == 0}
    logits, future = model.training_logits(batch)
    assert logits.shape == (4, 8, 22) and future.shape == (4, 8, 0, 22)
    logits.logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_stacked_layers_are_drawn_on_their_own():
    """Unlike the reference's copied layers (docs/benchmarks.md section 27): no two layers of a stack start with
    the same attention projections or biases."""
    torch.manual_seed(0)
    model = MAT(in_dim=48, d_model=16, ffn_dim=32, **SMALL)
    stacks = [m.layers for m in model.modules() if isinstance(getattr(m, "layers", None), torch.nn.ModuleList)]
    assert sum(len(layers) > 1 for layers in stacks) == 3  # the memory encoder, the decoder, the generator
    for layers in stacks:
        for other in list(layers)[1:]:
            assert not torch.equal(other.self_attn.in_proj_weight, layers[0].self_attn.in_proj_weight)
            assert not torch.equal(other.linear1.bias, layers[0].linear1.bias)


def test_training_rows_are_causal(case):
    """Row ``r`` of a training window depends on work chunks ``<= r`` only."""
    model = MAT.from_reference(case["state_dict"], **SMALL).eval()
    long_x, work_x, mask = case_inputs(case)
    batch = {"long_features": long_x, "features": work_x, "long_mask": mask == 0}
    with torch.no_grad():
        logits, _ = model.training_logits(batch)
        changed = dict(batch, features=torch.cat([work_x[:, :5], torch.randn_like(work_x[:, 5:])], dim=1))
        moved, _ = model.training_logits(changed)
    assert torch.equal(moved[:, :5], logits[:, :5]) and not torch.allclose(moved[:, 5:], logits[:, 5:])


def test_reference_config_of_the_thumos_file_is_the_model_config(tmp_path):
    """The reference's THUMOS MAT settings, written in its schema, give configs/model/mat.yaml; DATA.FPS scales
    the memories."""
    from oad.models import registry

    lstr = {"NUM_HEADS": 4, "DIM_FEEDFORWARD": 1024, "DROPOUT": 0.0, "ACTIVATION": "gelu",
            "LONG_MEMORY_SECONDS": 256, "LONG_MEMORY_SAMPLE_RATE": 4, "WORK_MEMORY_SECONDS": 8,
            "WORK_MEMORY_SAMPLE_RATE": 1, "FUTURE_SECONDS": 12, "ANTICIPATION_SECONDS": 2, "GROUPS": 8, "CCI_TIMES": 2}
    cfg = tmp_path / "mat_thumos.yaml"
    cfg.write_text(yaml.safe_dump({"DATA": {"DATA_NAME": "THUMOS"}, "MODEL": {"LSTR": lstr}}))
    with torch.device("meta"):
        sd = MAT(in_dim=3072).state_dict()
    kw = MAT.reference_config(sd, cfg)
    assert (kw["in_dim"], kw["visual_dim"], kw["num_classes"]) == (3072, 2048, 22)
    config = registry.get("mat").config
    assert config["visual_dim"] is None  # read from the data's streams when training
    assert {k: kw[k] for k in config if k != "visual_dim"} == {k: v for k, v in config.items() if k != "visual_dim"}
    cfg.write_text(yaml.safe_dump({"DATA": {"FPS": 8}, "MODEL": {"LSTR": lstr}}))
    kw = MAT.reference_config(sd, cfg)
    assert (kw["long_memory"], kw["work_memory"], kw["anticipation"]) == (2048, 64, 16)


def test_groups_that_could_be_all_padding_are_refused():
    with pytest.raises(ValueError, match="fewer than"):
        MAT(in_dim=24, d_model=16, num_heads=2, long_memory=32, long_stride=4, groups=4)  # 4 groups of 2 tokens
    MAT(in_dim=24, d_model=16, num_heads=2, long_memory=64, long_stride=4, groups=4)  # 4 groups of 4 tokens


def test_the_converter_reads_a_reference_checkpoint(case, tmp_path):
    """A reference checkpoint file is recognised as MAT from its names alone and converted to one the tools
    load, with the same scores."""
    from oad.checkpoint import convert_reference_checkpoint, load_network

    src, dst = tmp_path / "mat_ref.pth", tmp_path / "mat.ckpt"
    torch.save({"epoch": 3, "model_state_dict": case["state_dict"]}, src)
    info = convert_reference_checkpoint(src, dst, **SMALL)
    assert info["model"] == "MAT" and info["data_info"]["ignore_index"] == 21
    net, _ = load_network(dst)
    video = case_video(case)[:40]
    assert_close(net.eval().forward_video(video)[0], MAT.from_reference(case["state_dict"], **SMALL).eval()
                 .forward_video(video)[0], **TOL)
