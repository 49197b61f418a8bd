"""The leaderboard (configs/leaderboard.yaml, oad/tasks/leaderboard.py): a few cheap models trained on tiny
synthetic data under the same protocol, one table; a broken entry is an error row, the others are fine."""

from __future__ import annotations

import json
import re

import pytest
import torch

from oad.models import registry
from oad.tasks.leaderboard import format_report, format_table, last_line, leaderboard, run_overrides, winner_line
from tests.conftest import REPO, TINY, compose_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# TINY's data/trainer settings, given once on the leaderboard's command line: every run gets them.
TINY_LEADERBOARD = [*TINY, "step_repeats=5"]


def entries(*items: tuple[str, str, list[str]]) -> str:
    def one(name, model, overrides):
        return f"{{name: {name}, model: {model}, overrides: [{', '.join(repr(o) for o in overrides)}]}}"

    return "models=[" + ", ".join(one(*i) for i in items) + "]"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    out = tmp_path_factory.mktemp("leaderboard")
    models = entries(("linear", "linear", []), ("oadtr", "oadtr", ["trainer.limit_train_batches=3"]),
                     ("broken", "linear", ["model.no_such_key=1"]), ("nosuch", "no_such_model", []))
    cfg = compose_cfg("leaderboard", [models, *TINY_LEADERBOARD], out)
    return out, leaderboard(cfg)


def test_leaderboard_writes_the_three_files(board):
    out, result = board
    for name in ("leaderboard.json", "leaderboard.md", "leaderboard.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads((out / "leaderboard.json").read_text())
    assert written["rows"] == json.loads(json.dumps(result["rows"]))
    assert written["protocol"] == "all" and written["window"] == 64 and written["data"] == "synthetic"
    assert written["size"] == "demo"


def test_rows_have_sane_values(board):
    out, result = board
    rows = {r["model"]: r for r in result["rows"]}
    assert list(rows) == ["linear", "oadtr", "broken", "nosuch"]
    for name in ("linear", "oadtr"):
        r = rows[name]
        assert "error" not in r, r
        for key in ("model", "metric", "mAP", "mAP_windows", "window", "params", "train_s", "step_ms", "recipe",
                    "run_dir"):
            assert key in r, (name, key)
        assert r["metric"] == "mAP"
        assert 0.0 <= r["mAP"] <= 1.0
        assert r["mAP_windows"] is None or 0.0 <= r["mAP_windows"] <= 1.0
        assert r["window"] == 64 and r["params"] > 0 and r["train_s"] > 0 and r["step_ms"] > 0
        assert r["recipe"] == f"{name}_demo"
        assert r["run_dir"] == str(out / "runs" / name)
        metrics = json.loads((out / "runs" / name / "metrics.json").read_text())
        # the row is the run's own report: the "all" protocol headline, the fixed window
        assert metrics["protocols"]["all"]["mAP"] == pytest.approx(r["mAP"])
        assert metrics["num_parameters"] == r["params"]
        assert (out / "runs" / name / "checkpoints" / "last.ckpt").is_file()
    assert rows["linear"]["params"] < rows["oadtr"]["params"]


def test_every_run_gets_the_same_data_and_protocol(board, tmp_path):
    """The leaderboard's data.* and trainer.* overrides reach every run after its recipe (as on the
    tools/train.py command line), and the recipe's own keys (its batch size) stay."""
    out, _ = board
    for name in ("linear", "oadtr"):
        ckpt = torch.load(out / "runs" / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        hp = ckpt["hyper_parameters"]
        data = hp["data_info"]["data_config"]
        assert data["source"]["num_videos"] == {"train": 6, "val": 2, "test": 3}
        assert data["source"]["length_scale"] == pytest.approx(0.15)
        assert hp["eval_window"] == 64
        assert ckpt["epoch"] == 0  # trainer.max_epochs=1, not the recipe's
        recipe = compose_cfg("train", [f"model={name}", "size=demo"], tmp_path / name)
        assert data["batch_size"] == recipe.data.batch_size


def test_broken_entries_are_error_rows(board):
    _, result = board
    rows = {r["model"]: r for r in result["rows"]}
    assert "no_such_key" in rows["broken"]["error"]
    assert "no_such_model" in rows["nosuch"]["error"]
    for name in ("broken", "nosuch"):
        assert re.match(r"^\w+: ", rows[name]["error"]), rows[name]["error"]
        assert "mAP" not in rows[name]


def test_winner_is_the_best_row(board):
    _, result = board
    ok = [r for r in result["rows"] if "error" not in r]
    best = max(ok, key=lambda r: r["mAP"])
    assert result["winner"] == best["model"]
    assert winner_line(result) == f"winner: {best['model']} mAP={best['mAP']:.4f} (all protocol)"


def test_markdown_table(board):
    out, result = board
    md = (out / "leaderboard.md").read_text()
    assert md.strip() == format_report(result).strip()
    assert md.strip().startswith(format_table(result).strip())
    table = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    names = [line.split("|")[2].strip() for line in table]
    assert set(names) == {"linear", "oadtr", "broken", "nosuch"}
    ok = sorted((r for r in result["rows"] if "error" not in r), key=lambda r: -r["mAP"])
    assert names[:2] == [r["model"] for r in ok]  # sorted by the headline, failed rows last
    assert all("failed:" in line for line in table[2:])
    # the last line: the winner, or the floor line when a temporal model is at or below the linear floor
    assert md.strip().splitlines()[-1] == last_line(result)
    assert (last_line(result) == winner_line(result)) == (not result["below_floor"])


def test_run_overrides_forward_data_and_trainer(tmp_path):
    cfg = compose_cfg("leaderboard", ["data=thumos14", "data.root=/data/thumos", "data.layout=lstr", "trainer=cpu",
                                      "trainer.max_epochs=1", "seed=3", "eval_window=32"], tmp_path)
    overrides, replace_data = run_overrides(cfg, {"name": "trn", "model": "trn", "overrides": ["data.batch_size=8"]})
    assert not replace_data
    assert overrides[0] == "model=trn"
    for o in ("data=thumos14", "data.root=/data/thumos", "data.layout=lstr", "trainer=cpu", "trainer.max_epochs=1",
              "size=paper", "eval.window=32", "seed=3"):
        assert o in overrides, (o, overrides)
    assert overrides[-1] == "data.batch_size=8"  # the entry's own overrides win
    assert not any(o.startswith(("eval_window", "models")) for o in overrides)
    # an entry choosing its own size (or an experiment) gets no size from the leaderboard
    own, _ = run_overrides(cfg, {"name": "t", "model": "trn", "overrides": ["size=demo"]})
    assert [o for o in own if o.startswith("size=")] == ["size=demo"]


def test_default_config_composes_with_every_model(tmp_path):
    cfg = compose_cfg("leaderboard", [], tmp_path)
    names = [m.name for m in cfg.models]
    # every registered model (one per configs/model/*.yaml), none typed into the leaderboard's config
    assert names == registry.names() and len(names) == len(list((REPO / "configs" / "model").glob("*.yaml")))
    assert {"oadtr", "trn", "linear", "miniroad", "lstr", "testra", "oadtr_sw"} <= set(names)
    assert cfg.size == "demo" and cfg.eval_window == 64 and list(cfg.step_streams) == [1]  # follows the data
    assert cfg.step_repeats == 30 and cfg.seed == 20 and cfg.trainer._target_.endswith("Trainer")
    missing = [m.model for m in cfg.models if not (REPO / "configs" / "model" / f"{m.model}.yaml").is_file()]
    assert not missing, f"configs/model/ lacks {missing}"
    for m in cfg.models:
        for size in ("demo", "paper"):
            assert (REPO / "configs" / "recipe" / f"{m.model}_{size}.yaml").is_file(), (m.model, size)


def test_config_examples_compose(tmp_path):
    text = (REPO / "configs" / "leaderboard.yaml").read_text()
    examples = re.findall(r"^#\s+python tools/leaderboard\.py(.*?)(?:\s+#.*)?$", text, flags=re.MULTILINE)
    assert len(examples) >= 2
    import shlex

    for line in examples:
        cfg = compose_cfg("leaderboard", shlex.split(line), tmp_path)
        assert len(cfg.models) >= 1


def test_without_hydra_runtime_the_data_node_is_used(tmp_path):
    """A config composed without Hydra's runtime (no command line to read): the leaderboard's data and
    trainer nodes."""
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_cfg("leaderboard", [entries(("linear", "linear", [])), *TINY_LEADERBOARD], tmp_path)
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().cfg = None
    try:
        result = leaderboard(cfg)
    finally:
        HydraConfig.instance().cfg = saved
    (row,) = result["rows"]
    assert "error" not in row, row
    assert result["data"] == "synthetic" and row["recipe"] == "linear_demo" and result["winner"] == "linear"
    assert (tmp_path / "runs" / "linear" / "metrics.json").is_file()
    hp = torch.load(tmp_path / "runs" / "linear" / "checkpoints" / "last.ckpt", map_location="cpu",
                    weights_only=False)
    assert hp["hyper_parameters"]["data_info"]["data_config"]["source"]["num_videos"]["test"] == 3
    assert hp["epoch"] == 0  # trainer.max_epochs=1 of the leaderboard, not the recipe's 3


def test_several_datasets_seeds_and_the_floor(tmp_path):
    """datasets=[...] and seeds=[...]: one table per dataset, the mean of the seeds in each row, the
    summary of ranks and floor margins; a model at or below the floor is flagged (table, last line)."""
    from oad.tasks.leaderboard import format_report, last_line

    datasets = ("datasets=[{name: a, overrides: ['data.source.seed=5']}, "
                "{name: b, overrides: ['data.source.seed=6', 'data.source.relu=true', 'data.source.shift=0.5']}]")
    cfg = compose_cfg("leaderboard", [entries(("linear", "linear", []), ("trn", "trn", ["model.hidden_dim=8"])),
                                      datasets, "seeds=[3,4]", *TINY_LEADERBOARD], tmp_path)
    report = leaderboard(cfg)
    assert [d["data"] for d in report["datasets"]] == ["a", "b"]
    for res in report["datasets"]:
        rows = {r["model"]: r for r in res["rows"]}
        assert set(rows) == {"linear", "trn"} and all("error" not in r for r in rows.values()), rows
        for name, r in rows.items():
            per_seed = [json.loads((tmp_path / "runs" / res["data"] / name / f"seed{s}" / "metrics.json").read_text())
                        ["protocols"]["all"]["mAP"] for s in (3, 4)]
            assert list(r["per_seed"].values()) == pytest.approx(per_seed)
            assert r["mAP"] == pytest.approx(sum(per_seed) / 2)
        margin = rows["trn"]["mAP"] - rows["linear"]["mAP"]
        assert rows["trn"]["margin"] == pytest.approx(margin) and "margin" not in rows["linear"]
        interval = rows["trn"]["margin_interval"]  # over this dataset's test videos, both seeds paired
        videos = json.loads((tmp_path / "runs" / res["data"] / "trn" / "seed3" / "metrics.json").read_text())
        assert interval["num_videos"] == videos["protocols"]["all"]["num_videos"] and interval["num_resamples"] == 1000
        assert interval["low"] <= interval["high"] and "margin_interval" not in rows["linear"]
        flagged = {"model": "trn", "data": res["data"], "margin": pytest.approx(margin), "interval": interval}
        assert (flagged in res["below_floor"]) == (margin <= 0)
    # the datasets differ: the runs saw other features
    a, b = (json.loads((tmp_path / "runs" / d / "linear" / "seed3" / "metrics.json").read_text()) for d in "ab")
    assert a["protocols"]["all"]["mAP"] != b["protocols"]["all"]["mAP"]
    summary = {m["model"]: m for m in report["summary"]["models"]}
    assert set(summary["trn"]["ranks"]) == {"a", "b"} and summary["trn"]["mean_rank"] in (1.0, 1.5, 2.0)
    md = (tmp_path / "leaderboard.md").read_text()
    assert md.strip() == format_report(report).strip()
    assert md.count("[low, high] after a margin: its 95% interval over the test videos") == 2
    assert md.count("Leaderboard: data ") == 2 and "Summary over 2 datasets" in md and "mean of seeds 3, 4" in md
    below = report["below_floor"]
    assert (last_line(report).startswith("below the floor (linear): trn on ")) == bool(below)
    if below:
        assert "**below the floor**" in md
    # a forced flag: the floor itself as the only other model's reference, margins recomputed
    from oad.tasks.leaderboard import floor_line, floor_margins

    res = json.loads(json.dumps(report["datasets"][0]))
    next(r for r in res["rows"] if r["model"] == "trn")["mAP"] = -1.0
    floor_margins(res)
    assert [b["model"] for b in res["below_floor"]] == ["trn"]
    assert floor_line(res["below_floor"], "linear").startswith("below the floor (linear): trn on a by ")


def test_robustness_datasets_compose_and_differ_from_the_built_in_data(tmp_path):
    from oad.tasks.leaderboard import _datasets, run_overrides

    cfg = compose_cfg("leaderboard", ["suite=robustness", "seeds=[20,21]"], tmp_path)
    datasets = _datasets(cfg)
    assert len(datasets) >= 3 and list(cfg.seeds) == [20, 21] and cfg.floor == "linear"
    built_in = compose_cfg("train", [], tmp_path).data.source
    for d in datasets:
        overrides, _ = run_overrides(cfg, {"name": "oadtr", "model": "oadtr"}, d, 21)
        assert overrides[-1] == "seed=21" or "seed=21" in overrides
        train = compose_cfg("train", overrides, tmp_path)
        src = train.data.source
        changed = {k for k in ("length_scale", "evidence", "noise", "noise_ar", "drift", "dim_scale", "video_offset",
                               "shift", "relu", "seed", "rgb_dim", "flow_dim", "real_labels") if src[k] != built_in[k]}
        assert "seed" in changed and len(changed) >= 3, (d["name"], changed)
        # recipes are chosen on a validation split as large as the test split, and every run tests its
        # best validation epoch
        assert src.num_videos.val >= src.num_videos.test > 0
        assert train.checkpoint.select_best and train.checkpoint.test_weights == "best"


def test_summary_of_a_leaderboard_still_running_says_what_has_not_run():
    """The files are rewritten after every run: a model not trained yet on a dataset reads "not run yet",
    one whose run raised reads "failed"."""
    from oad.tasks.leaderboard import format_summary, summarize

    ok = {"model": "linear", "metric": "mAP", "mAP": 0.4}
    report = {"floor": "linear", "datasets": [
        {"data": "a", "rows": [ok, {"model": "oadtr", "metric": "mAP", "mAP": 0.5, "margin": 0.1}]},
        {"data": "b", "rows": [ok, {"model": "trn", "error": "RuntimeError: boom"}]}]}
    report["summary"] = summarize(report)
    lines = {line.split(" | ")[0].strip("| "): line for line in format_summary(report).splitlines() if line.startswith("| ")}
    assert lines["oadtr"].endswith("| 1, +0.1000 | not run yet |")
    assert "failed" in lines["trn"] and "not run yet" in lines["trn"]  # failed on b, never ran on a


def test_test_classes_missing_from_training_are_flagged(tmp_path):
    """A split whose training videos never show a scored test class: metrics.json lists it
    (class_coverage) with the mAP over the other classes, and the table carries a caution line."""
    import numpy as np

    from oad.data.sources import SyntheticSource

    labels = "datasets/thumos14/thumos14_val_labels.npz"
    sizes = {"train": 6, "val": 2, "test": 4}  # seed 6, a random split: 2 test classes seen in training, 2 not
    data = ["data.source.real_labels=" + labels, "data.source.num_videos={train: 6, val: 2, test: 4}",
            "data.source.real_label_split=random", "data.source.seed=6", "data.source.rgb_dim=16",
            "data.source.flow_dim=8"]
    cfg = compose_cfg("leaderboard", [entries(("linear", "linear", [])), *TINY_LEADERBOARD, *data], tmp_path)
    report = leaderboard(cfg)
    res = report
    metrics = json.loads((tmp_path / "runs" / "linear" / "metrics.json").read_text())
    # expected from the labels alone: classes with a positive test chunk and none in training
    splits = SyntheticSource(sizes, seed=6, real_labels=labels, real_label_split="random").real_labels
    names = SyntheticSource(sizes, seed=6).class_names
    train = {int(c) for y in splits["train"][1] for c in np.unique(y)}
    test = {int(c) for y in splits["test"][1] for c in np.unique(y)} - {0, 21}
    want = [names[c] for c in sorted(test - train)]
    cover = metrics["class_coverage"]
    assert want and test & train and sorted(cover["unseen_in_training"]) == sorted(want)
    per_class = metrics["protocols"]["all"]["per_class_AP"]
    assert cover["scored"] == len(per_class) == len(test)
    assert cover["mAP_seen"] == pytest.approx(np.mean([ap for n, ap in per_class.items() if n not in want]))
    assert res["rows"][0]["unseen_classes"] == cover["unseen_in_training"]
    assert f"caution: {len(want)} scored test classes have no training chunk" in format_table(res)


def test_only_models_and_only_datasets_pick_a_piece_of_the_suite(tmp_path):
    """A suite split into jobs: only_models / only_datasets keep the named entries in configured order;
    an unknown name is refused before any training, naming the known ones."""
    from oad.tasks.leaderboard import _datasets, _entries

    whole = compose_cfg("leaderboard", ["suite=robustness"], tmp_path)
    cfg = compose_cfg("leaderboard", ["suite=robustness", "only_models=[trn,linear]",
                                      "only_datasets=[telling_chunk_scaled,thumos_labels]"], tmp_path)
    assert [e["name"] for e in _entries(cfg)] == ["linear", "trn"]  # the configured order, not the given one
    picked = _datasets(cfg)
    assert [d["name"] for d in picked] == ["thumos_labels", "telling_chunk_scaled"]
    assert picked == [d for d in _datasets(whole) if d["name"] in ("thumos_labels", "telling_chunk_scaled")]
    assert len(_entries(whole)) == len(registry.names()) and len(_datasets(whole)) == 5
    for bad, match in ((["only_models=[trn,nosuch]"], r"\['nosuch'\] not among the models"),
                       (["only_datasets=[nosuch]"], r"\['nosuch'\] not among the datasets .*thumos_labels"),
                       (["only_models=[]"], "an empty list")):
        bad_cfg = compose_cfg("leaderboard", ["suite=robustness", *bad], tmp_path)
        with pytest.raises(ValueError, match=match):
            leaderboard(bad_cfg)


def test_margin_interval_reads_the_runs_predictions(tmp_path, caplog):
    """The interval of a margin over the floor comes from the two runs' predictions.pkl, seed by seed; a
    clearly better model's interval is above 0, and a run without predictions gets none (a warning)."""
    import numpy as np

    from oad.io import write_predictions
    from oad.tasks.leaderboard import floor_line, floor_margins

    rng = np.random.default_rng(0)
    targets = {}
    for i in range(30):
        y = np.zeros((int(rng.integers(30, 80)), 22))
        y[np.arange(len(y)), rng.integers(0, 22, len(y))] = 1
        targets[f"v{i}"] = y
    rows = []
    for name, signal in (("linear", 0.1), ("good", 0.8), ("bad", 0.0)):
        for seed in ("3", "4"):  # the leaderboard's layout of several seeds: <run_dir>/seed<s>
            d = tmp_path / name / f"seed{seed}"
            d.mkdir(parents=True)
            write_predictions(d / "predictions.pkl", {k: {"scores": rng.random(y.shape) + signal * y, "targets": y,
                                                          "future_scores": np.zeros((len(y), 0, 22))}
                                                      for k, y in targets.items()})
        rows.append({"model": name, "metric": "mAP", "mAP": signal, "params": 1, "run_dir": str(tmp_path / name),
                     "per_seed": {"3": signal, "4": signal}, "ignore_index": 21})
    rows.append({"model": "lost", "metric": "mAP", "mAP": 0.05, "params": 1, "run_dir": str(tmp_path / "lost"),
                 "per_seed": {"3": 0.05, "4": 0.05}, "ignore_index": 21})
    res = {"data": "d", "floor": "linear", "rows": rows, "floor_bootstrap": 200}
    with caplog.at_level("WARNING"):
        floor_margins(res)
    good, bad, lost = (next(r for r in rows if r["model"] == m) for m in ("good", "bad", "lost"))
    assert good["margin_interval"]["low"] > 0 and good["margin_interval"]["p_not_above"] == 0
    assert bad["margin_interval"]["high"] < 0 and bad["margin_interval"]["num_videos"] == 30
    assert lost["margin_interval"] is None and "lost: no interval for its margin" in caplog.text
    line = floor_line(res["below_floor"], "linear")
    iv = bad["margin_interval"]
    assert f"bad on d by 0.1000 (margin interval [{iv['low']:+.4f}, {iv['high']:+.4f}])" in line
    assert "lost on d by 0.0500" in line and "lost on d by 0.0500 (" not in line
    assert f"{bad['margin']:+.4f} [{iv['low']:+.4f}, {iv['high']:+.4f}] **below the floor**" in format_table(
        res | {"winner": "good", "seeds": [3, 4]})
    # the floor rerun (a merge with merge_replace): every interval is computed again, against the new runs
    next(r for r in rows if r["model"] == "linear").update(run_dir=str(tmp_path / "good"), mAP=0.8)
    floor_margins(res)
    assert bad["margin_interval"]["high"] < iv["low"] and good["margin_interval"]["high"] < 0.05
    floor_margins(res | {"floor_bootstrap": 0})  # intervals off: none printed, none stale
    assert "margin_interval" not in bad and "margin_interval" not in good


def test_merge_of_one_run_reproduces_its_table(board, tmp_path):
    """merge=[<run dir>] of a whole run: the same rows, margins, intervals and table, nothing trained."""
    from oad.tasks.leaderboard import merge_reports

    out, result = board
    merged = merge_reports([out], tmp_path / "m", floor_bootstrap=1000)
    assert format_table(merged) == format_table(result)
    assert (tmp_path / "m" / "leaderboard.md").read_text().startswith(format_table(result))
    assert merged["merged_from"] == [str(out)]


def _piece(path, rows, seeds=(3, 4), data="d"):
    res = {"task": "leaderboard", "data": data, "size": "demo", "protocol": "all", "window": 64, "seed": seeds[0],
           "seeds": list(seeds), "floor": "linear", "rows": [], "winner": None, "below_floor": []}
    for name, value in rows:
        res["rows"].append({"model": name, "model_option": name, "metric": "mAP", "mAP": value, "params": 1,
                            "run_dir": str(path / "runs" / name), "recipe": f"{name}_demo"})
    path.mkdir(parents=True)
    (path / "leaderboard.json").write_text(json.dumps({"task": "leaderboard", "floor": "linear",
                                                       "seeds": list(seeds), "datasets": [res]}))
    return path


def test_merge_joins_pieces_and_refuses_pieces_that_disagree(tmp_path):
    from oad.tasks.leaderboard import last_line, merge_reports

    a = _piece(tmp_path / "a", [("linear", 0.5), ("good", 0.6)])
    b = _piece(tmp_path / "b", [("linear", 0.5), ("weak", 0.4)])
    c = _piece(tmp_path / "c", [("linear", 0.3)], data="other")
    empty = _piece(tmp_path / "empty", [], data="later")  # a piece still running: a dataset with no row yet
    report = merge_reports([a, b / "leaderboard.json", c, empty], tmp_path / "m")
    d, other, later = report["datasets"]
    assert later["rows"] == [] and winner_line(later) == "winner: none (nothing run yet)"
    assert [r["model"] for r in d["rows"]] == ["linear", "good", "weak"] and d["winner"] == "good"
    assert {r["model"]: r.get("margin") for r in d["rows"]} == {"linear": None, "good": pytest.approx(0.1),
                                                              "weak": pytest.approx(-0.1)}
    assert [r["model"] for r in other["rows"]] == ["linear"]
    assert last_line(report) == "below the floor (linear): weak on d by 0.1000"
    assert {m["model"] for m in report["summary"]["models"]} == {"linear", "good", "weak"}
    md = (tmp_path / "m" / "leaderboard.md").read_text()
    assert "| 1 | good | 0.6000 | +0.1000 |" in md and "Summary over 3 datasets" in md
    # the floor scored differently in two pieces: not the same runs
    e = _piece(tmp_path / "e", [("linear", 0.51), ("weak", 0.4)])
    with pytest.raises(ValueError, match=rf"d: linear scored 0.510000 in {e / 'leaderboard.json'} but 0.500000 in "
                                         rf"{a / 'leaderboard.json'}"):
        merge_reports([a, e], tmp_path / "m2")
    # unless that model was rerun (its recipe changed): merge_replace takes its rows from the last piece
    report = merge_reports([a, b, e], tmp_path / "m2", replace=["linear"])
    (d,) = report["datasets"]
    assert {r["model"]: r.get("margin") for r in d["rows"]} == {"linear": None, "good": pytest.approx(0.09),
                                                              "weak": pytest.approx(-0.11)}
    assert "Summary over 1 dataset: " in (tmp_path / "m2" / "leaderboard.md").read_text()
    assert report["replaced"] == [{"data": "d", "model": "linear", "from": str(e / "leaderboard.json"),
                                   "instead_of": str(b / "leaderboard.json")}]
    kept = merge_reports([a, b, c], tmp_path / "m2c", only_datasets=["other"])  # one dataset of the pieces
    assert [r["data"] for r in kept["datasets"]] == ["other"] and kept["datasets"][0]["rows"][0]["mAP"] == 0.3
    with pytest.raises(ValueError, match=r"only_datasets: \['nope'\] not among the datasets of the pieces"):
        merge_reports([a, c], tmp_path / "m2d", only_datasets=["nope"])
    with pytest.raises(ValueError, match=r"replace names \['lnear'\], which no piece holds"):
        merge_reports([a, b], tmp_path / "m2b", replace=["lnear"])
    f = _piece(tmp_path / "f", [("linear", 0.5)], seeds=(3,))
    with pytest.raises(ValueError, match=r"d: seeds \[3\] in .*f/leaderboard.json but \[3, 4\] in .*a/leaderboard.json"):
        merge_reports([a, f], tmp_path / "m3")
    with pytest.raises(ValueError, match="nothere: no such file"):
        merge_reports([a, tmp_path / "nothere"], tmp_path / "m4")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not a readable leaderboard.json"):
        merge_reports([a, tmp_path / "bad.json"], tmp_path / "m5")


def test_merge_on_the_command_line(tmp_path):
    """tools/leaderboard.py merge=[...]: the merged table printed and written, the floor line last."""
    from tests.test_entry_points import tool

    a = _piece(tmp_path / "a", [("linear", 0.5), ("good", 0.6)])
    b = _piece(tmp_path / "b", [("linear", 0.5), ("weak", 0.4)])
    proc = tool("leaderboard", f"merge=[{a},{b}]", f"hydra.run.dir={tmp_path / 'm'}", cwd=tmp_path, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "below the floor (linear): weak on d by 0.1000"
    assert lines[-2] == f"leaderboard: {tmp_path / 'm'}/leaderboard.md"
    assert json.loads((tmp_path / "m" / "leaderboard.json").read_text())["merged_from"] == [str(a), str(b)]
    rerun = _piece(tmp_path / "rerun", [("linear", 0.45)])  # the floor rerun with a new recipe
    proc = tool("leaderboard", f"merge=[{a},{b},{rerun}]", "merge_replace=[linear]",
                f"hydra.run.dir={tmp_path / 'm2'}", cwd=tmp_path, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "below the floor (linear): weak on d by 0.0500"
    assert [r["from"] for r in json.loads((tmp_path / "m2" / "leaderboard.json").read_text())["replaced"]] == [
        str(rerun / "leaderboard.json")]
