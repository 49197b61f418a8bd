"""Readers of the public layouts (oad/data/readers.py) and the preparation tools (oad/data/prepare.py),
on datasets built in tmp_path from the real THUMOS'14 label arrays (../shared/data, skipped if absent)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oad.data import prepare
from oad.data.readers import DataError, LSTRSource, OadTRSource, TRNSource, make_source, packaged_info
from tests.conftest import REPO, TINY, compose_cfg

THUMOS = packaged_info("THUMOS")
NAMES = THUMOS["class_names"]
C = len(NAMES)
RGB, FLOW = 16, 8
LSTR_DIRS = {"rgb": "rgb_kinetics_resnet50", "flow": "flow_kinetics_bninception"}
TRN_DIRS = {"rgb": "resnet200-fc", "flow": "bn_inception"}


# -- building the three layouts -----------------------------------------------------------------------
def make_videos(labels: dict, sessions: list[str], lengths: list[int], seed: int = 0) -> dict:
    """session -> (rgb, flow, one-hot targets) from the real labels, truncated to ``lengths``."""
    rng = np.random.default_rng(seed)
    out = {}
    for s, T in zip(sessions, lengths):
        lab = labels[s][:T].astype(np.int64)
        out[s] = (rng.standard_normal((len(lab), RGB)).astype(np.float32),
                  rng.standard_normal((len(lab), FLOW)).astype(np.float32),
                  np.eye(C, dtype=np.float32)[lab])
    return out


def write_folders(root: Path, videos: dict, dirs: dict, target_dir: str) -> Path:
    for s, (rgb, flow, target) in videos.items():
        for arr, d in ((rgb, dirs["rgb"]), (flow, dirs["flow"]), (target, target_dir)):
            (root / d).mkdir(parents=True, exist_ok=True)
            np.save(root / d / f"{s}.npy", arr)
    return root


def write_lstr(root: Path, videos: dict, splits: dict) -> Path:
    write_folders(root, videos, LSTR_DIRS, "target_perframe")
    info = {"class_names": NAMES, "num_classes": C, "ignore_index": 21, "metrics": "AP", "fps": 4,
            **{f"{k}_session_set": v for k, v in splits.items()}}
    (root / "data_info.json").write_text(json.dumps({"THUMOS": info}))
    return root


def write_trn(root: Path, videos: dict, splits: dict) -> Path:
    write_folders(root, videos, TRN_DIRS, "target")
    info = {"class_index": NAMES, **{f"{k}_session_set": v for k, v in splits.items()}}
    (root / "data_info.json").write_text(json.dumps({"THUMOS": info}))
    return root


def write_oadtr(root: Path, videos: dict, splits: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, tag in (("train", "val"), ("test", "test")):
        feats = {s: {"rgb": videos[s][0], "flow": videos[s][1]} for s in splits[split]}
        annos = {s: {"anno": videos[s][2], "feature_length": len(videos[s][2])} for s in splits[split]}
        with open(root / f"thumos_all_feature_{tag}_tsn_v2.pickle", "wb") as f:
            pickle.dump(feats, f)
        with open(root / f"thumos_{tag}_anno.pickle", "wb") as f:
            pickle.dump(annos, f)
    info = {"class_index": NAMES, **{f"{k}_session_set": v for k, v in splits.items()}}
    (root / "data_info_new.json").write_text(json.dumps({"THUMOS": info, "TVSERIES": {}}))
    return root


WRITERS = {"lstr": write_lstr, "trn": write_trn, "oadtr": write_oadtr}
READERS = {"lstr": LSTRSource, "trn": TRNSource, "oadtr": OadTRSource}


@pytest.fixture
def small(thumos_val_labels):
    """8 real-label videos of 40..89 chunks: 5 train, 3 test."""
    sessions = sorted(thumos_val_labels)[:8]
    videos = make_videos(thumos_val_labels, sessions, [40 + 7 * i for i in range(8)])
    return videos, {"train": sessions[:5], "test": sessions[5:]}


@pytest.fixture
def lstr_root(tmp_path, small):
    videos, splits = small
    return write_lstr(tmp_path / "lstr", videos, splits), videos, splits


# -- the same data in three layouts --------------------------------------------------------------------
def test_three_layouts_give_identical_videos(tmp_path, small):
    videos, splits = small
    loaded = {}
    for layout, write in WRITERS.items():
        src = READERS[layout](write(tmp_path / layout, videos, splits))
        assert (src.class_names, src.ignore_index, src.metric, src.fps) == (NAMES, 21, "AP", 4.0)
        loaded[layout] = {split: src.load(split) for split in ("train", "test")}
    for split in ("train", "test"):
        ref = loaded["lstr"][split]
        assert [v.name for v in ref] == splits[split]
        for v in ref:
            rgb, flow, target = videos[v.name]
            assert isinstance(v.streams[0], np.memmap)  # LSTR features are memory-mapped
            assert v.targets.dtype == np.float32
            np.testing.assert_array_equal(v.features(), np.concatenate([rgb, flow], 1))
            np.testing.assert_array_equal(v.targets, target)
        for layout in ("trn", "oadtr"):
            other = loaded[layout][split]
            assert [v.name for v in other] == [v.name for v in ref]
            for a, b in zip(ref, other):
                assert len(a.streams) == len(b.streams) == 2
                for sa, sb in zip(a.streams, b.streams):
                    np.testing.assert_array_equal(np.asarray(sa), np.asarray(sb))
                np.testing.assert_array_equal(a.targets, b.targets)
                assert b.targets.dtype == np.float32


@pytest.mark.parametrize("layout", ["lstr", "trn", "oadtr"])
def test_stream_selection(tmp_path, small, layout):
    videos, splits = small
    root = WRITERS[layout](tmp_path / layout, videos, splits)
    rgb_only = make_source(layout, root, dataset="THUMOS", streams=["rgb"],
                           trn={"streams": TRN_DIRS}).load("train")
    assert [s.shape[1] for s in rgb_only[0].streams] == [RGB]
    flow_first = make_source(layout, root, dataset="THUMOS", streams=["flow", "rgb"],
                             trn={"streams": TRN_DIRS}).load("test")
    assert [s.shape[1] for s in flow_first[0].streams] == [FLOW, RGB]


def test_real_labels_give_the_documented_chunk_counts(tmp_path, thumos_val_labels):
    """All 200 training videos of THUMOS'14 (real labels, tiny features), with the packaged facts."""
    assert sorted(thumos_val_labels) == sorted(THUMOS["sessions"]["train"])
    total = sum(len(v) for v in thumos_val_labels.values())
    assert total == 203_363 and len(thumos_val_labels) == 200  # the README's count
    root = tmp_path / "thumos"
    for s, lab in thumos_val_labels.items():
        T = len(lab)
        for d, dim in (("rgb_kinetics_resnet50", 2), ("flow_kinetics_bninception", 1)):
            (root / d).mkdir(parents=True, exist_ok=True)
            np.save(root / d / f"{s}.npy", np.zeros((T, dim), np.float32))
        (root / "target_perframe").mkdir(exist_ok=True)
        np.save(root / "target_perframe" / f"{s}.npy", np.eye(C, dtype=np.float32)[lab])
    # No data_info.json in root: class names and sessions come from oad/data/info/thumos14.json.
    src = LSTRSource(root, split_sessions={"train": THUMOS["sessions"]["train"]})
    vids = src.load("train")
    assert len(vids) == 200
    assert {v.name: v.num_chunks for v in vids} == {s: len(v) for s, v in thumos_val_labels.items()}
    assert sum(v.num_chunks for v in vids) == total
    for v in vids[:20]:
        np.testing.assert_array_equal(v.targets.argmax(1), thumos_val_labels[v.name])


# -- targets from temporal annotations -------------------------------------------------------------------
def runs(labels: np.ndarray):
    """(value, start, stop) of each maximal run of equal labels."""
    edges = np.flatnonzero(np.diff(labels)) + 1
    starts = np.r_[0, edges]
    stops = np.r_[edges, len(labels)]
    return [(int(labels[a]), int(a), int(b)) for a, b in zip(starts, stops)]


def test_targets_rebuilt_from_segments_match_the_real_labels(tmp_path, thumos_val_labels):
    ann = tmp_path / "annotations"
    ann.mkdir()
    lines: dict[int, list[str]] = {}
    for s, lab in thumos_val_labels.items():
        for c, a, b in runs(lab):
            if c:
                lines.setdefault(c, []).append(f"{s} {a / 4:.2f} {b / 4:.2f}")
    for c, ls in lines.items():
        (ann / f"{NAMES[c]}_val.txt").write_text("\n".join(ls) + "\n")
    durations = tmp_path / "durations.csv"
    durations.write_text("video,duration\n" + "".join(f"{s},{len(v) / 4}\n" for s, v in thumos_val_labels.items()))
    out = tmp_path / "target_perframe"
    summary = prepare.build_targets(ann, out, dataset="THUMOS", durations=durations, suffix="_val")
    assert summary["videos"] == 200 and summary["chunks"] == 203_363 and summary["written"] == 200
    for s, lab in thumos_val_labels.items():
        np.testing.assert_array_equal(np.load(out / f"{s}.npy"), np.eye(C, dtype=np.float32)[lab], err_msg=s)
    again = prepare.build_targets(ann, out, dataset="THUMOS", durations=durations, suffix="_val")
    assert again["written"] == 0 and again["kept"] == 200  # resumable


def test_chunk_rule_and_precedence():
    # chunk i covers [i/4, (i+1)/4): [2.3, 4.1] s -> floor(9.2)=9 .. ceil(16.4)-1=16
    assert prepare.chunk_span(2.3, 4.1, 4, 100) == (9, 17)
    assert prepare.chunk_span(2.5, 3.0, 4, 100) == (10, 12)  # exact boundaries stay exact
    assert prepare.chunk_span(24.0, 30.0, 4, 100) == (96, 100)  # clipped to the video
    segs = [prepare.Segment("v", 3, 1.0, 3.0), prepare.Segment("v", 5, 2.0, 4.0),  # overlap: later start wins
            prepare.Segment("v", 21, 0.0, 6.0)]  # Ambiguous only where no action
    t = prepare.targets_from_segments(segs, {"v": 28, "w": 3}, C, fps=4, ambiguous=21)
    lab = t["v"].argmax(1)
    assert lab.tolist() == [21] * 4 + [3] * 4 + [5] * 8 + [21] * 8 + [0] * 4
    assert t["w"].argmax(1).tolist() == [0, 0, 0] and t["v"].sum(1).tolist() == [1.0] * 28


def test_oadtr_to_lstr_conversion(tmp_path, small):
    videos, splits = small
    src = write_oadtr(tmp_path / "oadtr", videos, splits)
    dst = tmp_path / "converted"
    summary = prepare.oadtr_to_lstr(src, dst)
    assert summary["splits"]["train"]["videos"] == 5 and summary["splits"]["test"]["written"] == 9
    converted, original = LSTRSource(dst), OadTRSource(src)  # the stream folders are in data_info.json
    for split in ("train", "test"):
        for a, b in zip(converted.load(split), original.load(split), strict=True):
            assert a.name == b.name
            np.testing.assert_array_equal(a.features(), b.features())
            np.testing.assert_array_equal(a.targets, b.targets)
    os.remove(dst / "rgb_oadtr" / f"{splits['test'][0]}.npy")  # an interrupted run, resumed
    again = prepare.oadtr_to_lstr(src, dst)
    assert again["splits"]["train"]["written"] == 0 and again["splits"]["test"]["written"] == 1


def test_prepare_cli_parser(tmp_path, small):
    videos, splits = small
    src = write_oadtr(tmp_path / "oadtr", videos, splits)
    out = prepare.main(["oadtr_to_lstr", f"src={src}", f"dst={tmp_path / 'x'}", "stream_dirs={rgb: r, flow: f}"])
    assert out["splits"]["train"]["videos"] == 5 and (tmp_path / "x" / "r").is_dir()
    with pytest.raises(SystemExit, match="usage"):
        prepare.main([])


# -- broken inputs ---------------------------------------------------------------------------------------
def rgb_file(root: Path, s: str) -> Path:
    return root / LSTR_DIRS["rgb"] / f"{s}.npy"


def test_missing_session_file(lstr_root):
    root, _, splits = lstr_root
    s = splits["train"][1]
    os.remove(root / LSTR_DIRS["flow"] / f"{s}.npy")
    with pytest.raises(DataError, match=rf"flow_kinetics_bninception/{s}\.npy: missing \(stream 'flow'\)"):
        LSTRSource(root).load("train")


def test_problem_in_the_test_split_fails_before_training(lstr_root):
    root, _, splits = lstr_root
    os.remove(root / "target_perframe" / f"{splits['test'][0]}.npy")
    with pytest.raises(DataError, match=rf"target_perframe/{splits['test'][0]}\.npy: missing \(targets\)"):
        LSTRSource(root).load("train")


def test_length_mismatch_beyond_tolerance(lstr_root):
    root, videos, splits = lstr_root
    s = splits["train"][0]
    np.save(rgb_file(root, s), np.zeros((len(videos[s][2]) + 3, RGB), np.float32))
    with pytest.raises(DataError, match=rf"{s}\.npy: feature length \d+ differs from target length \d+ .* by \+3 chunks"):
        LSTRSource(root).load("train")
    assert LSTRSource(root, length_tolerance=3).load("train")[0].num_chunks == len(videos[s][2])


def test_length_mismatch_within_tolerance_truncates(lstr_root, caplog):
    root, videos, splits = lstr_root
    s = splits["train"][2]
    T = len(videos[s][2])
    np.save(rgb_file(root, s), np.ones((T - 1, RGB), np.float32))
    with caplog.at_level(logging.INFO, logger="oad.data.readers"):
        v = {v.name: v for v in LSTRSource(root).load("train")}[s]
    assert v.num_chunks == T - 1 and all(x.shape[0] == T - 1 for x in v.streams)
    np.testing.assert_array_equal(v.targets, videos[s][2][: T - 1])
    assert "truncated" in caplog.text and s in caplog.text


@pytest.mark.parametrize("bad, match", [(np.nan, "non-finite values: 2 NaN among"), (np.inf, "non-finite values: 2 Inf among")])
def test_non_finite_values(lstr_root, bad, match):
    root, videos, splits = lstr_root
    s = splits["test"][1]
    rgb = videos[s][0].copy()
    rgb[3, 1] = rgb[7, 0] = bad
    np.save(rgb_file(root, s), rgb)
    with pytest.raises(DataError, match=rf"{s}\.npy: {match}"):
        LSTRSource(root).load("train")


def test_wrong_feature_size_in_one_video(lstr_root):
    root, videos, splits = lstr_root
    s = splits["train"][3]
    np.save(rgb_file(root, s), np.zeros((len(videos[s][2]), RGB + 1), np.float32))
    with pytest.raises(DataError, match=rf"{s}\.npy: feature size {RGB + 1}, expected {RGB}"):
        LSTRSource(root).load("train")


def test_wrong_class_count(lstr_root):
    root, videos, splits = lstr_root
    s = splits["train"][0]
    np.save(root / "target_perframe" / f"{s}.npy", videos[s][2][:, :21])
    with pytest.raises(DataError, match=rf"target_perframe/{s}\.npy: targets have 21 classes, expected 22"):
        LSTRSource(root).load("train")


def test_empty_video(lstr_root):
    root, _, splits = lstr_root
    s = splits["train"][4]
    for d, dim in ((LSTR_DIRS["rgb"], RGB), (LSTR_DIRS["flow"], FLOW), ("target_perframe", C)):
        np.save(root / d / f"{s}.npy", np.zeros((0, dim), np.float32))
    with pytest.raises(DataError, match=rf"target_perframe/{s}\.npy: empty video \(0 chunks\)"):
        LSTRSource(root).load("train")


def test_all_problems_reported_at_once_or_skipped(lstr_root, caplog):
    root, videos, splits = lstr_root
    a, b = splits["train"][0], splits["test"][2]
    os.remove(rgb_file(root, a))
    np.save(root / "target_perframe" / f"{b}.npy", videos[b][2][:, :5])
    with pytest.raises(DataError, match=r"2 problems") as e:
        LSTRSource(root).load("test")
    assert len(e.value.problems) == 2 and a in str(e.value) and b in str(e.value)
    with caplog.at_level(logging.WARNING, logger="oad.data.readers"):
        src = LSTRSource(root, skip_bad_videos=True)
        train, test = src.load("train"), src.load("test")
    assert [v.name for v in train] == splits["train"][1:] and [v.name for v in test] == splits["test"][:2]
    assert f"skipping video {a!r}" in caplog.text and f"skipping video {b!r}" in caplog.text
    assert "missing" in caplog.text and "5 classes" in caplog.text


def test_oadtr_missing_session_and_file(tmp_path, small):
    videos, splits = small
    root = write_oadtr(tmp_path / "oadtr", videos, splits)
    feats = root / "thumos_all_feature_val_tsn_v2.pickle"
    table = pickle.loads(feats.read_bytes())
    del table[splits["train"][2]]["flow"]
    feats.write_bytes(pickle.dumps(table))
    with pytest.raises(DataError, match=rf"thumos_all_feature_val_tsn_v2\.pickle\['{splits['train'][2]}'\]\['flow'\]: missing"):
        OadTRSource(root).load("train")
    os.remove(root / "thumos_test_anno.pickle")
    with pytest.raises(DataError, match=r"thumos_test_anno\.pickle: missing \(OadTR pickle\)"):
        OadTRSource(root).load("train")


def test_trn_integer_targets_and_missing_folder(tmp_path, small):
    videos, splits = small
    root = write_trn(tmp_path / "trn", videos, splits)
    s = splits["train"][0]
    np.save(root / "target" / f"{s}.npy", videos[s][2].argmax(1).astype(np.int64))  # (T,) labels
    np.testing.assert_array_equal(TRNSource(root).load("train")[0].targets, videos[s][2])
    with pytest.raises(DataError, match=r"no folder .*rgb_kinetics_resnet50 \(stream 'rgb'\)"):
        LSTRSource(root)
    with pytest.raises(DataError, match="unknown data layout"):
        make_source("pickles", root, dataset="THUMOS")


def test_nonfinite_count_is_blockwise():
    from oad.data import readers

    a = np.zeros((1000, 3), np.float32)
    a[999, 2], a[0, 0], a[500, 1] = np.nan, np.inf, -np.inf
    old, readers._SCAN_ELEMENTS = readers._SCAN_ELEMENTS, 30  # 10 rows a block
    try:
        assert readers.count_nonfinite(a) == (1, 2)
    finally:
        readers._SCAN_ELEMENTS = old


# -- through the real entry points -----------------------------------------------------------------------
# The shared tiny settings without its synthetic-data keys; "++" sets trainer keys whether or not the
# trainer config lists them.
TINY_TRAINER = [f"++{o}" if o.startswith("trainer.") else o for o in TINY if not o.startswith("data.")]


@pytest.mark.parametrize("layout", ["lstr", "oadtr", "trn"])
def test_train_one_epoch_on_each_layout(tmp_path, small, layout):
    pytest.importorskip("oad.metrics")
    from oad.tasks import train

    videos, splits = small
    root = WRITERS[layout](tmp_path / layout, videos, splits)
    cfg = compose_cfg("train", [*TINY_TRAINER, "size=demo", "data=thumos14", f"data.root={root}",
                                f"data.layout={layout}", "data.batch_size=16", "trainer.limit_train_batches=2",
                                "trainer.limit_test_batches=1", "data.val_split=null"], tmp_path / "out")
    result = train(cfg)
    m = result["metrics"]
    assert m["metric"] == "mAP" and "mAP" in m["headline"]
    assert (tmp_path / "out" / "metrics.json").is_file()


@pytest.mark.slow  # a fresh interpreter importing torch and Lightning: seconds, most of this file's time
def test_cli_fails_fast_naming_the_broken_file(lstr_root, tmp_path):
    root, videos, splits = lstr_root
    s = splits["train"][1]
    rgb = videos[s][0].copy()
    rgb[0, 0] = np.nan
    np.save(rgb_file(root, s), rgb)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), "data=thumos14", f"data.root={root}", "data.layout=lstr",
         "trainer=cpu", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: 1 problem in ")
    assert f"{rgb_file(root, s)}: non-finite values: 1 NaN among" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("name, layout, dims", [("thumos14", "lstr", {}), ("tvseries", "lstr", {}),
                                                 ("hdd", "trn", {"inceptionresnetv2": 6, "sensor": 8})])
def test_dataset_configs_build_their_readers(tmp_path, name, layout, dims):
    """Each data config, with the packaged facts (no data_info file in root) and two fake videos."""
    from oad.tasks import build_datamodule

    cfg0 = compose_cfg("train", [f"data={name}", "data.root=/nowhere"], tmp_path / "out")
    facts = packaged_info(cfg0.data.source.dataset)
    sessions = {"train": facts["sessions"]["train"][:1], "test": facts["sessions"]["test"][:1]}
    block = cfg0.data.source[layout]
    folders = dims or {f: 4 for f in (block.streams or LSTR_DIRS).values()}
    root = tmp_path / name
    for s in sessions["train"] + sessions["test"]:
        for folder, d in folders.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            np.save(root / folder / f"{s}.npy", np.ones((12, d), np.float32))
        (root / block.target_dir).mkdir(exist_ok=True)
        np.save(root / block.target_dir / f"{s}.npy", np.eye(len(facts["class_names"]), dtype=np.float32)[np.arange(12) % 3])
    split_override = "{train: [%s], test: [%s]}" % (sessions["train"][0], sessions["test"][0])
    cfg = compose_cfg("train", [f"data={name}", f"data.root={root}", f"data.layout={layout}",
                                f"data.source.split_sessions={split_override}"], tmp_path / "out")
    dm = build_datamodule(cfg)
    dm.setup("fit")
    assert dm.class_names == facts["class_names"] and dm.metric == facts.get("metric", "AP")
    assert dm.ignore_index == (None if facts["ignore_index"] < 0 else facts["ignore_index"])
    assert dm.in_dim == sum(folders.values())


# -- feature maps (TRN's HDD camera features) ----------------------------------------------------------
def write_hdd_trn_maps(root: Path, sessions: list[str], lengths: list[int], seed: int = 0) -> dict:
    """TRN's HDD layout at toy size: inceptionresnetv2/ (T, 6, 2, 3) maps, sensor/ (T, 8), target/ (T,)."""
    rng = np.random.default_rng(seed)
    out = {}
    for folder in ("inceptionresnetv2", "sensor", "target"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for s, T in zip(sessions, lengths):
        maps = rng.standard_normal((T, 6, 2, 3)).astype(np.float16)
        np.save(root / "inceptionresnetv2" / f"{s}.npy", maps)
        np.save(root / "sensor" / f"{s}.npy", rng.standard_normal((T, 8)).astype(np.float32))
        np.save(root / "target" / f"{s}.npy", rng.integers(0, 12, T).astype(np.int64))
        out[s] = maps
    return out


def test_feature_maps_are_refused_with_the_pool_command_then_pooled(tmp_path):
    facts = packaged_info("HDD")
    sessions = facts["sessions"]["train"][:2] + facts["sessions"]["test"][:1]
    root = tmp_path / "hdd"
    maps = write_hdd_trn_maps(root, sessions, [7, 600, 5])
    splits = {"train": sessions[:2], "test": sessions[2:]}
    streams = {"camera": "inceptionresnetv2", "sensor": "sensor"}

    with pytest.raises(DataError, match=r"inceptionresnetv2/.*\.npy: features have shape \(7, 6, 2, 3\), expected "
                                        r"\(T, d\).*prepare_data.py pool"):
        TRNSource(root, dataset="HDD", streams=streams, split_sessions=splits).load("train")

    summary = prepare.pool_maps(root / "inceptionresnetv2", root / "camera_mean", block=256)  # 600 chunks: 3 blocks
    assert summary == {"videos": 3, "chunks": 612, "written": 3, "kept": 0, "dim": 6, "failed": []}
    src = TRNSource(root, dataset="HDD", streams={"camera": "camera_mean", "sensor": "sensor"}, split_sessions=splits)
    video = {v.name: v for v in src.load("train")}[sessions[1]]
    assert [s.shape for s in video.streams] == [(600, 6), (600, 8)]
    np.testing.assert_allclose(video.streams[0], maps[sessions[1]].astype(np.float32).mean(axis=(2, 3)), rtol=1e-6)
    assert prepare.pool_maps(root / "inceptionresnetv2", root / "camera_mean")["kept"] == 3  # resumable
    mx = prepare.pool_maps(root / "inceptionresnetv2", root / "camera_max", how="max")
    assert mx["written"] == 3
    np.testing.assert_array_equal(np.load(root / "camera_max" / f"{sessions[0]}.npy"),
                                  maps[sessions[0]].astype(np.float32).max(axis=(2, 3)))


def test_pool_cli_reports_bad_files_and_writes_the_others(tmp_path):
    src = tmp_path / "maps"
    write_hdd_trn_maps(tmp_path, ["a", "b", "c"], [4, 5, 6])
    (tmp_path / "inceptionresnetv2").rename(src)
    good = np.load(src / "b.npy")
    np.save(src / "d.npy", np.ones((3, 6), np.float32))  # already vectors
    np.save(src / "e.npy", np.ones((3, 5, 2, 2), np.float32))  # other channel count
    (src / "c.npy").write_bytes((src / "c.npy").read_bytes()[:-20])  # truncated
    dst = tmp_path / "pooled"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "prepare_data.py"), "pool", f"src={src}", f"dst={dst}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "3 of 5 files" in proc.stderr and "Traceback" not in proc.stderr
    for name, problem in (("c", "cannot be read"), ("d", "shape (3, 6): expected per-chunk maps"),
                          ("e", "5 channels, expected 6")):
        assert f"{src / name}.npy: {problem}" in proc.stderr, proc.stderr
    assert sorted(p.name for p in dst.iterdir()) == ["a.npy", "b.npy"]  # no partial files
    np.testing.assert_allclose(np.load(dst / "b.npy"), good.astype(np.float32).mean(axis=(2, 3)), rtol=1e-6)
