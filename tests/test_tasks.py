"""End to end through the real configs and tasks: fast_dev_run of each model, every config option
composes and instantiates, train -> evaluate the saved checkpoint gives the same test mAP."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from oad.tasks import build_datamodule, build_net_config, evaluate, headline, train
from tests.conftest import REPO, TINY, compose_cfg


@pytest.mark.parametrize("model", ["oadtr", "trn"])
def test_fast_dev_run(model, tmp_path):
    cfg = compose_cfg("train", [f"model={model}", "debug=fdr", *TINY], tmp_path)
    result = train(cfg)
    m = result["metrics"]
    assert m["metric"] == "mAP" and 0.0 <= m["headline"]["mAP"] <= 1.0
    assert set(m["protocols"]) == {"all", "windows"}
    # "all" scores every chunk of every test video
    dm = build_datamodule(cfg)
    dm.setup("test")
    assert m["protocols"]["all"]["num_chunks_scored"] == sum(v.num_chunks for v in dm.videos("test"))
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "predictions.pkl").is_file()


def test_train_then_evaluate_checkpoint_gives_same_metric(tmp_path, monkeypatch):
    import oad.metrics

    run = tmp_path / "run"
    cfg = compose_cfg("train", [*TINY, "trainer.limit_train_batches=3"], run)
    result = train(cfg)
    trained = result["metrics"]["headline"]["mAP"]
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    ecfg = compose_cfg("eval", [f"ckpt_path={ckpt}", "trainer=cpu", "trainer.enable_progress_bar=false"],
                       tmp_path / "eval")
    calls = []
    compute = oad.metrics.evaluate_protocols
    monkeypatch.setattr(oad.metrics, "evaluate_protocols", lambda *a, **k: calls.append(a[2]) or compute(*a, **k))
    res = evaluate(ecfg)
    assert calls == [("all", "windows")]  # the test hook computes the metrics; evaluate() reuses them
    assert res["metrics"]["headline"]["mAP"] == pytest.approx(trained, abs=1e-9)
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["headline"]["mAP"] == pytest.approx(trained, abs=1e-9)
    assert written["protocols"]["all"]["num_chunks_scored"] == result["metrics"]["protocols"]["all"]["num_chunks_scored"]


def config_options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "configs" / group).glob("*.yaml"))


@pytest.mark.parametrize("model", config_options("model"))
@pytest.mark.parametrize("size", config_options("size"))
def test_every_model_and_size_composes_and_instantiates(model, size, tmp_path):
    cfg = compose_cfg("train", [f"model={model}", f"size={size}", *TINY], tmp_path)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    net_config = build_net_config(cfg, dm)
    with torch.device("meta"):  # paper sizes: no memory needed to check the shapes
        net = instantiate(net_config)
    assert getattr(net, "window", None) == cfg.model.get("window")  # LSTR, TeSTra: memories, no window
    instantiate(cfg.criterion)
    instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])


@pytest.mark.parametrize("trainer", config_options("trainer"))
def test_every_trainer_config_composes(trainer, tmp_path):
    cfg = compose_cfg("train", [f"trainer={trainer}"], tmp_path)
    assert cfg.trainer._target_.endswith("Trainer")
    if trainer in ("cpu", "default", "ddp_cpu"):
        instantiate(cfg.trainer, logger=False, enable_checkpointing=False)


def test_overfit_debug_config_learns(tmp_path):
    cfg = compose_cfg("train", ["debug=overfit", *TINY, "trainer.max_epochs=25", "trainer.overfit_batches=1",
                                "data.batch_size=32"], tmp_path)
    result = train(cfg)
    logs = (Path(result["output_dir"]) / "logs").rglob("metrics.csv")
    import csv

    rows = [r for f in logs for r in csv.DictReader(open(f)) if r.get("train/loss_epoch")]
    losses = [float(r["train/loss_epoch"]) for r in rows]
    assert len(losses) >= 20
    assert losses[-1] < 0.25 * losses[0], losses


class _WorseLastEpoch(L.Callback):
    """Scrambles the weights before the last epoch's validation, so that the last epoch is not the best
    and the final weights differ from the best ones; records val/mAP per epoch."""

    def __init__(self):
        self.val = []

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.current_epoch == trainer.max_epochs - 1:
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in pl_module.net.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 3.0)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val.append(float(trainer.callback_metrics["val/mAP"]))


def test_last_ckpt_holds_the_final_weights_when_the_last_epoch_is_not_the_best(tmp_path):
    """The user's path: several epochs, the last not the best (with best-checkpoint selection on, the
    setting in which Lightning's save_last kept the best epoch's step); last.ckpt then holds the final
    global step, and evaluating it prints the run's own test/mAP."""
    run = tmp_path / "run"
    worse = _WorseLastEpoch()
    cfg = compose_cfg("train", [*TINY, "trainer.max_epochs=3", "trainer.limit_train_batches=3",
                                "checkpoint.every_n_train_steps=0", "checkpoint.select_best=true"], run)
    result = train(cfg, callbacks=[worse])
    assert len(worse.val) == 3 and worse.val[-1] < max(worse.val), worse.val  # the last epoch is not the best
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 9 and last["epoch"] == 2  # 3 epochs x 3 steps: the final state
    assert best["global_step"] < last["global_step"]
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch*.ckpt")) == [
        "epoch000.ckpt", "epoch001.ckpt", "epoch002.ckpt"]
    ecfg = compose_cfg("eval", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer=cpu",
                                "trainer.enable_progress_bar=false"], tmp_path / "eval")
    evaluated = evaluate(ecfg)["metrics"]
    assert evaluated["mAP"] == pytest.approx(result["metrics"]["mAP"], abs=1e-9)
    assert headline(evaluated) == headline(result["metrics"])
    written = json.loads((run / "metrics.json").read_text())
    assert written["mAP"] == written["headline"]["mAP"] == result["metrics"]["mAP"]


def test_early_stopping_tests_the_best_validation_epoch(tmp_path):
    """checkpoint.test_weights=best: the test scores best.ckpt (chosen on validation), not the final
    weights, and metrics.json says which epoch it was; evaluating best.ckpt gives the same figure."""
    run = tmp_path / "run"
    worse = _WorseLastEpoch()
    cfg = compose_cfg("train", [*TINY, "trainer.max_epochs=3", "trainer.limit_train_batches=3",
                                "checkpoint.every_n_train_steps=0", "checkpoint.select_best=true",
                                "checkpoint.test_weights=best"], run)
    result = train(cfg, callbacks=[worse])
    best_epoch = max(range(3), key=lambda e: worse.val[e])
    assert best_epoch < 2, worse.val  # the scrambled last epoch is not the best
    tested = result["metrics"]["tested"]
    assert tested["weights"] == "best" and tested["epoch"] == best_epoch
    assert tested["val/mAP"] == pytest.approx(worse.val[best_epoch], abs=1e-6)
    ecfg = compose_cfg("eval", [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "trainer=cpu",
                                "trainer.enable_progress_bar=false"], tmp_path / "eval")
    assert evaluate(ecfg)["metrics"]["mAP"] == pytest.approx(result["metrics"]["mAP"], abs=1e-9)
    last = compose_cfg("eval", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer=cpu",
                                "trainer.enable_progress_bar=false"], tmp_path / "eval_last")
    assert evaluate(last)["metrics"]["mAP"] != pytest.approx(result["metrics"]["mAP"], abs=1e-6)


def test_best_test_weights_need_best_checkpoint_selection(tmp_path):
    cfg = compose_cfg("train", [*TINY, "checkpoint.test_weights=best"], tmp_path)
    with pytest.raises(ValueError, match=r"test_weights=best needs checkpoint.select_best=true"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()  # refused before training


def test_no_checkpoint_is_picked_on_a_metric_by_default(tmp_path):
    cfg = compose_cfg("train", [*TINY, "trainer.max_epochs=2", "trainer.limit_train_batches=2", "test=false"],
                      tmp_path)
    train(cfg)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch000.ckpt", "epoch001.ckpt", "last.ckpt"]
