"""Tests of ``oad/streaming.py`` (the online runner and the event detector), ``oad/stream_task.py`` and
``tools/stream.py``: streaming == offline "all"-protocol scores (``oad.tasks.scoring``), N streams == each
alone, reset, priming, bf16, hand-made event sequences, and the tool end to end on a features file and on
a tiny generated video (resnet18 with random weights)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from oad.checkpoint import save_network
from oad.tasks.scoring import class_probabilities, score_videos
from oad.models import registry
from oad.models.oadtr import OadTR
from oad.online import EventDetector, OnlineDetector, can_prepack
from tests.conftest import REPO, compose_cfg

NAMES = ["Background"] + [f"action_{i}" for i in range(1, 21)] + ["Ambiguous"]
IN_DIM = 24
WINDOW = 8


# One torch thread: two OpenMP threads on a loaded 2-core machine spin-wait and run many times slower.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_oadtr(in_dim: int = IN_DIM) -> OadTR:
    return OadTR(in_dim=in_dim, num_classes=22, **OadTR.tiny)


def make(kind: str, seed: int = 0) -> torch.nn.Module:
    """The shared tiny instance of a registered model (``oad.models.registry.tiny_model``)."""
    return registry.tiny_model(kind, in_dim=IN_DIM, seed=seed)


def stream_all(det: OnlineDetector, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step every chunk of ``(T, D)`` (one stream) or ``(N, T, D)``; stack along time."""
    outs = [det.step(feats[..., t, :]) for t in range(feats.shape[-2])]
    dim = 0 if feats.ndim == 2 else 1
    return torch.stack([o.scores for o in outs], dim), torch.stack([o.future_scores for o in outs], dim)


# ---------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------


# every registered model with its default step, and OadTR's other step options
STEP_CASES = [(name, {}) for name in registry.names()] + [("oadtr", {"prepack": False}), ("oadtr", {"fused": False})]


@pytest.mark.parametrize("kind, options", STEP_CASES, ids=[f"{k}-{'-'.join(map(str, o.items()))}" for k, o in STEP_CASES])
def test_streaming_equals_offline_scoring(kind, options):
    """The runner, chunk by chunk, equals the model's whole-video scoring (``forward_videos``), also for
    videos shorter than the window / work memory and longer than the long memory."""
    net = make(kind)
    gen = torch.Generator().manual_seed(1)
    videos = [torch.randn(3 * WINDOW + 3, IN_DIM, generator=gen), torch.randn(WINDOW - 3, IN_DIM, generator=gen),
              torch.randn(3, IN_DIM, generator=gen)]
    offline = score_videos(net, videos)
    det = OnlineDetector(net, **options)
    if options.get("fused") is False:
        assert det.implementation == "plain"
    assert det.num_streams is None
    seen = []
    for feats, (logits, future) in zip(videos, offline):
        det.reset()
        scores, future_scores = stream_all(det, feats.numpy())  # numpy in, as from the extractor
        assert scores.dtype == torch.float32 and scores.shape == (len(feats), 22)
        assert_close(scores, class_probabilities(logits, 21), atol=1e-5, rtol=0)
        assert_close(future_scores, class_probabilities(future, 21), atol=1e-5, rtol=0)
        assert (scores[:, 21] == 0).all()
        assert det.num_steps == len(feats) and det.num_streams == 1
        seen.append(scores)
    # the scores really change from chunk to chunk (the comparison is not between constants)
    seen = torch.cat(seen)
    assert seen.argmax(1).unique().numel() > 1 or seen.std(0).max() > 1e-3


def test_oadtr_runner_fast_path_matches_forward_at_every_fill_level():
    """The fused OadTR step (prepacked or not) against ``model(window, mask)`` directly, incl. full windows."""
    net = make("oadtr", seed=3)
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 2 * WINDOW, IN_DIM, generator=gen)
    for prepack in {False, can_prepack(torch.device("cpu"), torch.float32)}:
        det = OnlineDetector(net, prepack=prepack)
        assert det.prepack == prepack
        for t in range(feats.shape[1]):
            out = det.step(feats[:, t])
            lo = max(0, t + 1 - WINDOW)
            window = torch.zeros(2, WINDOW, IN_DIM)
            window[:, WINDOW - (t + 1 - lo):] = feats[:, lo : t + 1]
            mask = torch.arange(WINDOW) >= WINDOW - (t + 1 - lo)
            with torch.no_grad():
                logits, future = net(window, mask.expand(2, -1))
            assert_close(out.scores, class_probabilities(logits, 21), atol=1e-5, rtol=0)
            assert_close(out.future_scores, class_probabilities(future, 21), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", registry.names())
def test_n_streams_at_once_equal_each_alone(kind):
    net = make(kind)
    feats = torch.randn(3, WINDOW + 5, IN_DIM, generator=torch.Generator().manual_seed(4))
    together = stream_all(OnlineDetector(net), feats)
    assert together[0].shape == (3, WINDOW + 5, 22) and together[1].shape[:2] == (3, WINDOW + 5)
    for i in range(3):
        alone = stream_all(OnlineDetector(net), feats[i])
        assert_close(together[0][i], alone[0], atol=1e-5, rtol=0)
        assert_close(together[1][i], alone[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["oadtr", "trn"])
def test_reset_starts_new_streams(kind):
    net = make(kind)
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(WINDOW + 4, IN_DIM, generator=gen), torch.randn(6, IN_DIM, generator=gen)
    det = OnlineDetector(net)
    stream_all(det, a)
    det.reset()
    assert det.num_steps == 0 and det.num_streams is None
    assert_close(stream_all(det, b)[0], stream_all(OnlineDetector(net), b)[0], atol=0, rtol=0)
    # another N after a reset; a different N without one is refused
    det.reset()
    three = torch.randn(3, 4, IN_DIM, generator=gen)
    assert_close(stream_all(det, three)[0], stream_all(OnlineDetector(net), three)[0], atol=0, rtol=0)
    with pytest.raises(ValueError, match="reset"):
        det.step(torch.randn(2, IN_DIM))
    with pytest.raises(ValueError, match=f"\\(N, {IN_DIM}\\)"):
        det.step(torch.randn(3, IN_DIM + 1))


@pytest.mark.parametrize("kind", registry.names())
def test_prime_leaves_the_state_stepping_would(kind):
    net = make(kind)
    feats = torch.randn(2, 2 * WINDOW + 3, IN_DIM, generator=torch.Generator().manual_seed(6))
    ref = stream_all(OnlineDetector(net), feats)[0]
    for k in (0, 3, WINDOW, WINDOW + 5):
        det = OnlineDetector(net)
        det.prime(feats[:, :k])
        assert det.num_steps == k
        assert_close(stream_all(det, feats[:, k:])[0], ref[:, k:], atol=1e-5, rtol=0)
    one = OnlineDetector(net)
    one.prime(feats[0, :5].numpy())  # (T, D): one stream
    assert one.num_streams == 1


def test_the_wrapped_model_is_left_alone():
    net = make("oadtr").train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    det = OnlineDetector(net, dtype=torch.bfloat16)
    x = torch.randn(WINDOW + 2, IN_DIM)
    bf = stream_all(det, x)[0]
    assert net.training and all(p.dtype == torch.float32 for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # the runner is in eval mode (no dropout) although the model was not: two runs agree exactly
    assert_close(stream_all(OnlineDetector(net, dtype=torch.bfloat16), x)[0], bf, atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["oadtr", "trn", "linear"])
def test_bf16_runs_and_agrees_with_fp32_on_the_top_class(kind):
    from oad.models.linear import ChunkLinear
    from oad.models.trn import TRN

    torch.manual_seed(0)
    net = {"oadtr": lambda: OadTR(in_dim=64, window=WINDOW, d_model=64, num_heads=4, num_layers=2, mlp_dim=64,
                                  num_queries=4, decoder_layers=2, decoder_heads=2, decoder_ffn_dim=64),
           "trn": lambda: TRN(in_dim=64, hidden_dim=64, num_queries=3),
           "linear": lambda: ChunkLinear(in_dim=64, window=1)}[kind]().eval()
    feats = torch.randn(3, 2 * WINDOW + 8, 64, generator=torch.Generator().manual_seed(7))
    fp32 = stream_all(OnlineDetector(net), feats)[0]
    for prepack in ({None, False} if kind == "oadtr" else {None}):
        det = OnlineDetector(net, dtype=torch.bfloat16, prepack=prepack)
        bf16, future = stream_all(det, feats)
        assert bf16.dtype == torch.float32 and future.dtype == torch.float32
        assert torch.isfinite(bf16).all() and torch.isfinite(future).all()
        assert_close(bf16.sum(-1), torch.ones(bf16.shape[:2]), atol=1e-4, rtol=0)
        agree = (bf16.argmax(-1) == fp32.argmax(-1)).float().mean().item()
        assert agree >= 0.9, agree
        assert (bf16 - fp32).abs().max() < 0.05


def test_wrong_dtype_and_model_are_refused():
    with pytest.raises(ValueError, match="bfloat16"):
        OnlineDetector(make("linear"), dtype=torch.float16)
    with pytest.raises(ValueError, match="history"):
        OnlineDetector(make("linear")).prime(torch.randn(IN_DIM))


# ---------------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------------


def scores_of(values: list[float], cls: int = 1, others: dict[int, list[float]] | None = None) -> np.ndarray:
    """(T, 22) scores: ``values`` on class ``cls``, ``others`` on other classes, the rest on background."""
    s = np.zeros((len(values), 22))
    s[:, cls] = values
    for c, v in (others or {}).items():
        s[:, c] = v
    s[:, 0] = 1 - s.sum(1)
    return s


def run_events(scores: np.ndarray, **kw) -> tuple[list[dict], list[list[dict]]]:
    ev = EventDetector(NAMES, rate=4.0, **kw)
    decisions = [ev.update(s) for s in scores]
    return ev.finish(), decisions


def test_event_threshold_min_length_and_decided_at():
    events, decisions = run_events(scores_of([0.1, 0.6, 0.7, 0.8, 0.2, 0.1]), on_threshold=0.5, off_threshold=0.3,
                                   min_length=2)
    assert len(events) == 1
    e = events[0]
    assert (e["class_name"], e["start_chunk"], e["end_chunk"], e["num_chunks"]) == ("action_1", 1, 4, 3)
    assert (e["start_s"], e["end_s"]) == (0.25, 1.0)
    # started at chunk 1, decided once 2 chunks were seen (chunk 2); ended by chunk 4, decided there
    assert (e["start_decided_chunk"], e["start_delay_chunks"]) == (2, 1)
    assert (e["end_decided_chunk"], e["end_delay_chunks"]) == (4, 1)
    assert (e["start_decided_s"], e["end_decided_s"]) == (0.75, 1.25)
    assert e["peak_score"] == pytest.approx(0.8) and not e["end_by_stream_end"]
    assert [[d["decision"] for d in ds] for ds in decisions] == [[], [], ["start"], [], ["end"], []]
    assert decisions[2][0]["end_chunk"] is None and decisions[4][0]["end_chunk"] == 4
    # min_length 3: decided one chunk later, same event
    (e3,), _ = run_events(scores_of([0.1, 0.6, 0.7, 0.8, 0.2, 0.1]), min_length=3)
    assert (e3["start_chunk"], e3["end_chunk"], e3["start_decided_chunk"]) == (1, 4, 3)


def test_event_hysteresis():
    values = [0.6, 0.4, 0.45, 0.35, 0.2, 0.1]
    (e,), _ = run_events(scores_of(values), on_threshold=0.5, off_threshold=0.3, min_length=1)
    assert (e["start_chunk"], e["end_chunk"]) == (0, 4)  # dips to 0.35-0.45 do not end it
    events, _ = run_events(scores_of(values), on_threshold=0.5, off_threshold=0.5, min_length=1)
    assert [(x["start_chunk"], x["end_chunk"]) for x in events] == [(0, 1)]  # without hysteresis


def test_event_min_length_drops_short_candidates():
    values = [0.1, 0.9, 0.1, 0.1, 0.8, 0.4, 0.1]
    events, _ = run_events(scores_of(values), min_length=2)
    assert [(x["start_chunk"], x["end_chunk"]) for x in events] == [(4, 6)]  # the 1-chunk spike is dropped
    events, _ = run_events(scores_of(values), min_length=1)
    assert [(x["start_chunk"], x["end_chunk"]) for x in events] == [(1, 2), (4, 6)]


def test_event_classes_are_independent_and_background_and_ignore_never_fire():
    s = scores_of([0.0, 0.6, 0.6, 0.6, 0.0], cls=3, others={7: [0.35, 0.35, 0.35, 0.0, 0.0]})
    s[:, 21] = 0.0
    events, _ = run_events(s, on_threshold=0.3, off_threshold=0.2, min_length=1)
    assert [(x["class_index"], x["start_chunk"], x["end_chunk"]) for x in events] == [(7, 0, 3), (3, 1, 4)]
    bg = np.zeros((5, 22))
    bg[:, 0], bg[:, 21] = 0.4, 0.6
    assert run_events(bg, on_threshold=0.3, off_threshold=0.2)[0] == []


def test_event_open_at_stream_end_is_closed_there():
    (e,), _ = run_events(scores_of([0.1, 0.7, 0.7, 0.7]), min_length=2)
    assert (e["start_chunk"], e["end_chunk"], e["end_decided_chunk"], e["end_by_stream_end"]) == (1, 4, 3, True)
    ev = EventDetector(NAMES, min_length=2)
    for s in scores_of([0.1, 0.7, 0.7]):
        ev.update(torch.from_numpy(s))  # tensors accepted too
    assert [a["start_chunk"] for a in ev.active] == [1]
    # a candidate shorter than min_length at the end is dropped
    assert run_events(scores_of([0.1, 0.1, 0.7]), min_length=2)[0] == []


def test_event_settings_are_checked():
    with pytest.raises(ValueError, match="off_threshold"):
        EventDetector(NAMES, on_threshold=0.3, off_threshold=0.5)
    with pytest.raises(ValueError, match="min_length"):
        EventDetector(NAMES, min_length=0)
    with pytest.raises(ValueError, match=r"\(22,\)"):
        EventDetector(NAMES).update(np.zeros(21))


# ---------------------------------------------------------------------------------------------------
# tools/stream.py
# ---------------------------------------------------------------------------------------------------


def save_small_checkpoint(path, in_dim: int, stream_dims: list[int]) -> OadTR:
    net = make("oadtr") if in_dim == IN_DIM else small_oadtr(in_dim).eval()
    cfg = {"_target_": "oad.models.oadtr.OadTR", "in_dim": in_dim, "num_classes": 22, **OadTR.tiny}
    save_network(path, net, cfg, {"class_names": NAMES, "ignore_index": 21, "fps": 4.0, "stream_dims": stream_dims})
    return net


def read_scores_csv(path) -> tuple[str, list[str], np.ndarray]:
    lines = path.read_text().splitlines()
    rows = list(csv.reader(lines[1:]))
    return lines[0], rows[0], np.array(rows[1:], dtype=np.float64)


def test_tool_on_a_features_file(tmp_path):
    net = save_small_checkpoint(tmp_path / "tiny.ckpt", IN_DIM, [16, 8])
    T = 3 * WINDOW + 2
    feats = np.random.default_rng(0).normal(size=(T, IN_DIM)).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "tools" / "stream.py"), f"features={tmp_path / 'f.npy'}",
           f"ckpt_path={tmp_path / 'tiny.ckpt'}", f"output_dir={out}", "events.on_threshold=0.2",
           "events.off_threshold=0.1", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1].startswith("real-time factor: ")

    comment, header, table = read_scores_csv(out / "scores.csv")
    assert comment.startswith("# oad stream: checkpoint=") and "RANDOM" not in comment
    assert header == ["chunk", "start_s", "end_s", *NAMES]
    assert table.shape == (T, 3 + 22)
    assert_close(table[:, 0], np.arange(T, dtype=np.float64))
    assert_close(table[:, 1], np.arange(T) / 4.0)
    (logits, _), = score_videos(net, [torch.from_numpy(feats)])
    assert_close(torch.from_numpy(table[:, 3:]), class_probabilities(logits, 21).double(), atol=2e-6, rtol=0)

    js = json.loads((out / "scores.json").read_text())
    assert js["class_names"] == NAMES and len(js["scores"]) == T and js["chunk"] == list(range(T))
    meta = js["meta"]
    assert meta["features"] == str(tmp_path / "f.npy") and meta["rate"] == 4.0 and meta["num_chunks"] == T
    assert meta["real_time_factor"] > 0 and meta["random_weights"] is False
    ev = json.loads((out / "events.json").read_text())
    assert ev["rule"]["on_threshold"] == 0.2 and ev["rule"]["min_length"] == 2
    for e in ev["events"]:
        assert e["start_decided_chunk"] >= e["start_chunk"] and e["end_decided_chunk"] >= e["end_chunk"] - 1
        assert e["class_name"] not in ("Background", "Ambiguous")
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a features file of the wrong size: a clear error, exit code 2
    np.save(tmp_path / "bad.npy", feats[:, :10])
    cmd[2] = f"features={tmp_path / 'bad.npy'}"
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and f"expected (T, {IN_DIM})" in r.stderr


def write_video(path, n: int, fps: int = 25):
    av = pytest.importorskip("av")
    w, h = 64, 48
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.full((h, w, 3), 40, np.uint8)
            img[16:32, (2 * i) % 48 : (2 * i) % 48 + 16] = 255
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def test_stream_task_int8_precision(tmp_path):
    """``precision=int8``: the detector runs the int8 step; its scores stay close to fp32's; a bad
    precision is refused before anything is read."""
    from oad.tasks.streaming import stream

    save_small_checkpoint(tmp_path / "tiny.ckpt", IN_DIM, [16, 8])
    feats = np.random.default_rng(0).normal(size=(3 * WINDOW + 2, IN_DIM)).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    common = {"features": tmp_path / "f.npy", "ckpt_path": tmp_path / "tiny.ckpt"}
    fp32 = stream(compose_cfg("stream", [f"{k}={v}" for k, v in common.items()], tmp_path / "fp32"))
    int8 = stream(compose_cfg("stream", [*[f"{k}={v}" for k, v in common.items()], "precision=int8"], tmp_path / "int8"))
    assert int8["meta"]["precision"] == "int8" and "int8" in int8["meta"]["implementation"]
    a = np.array(json.loads(Path(fp32["scores_json"]).read_text())["scores"])
    b = np.array(json.loads(Path(int8["scores_json"]).read_text())["scores"])
    assert a.shape == b.shape and np.abs(a - b).max() < 0.05  # int8 vs fp32: tests/test_int8.py tolerances (0.03-0.15)
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or int8"):
        stream(compose_cfg("stream", [*[f"{k}={v}" for k, v in common.items()], "precision=int4"], tmp_path / "x"))


def stream_cfg(tmp_path, **over):
    args = [f"{k}={v}" for k, v in {
        "backbone.name": "resnet18", "backbone.weights": "random", "backbone.allow_random": "true",
        "resize": 64, "crop": 56, "progress": "false", **over}.items()]
    return compose_cfg("stream", args, tmp_path / "out")


def test_stream_task_on_a_tiny_video_with_random_backbone(tmp_path):
    from oad.tasks.streaming import stream

    video = write_video(tmp_path / "clip.mp4", 83)  # 3.32 s at 25 fps
    save_small_checkpoint(tmp_path / "r18.ckpt", 512, [512])
    res = stream(stream_cfg(tmp_path, video=video, ckpt_path=tmp_path / "r18.ckpt"))
    out = tmp_path / "out"
    for name in ("scores.csv", "scores.json", "events.json", "timeline.png"):
        assert (out / name).is_file(), name
    comment, header, table = read_scores_csv(out / "scores.csv")
    assert abs(len(table) - 3.32 * 4) <= 1 and res["num_chunks"] == len(table)
    assert "weights=random" in comment and "RANDOM BACKBONE WEIGHTS" in comment
    for name in ("scores.json", "events.json"):
        meta = json.loads((out / name).read_text())["meta"]
        assert meta["weights"] == "random" and meta["random_weights"] is True and meta["backbone"] == "resnet18"
        assert meta["video"] == str(video) and meta["rate"] == 4.0
    assert res["real_time_factor"] > 0


def test_stream_task_errors_are_clear_and_early(tmp_path):
    from oad.tasks.streaming import stream
    from oad.video import VideoError

    save_small_checkpoint(tmp_path / "r18.ckpt", 512, [512])
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match="corrupt.mp4"):
        stream(stream_cfg(tmp_path, video=corrupt, ckpt_path=tmp_path / "r18.ckpt"))
    # stream sizes that do not fit are refused before the video is opened (the corrupt file is not reached)
    save_small_checkpoint(tmp_path / "two.ckpt", 1024, [512, 512])
    with pytest.raises(ValueError, match=r"512\+512 feature streams.*extractor gives 512"):
        stream(stream_cfg(tmp_path, video=corrupt, ckpt_path=tmp_path / "two.ckpt"))
    with pytest.raises(ValueError, match="exactly one input"):
        stream(stream_cfg(tmp_path, ckpt_path=tmp_path / "r18.ckpt"))
    with pytest.raises(ValueError, match="allow_random"):
        stream(stream_cfg(tmp_path, video=corrupt, ckpt_path=tmp_path / "r18.ckpt", **{"backbone.allow_random": "false"}))


# ---------------------------------------------------------------------------------------------------
# Refused inputs, skipped chunks and the output set
# ---------------------------------------------------------------------------------------------------


def strict_json(text: str):
    """``json.loads`` that refuses the NaN/Infinity tokens Python's json accepts."""
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def shown_files(out: Path) -> dict[str, bytes]:
    """The files ``out`` shows (through the links of the published set), by name."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_tool_refuses_bad_features_before_touching_the_outputs(tmp_path, capsys, monkeypatch):
    """Each bad features file gets exit code 2 and one error line naming it and its problem, and the
    previous outputs stay as they were. The tool's process once (its exit code, no traceback), then every
    case through the same error reporting (``oad.cli.run_reported``) in this process."""
    from oad.cli import run_reported
    from oad.io import read_output_set
    from oad.tasks.streaming import stream

    save_small_checkpoint(tmp_path / "tiny.ckpt", IN_DIM, [16, 8])
    feats = np.random.default_rng(0).normal(size=(2 * WINDOW, IN_DIM)).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    out = tmp_path / "out"
    args = [f"ckpt_path={tmp_path / 'tiny.ckpt'}", "progress=false"]
    stream(compose_cfg("stream", [f"features={tmp_path / 'f.npy'}", *args], out))
    before = shown_files(out)
    assert set(before) == {"scores.csv", "scores.json", "events.json", "timeline.png", "manifest.json"}
    run_id = read_output_set(out)["run_id"]

    nan, inf = feats.copy(), feats.copy()
    nan[[3, 9]] = np.nan
    inf[5, 0] = np.inf
    cases = {"nan": (nan, "8 NaN"), "inf": (inf, "0 NaN and 1 infinite values in 1 of 16 rows (rows 5)"),
             "empty": (feats[:0], "no chunks (shape (0, 24))"), "int": ((feats * 9).astype(np.int32), "dtype int32")}
    for name, (array, problem) in cases.items():
        np.save(tmp_path / f"{name}.npy", array)
    (tmp_path / "text.npy").write_text("0.5, 0.25\n")
    cases["text"] = (None, "not a .npy file")

    monkeypatch.delenv("OAD_DEBUG", raising=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(REPO / "tools" / "stream.py"), f"features={tmp_path / 'nan.npy'}", *args,
                        f"output_dir={out}", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: features {tmp_path / 'nan.npy'}: "), r.stderr
    assert "8 NaN" in r.stderr and "rows 3, 9" in r.stderr
    assert shown_files(out) == before
    for name, (_, problem) in cases.items():
        capsys.readouterr()
        code = run_reported(lambda: stream(compose_cfg("stream", [f"features={tmp_path / f'{name}.npy'}", *args], out)))
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert code == 2 and "Traceback" not in err, err[-3000:]
        assert last.startswith(f"error: features {tmp_path / f'{name}.npy'}: ") and problem in last, (name, last)
        assert shown_files(out) == before, name  # the previous outputs, byte for byte
    assert read_output_set(out)["run_id"] == run_id


def test_outputs_are_one_set_naming_their_run_input_and_checkpoint(tmp_path):
    """Every file names the run id, the input and the checkpoint; the manifest lists the set; the JSON is
    strict; a second run replaces the whole set (a timeline of the first run does not survive plot=false)."""
    from oad.io import SETS_DIR, read_output_set
    from oad.tasks.streaming import stream

    save_small_checkpoint(tmp_path / "tiny.ckpt", IN_DIM, [16, 8])
    np.save(tmp_path / "f.npy", np.random.default_rng(1).normal(size=(WINDOW + 3, IN_DIM)).astype(np.float32))
    args = [f"features={tmp_path / 'f.npy'}", f"ckpt_path={tmp_path / 'tiny.ckpt'}", "progress=false"]
    out = tmp_path / "out"
    out.mkdir()
    for name in ("scores.csv", "report.html", "notes.txt"):  # plain files of an earlier version, and the user's
        (out / name).write_text("old")
    first = stream(compose_cfg("stream", args, out))
    run_id = first["meta"]["run_id"]
    assert (out / "scores.csv").is_symlink() and not (out / "report.html").exists()  # not part of this set
    assert (out / "notes.txt").read_text() == "old"
    manifest = read_output_set(out)
    assert manifest["run_id"] == run_id and manifest["input"] == {"features": str(tmp_path / "f.npy")}
    assert manifest["checkpoint"] == str(tmp_path / "tiny.ckpt") and manifest["model"] == "OadTR"
    assert sorted(manifest["files"]) == ["events.json", "scores.csv", "scores.json", "timeline.png"]
    comment = (out / "scores.csv").read_text().splitlines()[0]
    assert f"checkpoint={tmp_path / 'tiny.ckpt'}" in comment and f"features={tmp_path / 'f.npy'}" in comment
    assert comment.endswith(f" run_id={run_id}")
    for name in ("scores.json", "events.json", "manifest.json"):
        doc = strict_json((out / name).read_text())
        meta = doc if name == "manifest.json" else doc["meta"]
        assert meta["run_id"] == run_id and str(tmp_path / "tiny.ckpt") == meta["checkpoint"], name
    assert strict_json((out / "scores.json").read_text())["meta"]["features"] == str(tmp_path / "f.npy")

    second = stream(compose_cfg("stream", [*args, "plot=false"], out))
    assert second["timeline"] is None and not (out / "timeline.png").exists()
    assert read_output_set(out)["run_id"] == second["meta"]["run_id"] != run_id
    assert [p.name for p in (out / SETS_DIR).iterdir() if p.is_dir() and not p.is_symlink()] == [second["meta"]["run_id"]]


def test_output_set_leaves_a_file_that_is_already_there(tmp_path):
    """A file of the set that the folder holds already as itself (a video hard-linked beside a report, streamed
    from the output folder) stays a plain file there and is not part of the set."""
    from oad.io import output_set, read_output_set

    (tmp_path / "clip.mp4").write_bytes(b"video")
    with output_set(tmp_path, "run1", {"input": "clip.mp4"}) as staged:
        os.link(tmp_path / "clip.mp4", staged / "clip.mp4")
        (staged / "a.txt").write_text("a")
    assert not (tmp_path / "clip.mp4").is_symlink() and (tmp_path / "clip.mp4").read_bytes() == b"video"
    assert (tmp_path / "a.txt").is_symlink() and (tmp_path / "a.txt").read_text() == "a"
    assert list(read_output_set(tmp_path)["files"]) == ["a.txt"]


def test_strict_json_writer_refuses_nan(tmp_path):
    from oad.io import write_json

    with pytest.raises(ValueError, match=f"{tmp_path / 'x.json'}: not written: a NaN"):
        write_json(tmp_path / "x.json", {"scores": [0.5, float("nan")]}, strict=True)
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "x.json", {"scores": [float("nan")]})  # metrics.json etc. keep Python's json
    assert (tmp_path / "x.json").read_text() == '{\n  "scores": [\n    NaN\n  ]\n}\n'


def test_a_failed_writer_leaves_the_previous_set(tmp_path, monkeypatch):
    """The writer fails after the first file (scores.csv): the folder still shows the previous set, byte for
    byte, and nothing of the failed run is left."""
    import oad.tasks.streaming as streaming
    from oad.io import SETS_DIR, read_output_set

    save_small_checkpoint(tmp_path / "tiny.ckpt", IN_DIM, [16, 8])
    np.save(tmp_path / "f.npy", np.random.default_rng(2).normal(size=(WINDOW + 3, IN_DIM)).astype(np.float32))
    np.save(tmp_path / "g.npy", np.random.default_rng(3).normal(size=(WINDOW + 5, IN_DIM)).astype(np.float32))
    out = tmp_path / "out"
    cfg = lambda f: compose_cfg("stream", [f"features={tmp_path / f}", f"ckpt_path={tmp_path / 'tiny.ckpt'}",  # noqa: E731
                                           "progress=false"], out)
    first = streaming.stream(cfg("f.npy"))
    before = shown_files(out)

    def broken(path, obj, strict=False):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(streaming, "write_json", broken)
    with pytest.raises(OSError, match="the output folder cannot be written"):
        streaming.stream(cfg("g.npy"))
    assert shown_files(out) == before
    assert read_output_set(out)["run_id"] == first["meta"]["run_id"]
    assert sorted(p.name for p in (out / SETS_DIR).iterdir()) == [".lock", first["meta"]["run_id"], "current"]


KILL = """
import os, signal, sys
import oad.io
from oad.tasks import streaming
from tests.conftest import compose_cfg

where, args, out = sys.argv[1], sys.argv[2:-1], sys.argv[-1]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if where == "after the first file":
    streaming.write_json = die  # scores.csv is written, scores.json is not
else:  # the new set complete and its links made, the swap not done
    link = oad.io._link
    oad.io._link = lambda folder, name, target, run_id: die() if name == oad.io.CURRENT else link(folder, name, target, run_id)
streaming.stream(compose_cfg("stream", args, out))
"""


@pytest.mark.parametrize("where", ["after the first file", "before the swap"])
def test_a_killed_stream_leaves_the_previous_set(tmp_path, where):
    """A stream killed (SIGKILL) while publishing its outputs: the folder shows the complete previous set;
    the next run publishes and removes what the killed one left."""
    from oad.io import read_output_set
    from oad.tasks.streaming import stream

    save_small_checkpoint(tmp_path / "tiny.ckpt", IN_DIM, [16, 8])
    np.save(tmp_path / "f.npy", np.random.default_rng(4).normal(size=(WINDOW + 3, IN_DIM)).astype(np.float32))
    np.save(tmp_path / "g.npy", np.random.default_rng(5).normal(size=(2 * WINDOW, IN_DIM)).astype(np.float32))
    out = tmp_path / "out"
    common = [f"ckpt_path={tmp_path / 'tiny.ckpt'}", "progress=false", "plot=false"]
    first = stream(compose_cfg("stream", [f"features={tmp_path / 'f.npy'}", *common], out))
    before = shown_files(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", KILL, where, f"features={tmp_path / 'g.npy'}", *common, str(out)],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == -9, r.stderr[-3000:]
    assert shown_files(out) == before
    assert read_output_set(out)["run_id"] == first["meta"]["run_id"]
    assert len([p for p in (out / ".outputs").iterdir() if p.is_dir() and not p.is_symlink()]) == 2  # + the dead one
    third = stream(compose_cfg("stream", [f"features={tmp_path / 'g.npy'}", *common], out))
    assert read_output_set(out)["run_id"] == third["meta"]["run_id"]
    assert len(strict_json((out / "scores.json").read_text())["chunk"]) == 2 * WINDOW
    assert [p.name for p in (out / ".outputs").iterdir() if p.is_dir() and not p.is_symlink()] == [third["meta"]["run_id"]]


def test_a_nonfinite_backbone_chunk_is_skipped_and_reported(tmp_path, monkeypatch, caplog):
    """A video's chunk whose features come out NaN/Inf is logged, listed in the outputs' meta and left out
    of the stream: the other chunks' scores are those of the detector stepped over the finite chunks only,
    and the events keep the video's chunk numbers. A video with no finite chunk is an error, the
    previous outputs untouched."""
    from oad.io import read_output_set
    from oad.tasks.streaming import stream, summary_lines
    from oad.video import FeatureExtractor

    video = write_video(tmp_path / "clip.mp4", 83)  # 14 chunks at 4/s
    net = save_small_checkpoint(tmp_path / "r18.ckpt", 512, [512])
    features = FeatureExtractor._features
    fed: list[np.ndarray] = []
    broken = {3: np.nan, 8: np.inf}

    def glitchy(self, chunks):
        out = features(self, chunks)
        for f in out:
            if f.index in broken:
                f.rgb[[0, 7]] = broken[f.index]
            else:
                fed.append(f.vector.copy())
        return out

    monkeypatch.setattr(FeatureExtractor, "_features", glitchy)
    caplog.set_level("ERROR", logger="oad.tasks.streaming")
    # events that start at the first score >= 0.05 of a class and never end (off 0): closed at the stream end
    res = stream(stream_cfg(tmp_path, video=video, ckpt_path=tmp_path / "r18.ckpt",
                            **{"events.on_threshold": 0.05, "events.off_threshold": 0.0}))
    out = tmp_path / "out"
    js = strict_json((out / "scores.json").read_text())
    assert js["chunk"] == [i for i in range(14) if i not in broken] and res["num_chunks"] == 12
    meta = js["meta"]
    assert meta["num_skipped_chunks"] == 2 and [s["chunk"] for s in meta["skipped_chunks"]] == [3, 8]
    assert "WARNING: 2 chunks skipped for NaN/Inf features (meta.skipped_chunks)" in summary_lines(res)
    assert meta["skipped_chunks"][0] == {"chunk": 3, "start_s": 0.75, "end_s": 1.0,
                                         "reason": "2 of 512 feature values are NaN/Inf"}
    assert strict_json((out / "events.json").read_text())["meta"]["skipped_chunks"] == meta["skipped_chunks"]
    _, _, table = read_scores_csv(out / "scores.csv")
    assert table[:, 0].tolist() == js["chunk"]
    expected = stream_all(OnlineDetector(net, ignore_index=21), torch.from_numpy(np.stack(fed)))[0]
    assert_close(torch.from_numpy(table[:, 3:]), expected.double(), atol=2e-6, rtol=0)
    assert [r.getMessage().split(":")[1] for r in caplog.records] == [" chunk 3 (0.75-1.00 s) skipped", " chunk 8 (2.00-2.25 s) skipped"]
    events = strict_json((out / "events.json").read_text())["events"]  # in the video's chunk numbers:
    assert events and {e["start_chunk"] for e in events} <= set(js["chunk"])
    assert {(e["end_chunk"], e["end_decided_chunk"], e["end_by_stream_end"]) for e in events} == {(14, 13, True)}

    before = shown_files(out)
    broken.update({i: np.nan for i in range(14)})
    with pytest.raises(ValueError, match=r"clip.mp4: nothing to score: all 14 chunks were skipped"):
        stream(stream_cfg(tmp_path, video=video, ckpt_path=tmp_path / "r18.ckpt"))
    assert shown_files(out) == before and read_output_set(out)["run_id"] == meta["run_id"]
