"""tools/eval.py on prediction files: scikit-learn's mAP on a THUMOS-sized file, mcAP on a 31-class
file without ignore index, clear errors on bad files, the printed last line."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from oad.tasks import evaluate
from tests.conftest import REPO, compose_cfg


def thumos_sized(rng, num_sessions=213, total=225_222, C=22):
    lengths = rng.multinomial(total - num_sessions, np.ones(num_sessions) / num_sessions) + 1
    scores, targets = {}, {}
    for i, T in enumerate(lengths):
        lab = np.where(rng.random(T) < 0.65, 0, rng.integers(1, C, T))
        t = np.eye(C, dtype=np.float32)[lab]
        s = rng.random((T, C)).astype(np.float32) + 0.5 * t
        s = np.round(s, 2)  # plenty of ties
        scores[f"video_test_{i:07d}"], targets[f"video_test_{i:07d}"] = s, t
    return scores, targets


def write(path, scores, targets):
    with open(path, "wb") as f:
        pickle.dump({"perframe_pred_scores": scores, "perframe_gt_targets": targets}, f)
    return path


def run_eval(tmp_path, overrides):
    cfg = compose_cfg("eval", overrides, tmp_path / "run")
    return evaluate(cfg)["metrics"]


def test_thumos_sized_file_equals_sklearn(tmp_path):
    rng = np.random.default_rng(0)
    scores, targets = thumos_sized(rng)
    p = write(tmp_path / "p.pkl", scores, targets)
    m = run_eval(tmp_path, [f"predictions={p}", "protocols=[all]"])
    S = np.concatenate([scores[k] for k in sorted(scores)])
    T = np.concatenate([targets[k] for k in sorted(targets)])
    keep = T[:, 21] == 0
    aps = [average_precision_score(T[keep, c], S[keep, c]) for c in range(1, 21) if T[keep, c].sum() > 0]
    assert m["protocols"]["all"]["num_chunks_scored"] == 225_222  # every chunk (Ambiguous removed inside AP)
    assert abs(m["headline"]["mAP"] - float(np.mean(aps))) < 1e-9
    assert m["ignore_index"] == 21  # auto for a 22-class file


def test_tvseries_style_mcap_without_ignore_index(tmp_path):
    rng = np.random.default_rng(1)
    C = 31
    scores, targets = {}, {}
    for i in range(7):
        T = int(rng.integers(200, 400))
        lab = np.where(rng.random(T) < 0.7, 0, rng.integers(1, C, T))
        targets[f"ep{i}"] = np.eye(C, dtype=np.float32)[lab]
        scores[f"ep{i}"] = rng.random((T, C)).astype(np.float32) + 0.3 * targets[f"ep{i}"]
    p = write(tmp_path / "tv.pkl", scores, targets)
    m = run_eval(tmp_path, [f"predictions={p}", "metric=cAP", "ignore_index=null"])
    assert m["metric"] == "mcAP" and m["ignore_index"] is None
    rep = m["protocols"]["all"]
    assert rep["num_chunks_scored"] == sum(len(v) for v in targets.values())  # nothing removed
    assert len(rep["per_class_AP"]) == 30 and 0 < rep["mcAP"] < 1
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["headline"]["mcAP"] == pytest.approx(rep["mcAP"])


@pytest.mark.parametrize("case,match", [
    ("shape", r"video_b.*shape|shape.*video_b"),
    ("missing", r"only_in_scores"),
    ("nan", r"video_a.*NaN|NaN.*video_a"),
    ("classes", r"class_names|22|21"),
])
def test_bad_prediction_files_are_named(tmp_path, case, match):
    rng = np.random.default_rng(2)
    t = np.eye(22, dtype=np.float32)[rng.integers(0, 21, 50)]
    scores = {"video_a": rng.random((50, 22)), "video_b": rng.random((50, 22))}
    targets = {"video_a": t, "video_b": t.copy()}
    extra = []
    if case == "shape":
        scores["video_b"] = scores["video_b"][:40]
    elif case == "missing":
        scores["only_in_scores"] = rng.random((50, 22))
    elif case == "nan":
        scores["video_a"][3, 4] = np.nan
    elif case == "classes":
        extra = ["class_names=[a,b,c]"]
    p = write(tmp_path / "bad.pkl", scores, targets)
    with pytest.raises(ValueError, match=match):
        run_eval(tmp_path, [f"predictions={p}", *extra])


def test_not_a_predictions_file(tmp_path):
    (tmp_path / "x.pkl").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="x.pkl: not a readable pickle"):
        run_eval(tmp_path, [f"predictions={tmp_path / 'x.pkl'}"])
    with open(tmp_path / "y.pkl", "wb") as f:
        pickle.dump({"scores": {}}, f)
    with pytest.raises(ValueError, match="y.pkl: expected a dict with 'perframe_pred_scores'"):
        run_eval(tmp_path, [f"predictions={tmp_path / 'y.pkl'}"])


def test_cli_prints_table_and_last_line(tmp_path):
    rng = np.random.default_rng(3)
    scores, targets = thumos_sized(rng, num_sessions=5, total=2000)
    p = write(tmp_path / "p.pkl", scores, targets)
    out = subprocess.run([sys.executable, str(REPO / "tools" / "eval.py"), f"predictions={p}",
                          f"output={tmp_path / 'm.json'}", f"hydra.run.dir={tmp_path / 'run'}", "plot=true"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("test/mAP=")
    value = float(lines[-1].split("=")[1])
    m = json.loads((tmp_path / "m.json").read_text())
    assert value == pytest.approx(m["headline"]["mAP"], abs=5e-5)
    assert any("protocol 'all'" in line for line in lines) and any("mean" in line for line in lines)
    assert (tmp_path / "run" / "per_class_ap.png").stat().st_size > 5000
    assert len(list((tmp_path / "run" / "timelines").glob("*.png"))) == 5
