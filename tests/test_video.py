"""Tests of ``oad/video.py`` (decoding, chunking, backbones, extractor) and ``oad/extract.py`` (folder ->
LSTR layout, ``tools/extract_features.py``).

Real short videos are written here: MPEG-4 in .mp4 with PyAV (constant and variable frame rate, pts set
by hand) and MJPG in .avi with OpenCV. Frame ``i`` carries its index in binary as black/white blocks
(so a decoded frame tells which it is) and a bright square moving 2 px per frame (so the flow is not
zero). Backbones are resnet18 with random weights on 56 px crops, to stay fast.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from oad.video.extract import MANIFEST, extract, extract_folder
from oad.video import (
    FeatureExtractor,
    VideoError,
    VideoReader,
    build_backbone,
    chunk_frames,
    num_chunks_for,
    torchvision_cache_files,
)
from tests.conftest import REPO, compose_cfg

W, H = 64, 48
BITS = 7  # frames 0..127 carry their index
TINY = dict(backbone="resnet18", weights="random", allow_random=True, resize=64, crop=56)


# One torch thread: two OpenMP threads on a loaded 2-core machine spin-wait and run many times slower.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def frame(i: int) -> np.ndarray:
    img = np.full((H, W, 3), 60, np.uint8)
    for b in range(BITS):  # the index in binary, one 8x8 block per bit along the top
        img[:8, 8 * b : 8 * b + 8] = 255 * ((i >> b) & 1)
    x = (2 * i) % (W - 12)
    img[20:32, x : x + 12] = 255
    return img


def level(img: np.ndarray) -> int:
    """The index a decoded frame was written with."""
    return sum(1 << b for b in range(BITS) if img[:8, 8 * b : 8 * b + 8].mean() > 128)


def write_av(path: Path, pts: list[int], time_base: Fraction) -> Path:
    """MPEG-4 in .mp4 with PyAV; frame ``i`` shown from ``pts[i] * time_base`` seconds."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=1 / time_base)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.bit_rate = 2_000_000
        s.codec_context.time_base = time_base
        s.time_base = time_base
        for i, p in enumerate(pts):
            f = av.VideoFrame.from_ndarray(frame(i), format="rgb24")
            f.pts, f.time_base = p, time_base
            for packet in s.encode(f):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def write_cfr(path: Path, n: int, fps: Fraction) -> Path:
    return write_av(path, list(range(n)), 1 / fps)


def write_avi(path: Path, n: int, fps: float) -> Path:
    """MJPG in .avi with OpenCV."""
    cv2 = pytest.importorskip("cv2")
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (W, H))
    assert vw.isOpened()
    for i in range(n):
        vw.write(np.ascontiguousarray(frame(i)[..., ::-1]))  # RGB -> BGR
    vw.release()
    return path


def truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


# ---------------------------------------------------------------------------------------------------
# Decoding and chunking
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fps, n, rate",
    [
        (Fraction(25), 83, 4.0),  # 3.32 s
        (Fraction(25), 83, 3.0),  # 3 does not divide 25
        (Fraction(30000, 1001), 100, 4.0),  # NTSC: 4 does not divide 29.97
        (Fraction(25), 15, 4.0),  # 0.6 s, shorter than one second
        (Fraction(25), 4, 4.0),  # 0.16 s, shorter than one chunk
    ],
)
def test_chunks_follow_duration_and_rate(tmp_path, fps, n, rate):
    path = write_cfr(tmp_path / "v.mp4", n, fps)
    vr = VideoReader(path)
    duration = n / float(fps)
    assert vr.num_frames == n
    assert vr.duration == pytest.approx(duration, abs=1e-3)
    assert vr.fps == pytest.approx(float(fps), rel=1e-3)

    chunks = list(chunk_frames(vr, rate, batch_chunks=4))
    T = len(chunks)
    assert T == math.ceil(duration * rate - 1e-3) == num_chunks_for(vr.duration, rate)
    assert abs(T - duration * rate) <= 1
    for i, c in enumerate(chunks):
        assert c.index == i
        assert (c.start, c.end) == pytest.approx((i / rate, (i + 1) / rate))
        assert c.frame.shape == (H, W, 3) and c.frame.dtype == np.uint8
        # The frame shown at the middle of the chunk (the last one past the end of the stream).
        expected = min(math.floor((i + 0.5) / rate * float(fps) + 1e-6), n - 1)
        assert level(c.frame) == expected, f"chunk {i}"
        assert c.motion is None


def test_batching_does_not_change_frames(tmp_path):
    path = write_cfr(tmp_path / "v.mp4", 40, Fraction(25))
    one = list(chunk_frames(path, 4.0, motion_pairs=2, batch_chunks=1))
    many = list(chunk_frames(path, 4.0, motion_pairs=2, batch_chunks=16))
    assert len(one) == len(many) == 7
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a.frame, b.frame)
        np.testing.assert_array_equal(a.motion, b.motion)


def test_motion_frames_are_consecutive_around_the_middle(tmp_path):
    n = 40
    path = write_cfr(tmp_path / "v.mp4", n, Fraction(25))
    chunks = list(chunk_frames(path, 4.0, motion_pairs=5))
    for c in chunks:
        assert c.motion.shape == (6, H, W, 3)
        idx = [level(f) for f in c.motion]
        assert idx == list(range(idx[0], idx[0] + 6)), idx
        assert idx[0] >= 0 and idx[-1] <= n - 1
        assert level(c.frame) in idx
    # Centred on the middle frame (3 for chunk 0: 0.125 s * 25 fps), shifted inside the stream at its end.
    assert [level(f) for f in chunks[0].motion] == [1, 2, 3, 4, 5, 6]
    assert [level(f) for f in chunks[-1].motion] == [34, 35, 36, 37, 38, 39]
    assert level(chunks[3].motion[2]) == level(chunks[3].frame) == 21  # (3 + 0.5) / 4 s * 25 fps


def test_variable_frame_rate_uses_timestamps(tmp_path):
    # 1 s at 5 fps, then 2 s at 30 fps (pts in ms): 5 + 60 frames, 3 s.
    pts = [200 * i for i in range(5)] + [1000 + round(1000 * i / 30) for i in range(60)]
    path = write_av(tmp_path / "vfr.mp4", pts, Fraction(1, 1000))
    vr = VideoReader(path)
    assert vr.num_frames == 65
    np.testing.assert_allclose(vr.timestamps[:, 0], np.array(pts) / 1000, atol=2e-3)
    assert vr.duration == pytest.approx(3.0, abs=0.05)

    chunks = list(chunk_frames(vr, 4.0))
    assert len(chunks) == 12
    got = [level(c.frame) for c in chunks]
    # Middle of chunk i at (i + 0.5) / 4 s: frame t // 0.2 in the first second, 5 + (t - 1) * 30 after.
    mids = [(i + 0.5) / 4 for i in range(12)]
    expected = [int(t / 0.2) if t < 1 else 5 + int((t - 1) * 30) for t in mids]
    assert got == expected
    # An index / average-fps assumption would pick other frames.
    assert got != [min(int(t * vr.fps), 64) for t in mids]


def test_opencv_mjpg_avi(tmp_path):
    path = write_avi(tmp_path / "v.avi", 83, 25.0)
    chunks = list(chunk_frames(path, 4.0))
    assert len(chunks) == 14
    assert [level(c.frame) for c in chunks[:3]] == [3, 9, 15]


def test_unreadable_videos_raise_video_error_naming_the_file(tmp_path):
    good_mp4 = write_cfr(tmp_path / "good.mp4", 83, Fraction(25))
    good_avi = write_avi(tmp_path / "good.avi", 83, 25.0)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")

    # An .mp4 whose index (moov, at the end) is cut off fails when opened.
    cut_mp4 = truncate(good_mp4, tmp_path / "cut.mp4")
    with pytest.raises(VideoError, match="cut.mp4.*cannot open"):
        VideoReader(cut_mp4)
    # An .avi cut inside the JPEG header of frame 40 opens and fails while decoding: the error names the
    # chunks (those being decoded when it surfaced: decord's decoder thread reads ahead). Cut elsewhere
    # in a frame's data, FFmpeg may decode a damaged last frame without an error, which decord hides.
    data = good_avi.read_bytes()
    movi = data.index(b"movi")
    frames_at = [movi + m.start() for m in re.finditer(b"00dc", data[movi:])]
    cut_avi = tmp_path / "cut.avi"
    cut_avi.write_bytes(data[: frames_at[40] + 8 + 100])
    assert VideoReader(cut_avi).num_frames > 2
    with pytest.raises(VideoError, match=r"cut.avi: decoding failed at chunks \d+-\d+ of 7 "):
        list(chunk_frames(cut_avi, 4.0, batch_chunks=2))
    for bad in (garbage, empty, tmp_path / "missing.mp4"):
        with pytest.raises(VideoError, match=bad.name):
            list(chunk_frames(bad, 4.0))
    assert issubclass(VideoError, ValueError)


# ---------------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------------


def test_random_weights_need_the_flag():
    with pytest.raises(ValueError, match="allow_random"):
        build_backbone("resnet18", "random")
    net = build_backbone("resnet18", "random", allow_random=True)
    assert net.weights == "random" and net.random and net.dim == 512
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_missing_weights_file_says_where_to_put_it(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_backbone("resnet18", str(missing))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        expected = tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"  # IMAGENET1K_V2
        assert torchvision_cache_files("resnet50")[0] == expected
        with pytest.raises(FileNotFoundError, match=f"Put the file at {expected}"):
            build_backbone("resnet50", "imagenet")
    finally:
        torch.hub.set_dir(old)


def test_weights_from_torchvision_cache_and_from_a_file(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    ref = resnet18()
    sd = ref.state_dict()
    x = torch.randn(2, 3, 56, 56)
    with torch.inference_mode():
        ref.fc = torch.nn.Identity()
        expected = ref.eval()(x)

    # The torchvision cache, under the standard file name (never downloaded).
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(sd, cached)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        net = build_backbone("resnet18", "imagenet")
        assert build_backbone("resnet18", None).weights == net.weights == "imagenet:resnet18-f37072fd.pth"
    finally:
        torch.hub.set_dir(old)
    # A local state dict, with or without the classifier (and wrapped as training scripts save them).
    full, headless = tmp_path / "full.pth", tmp_path / "headless.pth"
    torch.save(sd, full)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items() if not k.startswith("fc.")}}, headless)
    nets = [net, build_backbone("resnet18", str(full)), build_backbone("resnet18", str(headless))]
    with torch.inference_mode():
        for n in nets:
            assert not n.random
            torch.testing.assert_close(n(x), expected)
    assert nets[1].weights == str(full)

    # Cross-modality init: the flow network's first conv is the mean RGB filter in every channel.
    flow = build_backbone("resnet18", str(full), in_channels=10)
    w = flow.net.conv1.weight
    assert w.shape == (64, 10, 7, 7) and "cross-modality" in flow.weights
    torch.testing.assert_close(w, sd["conv1.weight"].mean(1, keepdim=True).expand(-1, 10, -1, -1))
    torch.testing.assert_close(flow.net.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])

    # A state dict of another model is refused.
    other = tmp_path / "r34.pth"
    from torchvision.models import resnet34

    torch.save(resnet34().state_dict(), other)
    with pytest.raises(ValueError, match="does not fit"):
        build_backbone("resnet18", str(other))


# ---------------------------------------------------------------------------------------------------
# The extractor
# ---------------------------------------------------------------------------------------------------


def test_feature_extractor_rgb_and_flow(tmp_path):
    path = write_cfr(tmp_path / "v.mp4", 83, Fraction(25))
    torch.manual_seed(0)
    fe = FeatureExtractor(**TINY, rate=4.0, flow=True, flow_pairs=5, batch_chunks=4)
    out = fe(path)
    T = 14
    assert out["rgb"].shape == (T, 512) and out["rgb"].dtype == np.float32
    assert out["flow"].shape == (T, 512) and out["flow"].dtype == np.float32
    assert np.isfinite(out["rgb"]).all() and np.isfinite(out["flow"]).all()
    np.testing.assert_allclose(out["timestamps"], np.stack([np.arange(T), np.arange(1, T + 1)], 1) / 4)
    meta = out["meta"]
    assert meta["weights"] == "random" and meta["flow_weights"] == "random" and meta["random_weights"]
    assert meta["rate"] == 4.0 and meta["backbone"] == "resnet18"
    assert meta["fps"] == pytest.approx(25.0) and meta["duration"] == pytest.approx(3.32, abs=1e-3)
    # Chunks differ (the grey level rises), so features are not constant.
    assert np.abs(out["rgb"][0] - out["rgb"][-1]).max() > 1e-4

    # The per-chunk iterator gives the same vectors ([rgb, flow]), one chunk per batch or several.
    fe.batch_chunks = 1
    vectors = [c.vector for c in fe.iter_chunks(path)]
    assert len(vectors) == T
    torch.testing.assert_close(
        np.stack(vectors), np.concatenate([out["rgb"], out["flow"]], 1), rtol=1e-4, atol=1e-4
    )

    # bfloat16 autocast: float32 outputs close to the float32 run.
    fe.bf16, fe.batch_chunks = True, 8
    rgb16 = fe(path)["rgb"]
    assert rgb16.dtype == np.float32 and not np.array_equal(rgb16, out["rgb"])
    cos = (rgb16 * out["rgb"]).sum(1) / np.linalg.norm(rgb16, axis=1) / np.linalg.norm(out["rgb"], axis=1)
    assert cos.min() > 0.98

    with pytest.raises(VideoError, match="nothing.mp4"):
        fe(tmp_path / "nothing.mp4")


def test_flow_sees_motion():
    from oad.video import stacked_flow

    moving = np.stack([frame(i) for i in range(6)])  # the square moves 2 px to the right per frame
    still = np.stack([frame(0)] * 6)
    f = stacked_flow(moving)
    assert f.shape == (10, H, W)
    square_x = f[0::2, 22:30, :].max()  # x components, inside the square's rows
    assert square_x > 0.05
    assert np.abs(stacked_flow(still)).max() < 1e-3


def _three_videos(folder: Path) -> None:
    folder.mkdir()
    write_cfr(folder / "a.mp4", 83, Fraction(25))
    (folder / "b_bad.mp4").write_bytes(b"not a video at all" * 100)
    write_avi(folder / "c.avi", 30, 25.0)
    (folder / "notes.txt").write_text("not a video")


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*.npy")}


def test_extract_folder_skips_failures_and_resumes(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "features"
    _three_videos(videos)
    fe = FeatureExtractor(**TINY, rate=4.0, batch_chunks=8)

    s = extract_folder(videos, out, fe, progress=False)
    assert s.done == ["a", "c"] and s.skipped == [] and list(s.failed) == ["b_bad"] and not s.ok
    assert "b_bad.mp4" in s.failed["b_bad"]
    assert np.load(out / "rgb_resnet18" / "a.npy").shape == (14, 512)
    assert np.load(out / "rgb_resnet18" / "c.npy").shape == (5, 512)  # 1.2 s
    assert sorted(p.name for p in (out / "rgb_resnet18").iterdir()) == ["a.npy", "c.npy"]
    assert not (out / "flow_resnet18").exists()
    m = json.loads((out / MANIFEST).read_text())
    assert m["rate"] == 4.0 and m["backbone"] == "resnet18" and m["rgb_dim"] == 512
    assert m["backbone_weights"] == "random" and m["random_weights"] is True
    assert m["videos"]["a"]["num_chunks"] == 14 and m["videos"]["c"]["num_chunks"] == 5
    assert m["videos"]["a"]["status"] == "complete"
    assert set(m["failures"]) == {"b_bad"} and "b_bad.mp4" in m["failures"]["b_bad"]["error"]
    assert list(out.rglob("*.tmp")) == []

    before = _mtimes(out)
    s2 = extract_folder(videos, out, fe, progress=False)
    assert s2.skipped == ["a", "c"] and s2.done == [] and list(s2.failed) == ["b_bad"]
    assert _mtimes(out) == before
    assert list(out.rglob("*.tmp")) == []

    # A deleted feature file is redone; a stale temporary file of a killed run is removed.
    (out / "rgb_resnet18" / "c.npy").unlink()
    (out / "rgb_resnet18" / ".c.npy.999.tmp").write_bytes(b"partial")
    s3 = extract_folder(videos, out, fe, progress=False)
    assert s3.done == ["c"] and s3.skipped == ["a"]
    assert list(out.rglob("*.tmp")) == []

    # Other settings into the same folder are refused rather than mixed.
    with pytest.raises(ValueError, match="other settings"):
        extract_folder(videos, out, FeatureExtractor(**TINY, rate=3.0), progress=False)


def test_extract_folder_refuses_nonfinite_features_and_a_broken_manifest(tmp_path, monkeypatch):
    """A video whose backbone gives NaN/Inf is a failed video (no feature file); a truncated manifest of an
    earlier run is named, and nothing is extracted into that folder."""
    videos, out = tmp_path / "videos", tmp_path / "features"
    videos.mkdir()
    write_cfr(videos / "a.mp4", 40, Fraction(25))
    write_cfr(videos / "b.mp4", 30, Fraction(25))
    fe = FeatureExtractor(**TINY, rate=4.0, batch_chunks=8)
    forward = FeatureExtractor._forward

    calls: list[int] = []

    def nan_in_b(self, net, x):
        y = forward(self, net, x)
        calls.append(len(y))
        if len(calls) == 2:  # the second video (a: 7 chunks, b: 5, one batch each)
            y[2, :3] = np.nan
        return y

    monkeypatch.setattr(FeatureExtractor, "_forward", nan_in_b)
    s = extract_folder(videos, out, fe, progress=False)
    assert s.done == ["a"] and list(s.failed) == ["b"]
    assert s.failed["b"] == f"video {videos / 'b.mp4'}: the rgb backbone gave NaN/Inf features for 1 of 5 chunks (first: 2)"
    assert sorted(p.name for p in (out / "rgb_resnet18").iterdir()) == ["a.npy"]
    assert json.loads((out / MANIFEST).read_text())["failures"]["b"]["error"] == s.failed["b"]

    (out / MANIFEST).write_text((out / MANIFEST).read_text()[:40])
    before = _mtimes(out)
    with pytest.raises(ValueError, match=f"^{re.escape(str(out / MANIFEST))}: not valid JSON .*repair or delete it"):
        extract_folder(videos, out, fe, progress=False)
    assert _mtimes(out) == before


def test_extract_config_composes(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "features"
    videos.mkdir()
    write_cfr(videos / "a.mp4", 20, Fraction(25))
    cfg = compose_cfg(
        "extract",
        [
            f"videos={videos}",
            f"output={out}",
            "backbone.name=resnet18",
            "backbone.weights=random",
            "backbone.allow_random=true",
            "flow=true",
            "flow_backbone.pairs=2",
            "resize=64",
            "crop=56",
            "progress=false",
        ],
        tmp_path / "run",
    )
    s = extract(cfg)
    assert s.ok and s.done == ["a"]
    assert np.load(out / "rgb_resnet18" / "a.npy").shape == (4, 512)
    assert np.load(out / "flow_resnet18" / "a.npy").shape == (4, 512)
    m = json.loads((out / MANIFEST).read_text())
    assert m["flow_weights"] == "random" and m["flow_pairs"] == 2
    assert m["streams"] == ["rgb_resnet18", "flow_resnet18"]

    # Random weights without backbone.allow_random=true: a clear error before anything is written.
    cfg.backbone.allow_random = False
    cfg.output = str(tmp_path / "other")
    with pytest.raises(ValueError, match="allow_random"):
        extract(cfg)
    assert not (tmp_path / "other").exists()


def test_tool_exit_code_and_summary(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "features"
    _three_videos(videos)
    cmd = [
        sys.executable,
        str(REPO / "tools" / "extract_features.py"),
        f"videos={videos}",
        f"output={out}",
        "backbone.name=resnet18",
        "backbone.weights=random",
        "backbone.allow_random=true",
        "resize=64",
        "crop=56",
        "progress=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-1].startswith("extracted 2/3 videos (2 new, 0 skipped, 1 failed)")
    assert any(line.startswith("FAILED b_bad:") for line in lines)
    assert sorted(p.name for p in (out / "rgb_resnet18").iterdir()) == ["a.npy", "c.npy"]

