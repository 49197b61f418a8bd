"""The ``callbacks`` and ``logger`` config groups as training builds them (``oad.tasks.training``), the
checkpoint callbacks' settings (``checkpoint:`` of configs/train.yaml, ``oad/callbacks.py``) and the EMA of
the weights (``ema:``): what it averages, what the checkpoints and the test hold. The files
they write are checked by tests/test_tasks.py, tests/test_resume.py and tests/test_entry_points.py."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, WeightAveraging
from lightning.pytorch.loggers import CSVLogger

from oad.callbacks import BestCheckpoint, ExponentialMovingAverage, LastCheckpoint
from oad.tasks import evaluate, train
from oad.tasks.training import instantiate_entries
from tests.conftest import REPO, TINY, compose_cfg


def test_default_callbacks_follow_the_checkpoint_settings(tmp_path):
    cfg = compose_cfg("train", [], tmp_path)
    last, epochs = instantiate_entries(cfg.callbacks)
    assert type(last) is LastCheckpoint and last.path == tmp_path / "checkpoints" / "last.ckpt" and last.every_n == 200
    assert type(epochs) is ModelCheckpoint and epochs.every_n_epochs == 1 and epochs.monitor is None
    cfg = compose_cfg("train", ["checkpoint.every_n_epochs=0", "checkpoint.select_best=true",
                                "checkpoint.every_n_train_steps=5",
                                "+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor"], tmp_path)
    made = instantiate_entries(cfg.callbacks)
    assert [type(c) for c in made] == [LastCheckpoint, BestCheckpoint, LearningRateMonitor] and made[0].every_n == 5


def test_logger_group_default_and_none(tmp_path):
    (csv,) = instantiate_entries(compose_cfg("train", [], tmp_path).logger)
    assert isinstance(csv, CSVLogger) and csv.log_dir == str(tmp_path / "logs" / "version_0")
    assert instantiate_entries(compose_cfg("train", ["logger=none"], tmp_path).get("logger")) == []


def test_best_checkpoint_without_a_validation_split_fails_at_the_start(tmp_path):
    cfg = compose_cfg("train", [*TINY, "checkpoint.select_best=true", "data.val_split=null"], tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint.select_best=true needs a validation split"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()  # nothing trained, nothing written


# -- the EMA of the weights (oad.callbacks.ExponentialMovingAverage, the ema: block of a recipe) -------------

class _RecordWeights(L.Callback):
    """The trainable weights before training and after every optimizer step (step g at index g), and the
    weights each validation scores ({step: weights})."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []
        self.validated: dict[int, dict[str, torch.Tensor]] = {}

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated[trainer.global_step] = {k: p.detach().clone() for k, p in pl_module.named_parameters()}

    def _record(self, pl_module):
        self.steps.append({k: p.detach().clone() for k, p in pl_module.named_parameters() if p.requires_grad})

    def on_train_start(self, trainer, pl_module):
        self._record(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        assert trainer.global_step == len(self.steps)
        self._record(pl_module)


def hand_ema(steps: list[dict[str, torch.Tensor]], decay: float, every: int, start: int) -> dict[str, torch.Tensor]:
    """The average written out in float64: A = W_start, then A = d A + (1 - d) W_g at every every-th step
    after it, d = decay ** every."""
    avg = None
    for g, weights in enumerate(steps):
        if g == start:
            avg = {k: v.double() for k, v in weights.items()}
        elif g > start and (g - start) % every == 0:
            d = decay**every
            avg = {k: d * avg[k] + (1 - d) * weights[k].double() for k in avg}
    return avg


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_ema_is_off_unless_a_recipe_turns_it_on(tmp_path):
    """Off by default and in every demo recipe (their figures stay the plain weights'); MAT's and CMeRT's
    paper recipes average with the references' decay, updated at every step from the initial weights."""
    for model in sorted(p.stem.removesuffix("_demo") for p in (REPO / "configs" / "recipe").glob("*_demo.yaml")):
        cfg = compose_cfg("train", [f"model={model}"], tmp_path)
        assert cfg.ema is None, model
        assert not any(isinstance(c, WeightAveraging) for c in instantiate_entries(cfg.callbacks)), model
    for model in ("mat", "cmert"):
        cfg = compose_cfg("train", [f"model={model}", "size=paper"], tmp_path)
        made = [c for c in instantiate_entries(cfg.callbacks) if isinstance(c, ExponentialMovingAverage)]
        assert len(made) == 1 and made[0].settings == {"decay": 0.999, "every_n_steps": 1, "start_step": 0}, model


@pytest.mark.parametrize(("ema", "stop"), [
    ({"decay": 0.5, "every_n_steps": 1, "start_step": 0}, []),
    ({"decay": 0.7, "every_n_steps": 2, "start_step": 1}, []),
    ({"decay": 0.7, "every_n_steps": 1, "start_step": 4}, ["+trainer.max_steps=5"]),  # ends inside an epoch
])
def test_ema_checkpoints_hold_the_hand_computed_average_and_the_test_scores_it(ema, stop, tmp_path, one_torch_thread):
    """2 epochs x 3 steps with a validation after each: each validation scores the average written out by
    hand (the trained weights before start_step), last.ckpt's state_dict holds it, its current_model_state
    the trained weights; metrics.json names the settings, and evaluating last.ckpt gives the run's own test
    figure (the headline's weights)."""
    run = tmp_path / "run"
    flow = "{" + ", ".join(f"{k}: {v}" for k, v in ema.items()) + "}"
    cfg = compose_cfg("train", [*TINY, "trainer.max_epochs=2", "trainer.limit_train_batches=3",
                                "checkpoint.every_n_train_steps=0", "optimizer.lr=0.01", f"ema={flow}", *stop], run)
    recorder = _RecordWeights()
    result = train(cfg, callbacks=[recorder])
    last = load(run / "checkpoints" / "last.ckpt")
    steps = 5 if stop else 6
    assert last["global_step"] == steps == len(recorder.steps) - 1
    expected = hand_ema(recorder.steps, ema["decay"], ema["every_n_steps"], ema["start_step"])
    for name, value in expected.items():
        torch.testing.assert_close(last["state_dict"][name], value.float(), msg=name)
        torch.testing.assert_close(last["current_model_state"][name], recorder.steps[-1][name], rtol=0, atol=0)
    assert sorted(recorder.validated) == ([3] if stop else [3, 6])
    for step, weights in recorder.validated.items():
        if step < ema["start_step"]:  # not started: the trained weights
            expected_then = recorder.steps[step]
        else:
            expected_then = hand_ema(recorder.steps[: step + 1], ema["decay"], ema["every_n_steps"], ema["start_step"])
        for name, value in expected_then.items():
            torch.testing.assert_close(weights[name], value.float(), msg=name)
    moved = max(float((last["state_dict"][k] - recorder.steps[-1][k]).abs().max()) for k in expected)
    assert moved > 1e-3  # the average is not the trained weights
    assert result["metrics"]["ema"] == ema
    ecfg = compose_cfg("eval", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer=cpu",
                                "trainer.enable_progress_bar=false"], tmp_path / "eval")
    assert evaluate(ecfg)["metrics"]["mAP"] == pytest.approx(result["metrics"]["mAP"], abs=1e-9)


def test_ema_best_checkpoint_is_chosen_and_tested_on_the_averaged_weights(tmp_path, one_torch_thread):
    """checkpoint.test_weights=best with an EMA: validation picks best.ckpt on the averaged weights, the test
    scores that file's averaged weights (not its trained ones), and evaluating it gives the same figure."""
    run = tmp_path / "run"
    cfg = compose_cfg("train", [*TINY, "trainer.max_epochs=2", "trainer.limit_train_batches=3",
                                "checkpoint.every_n_train_steps=0", "optimizer.lr=0.01", "ema={decay: 0.5}",
                                "checkpoint.select_best=true", "checkpoint.test_weights=best"], run)
    result = train(cfg)
    best = load(run / "checkpoints" / "best.ckpt")
    assert any(not torch.equal(v, best["current_model_state"][k]) for k, v in best["state_dict"].items())
    ecfg = compose_cfg("eval", [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "trainer=cpu",
                                "trainer.enable_progress_bar=false"], tmp_path / "eval")
    assert evaluate(ecfg)["metrics"]["mAP"] == pytest.approx(result["metrics"]["mAP"], abs=1e-9)


def test_a_checkpoint_with_an_average_resumes_only_with_one(tmp_path, one_torch_thread):
    """Resuming an EMA run without its ema: settings would train on from the averaged weights: refused."""
    cfg = compose_cfg("train", [*TINY, "trainer.limit_train_batches=2", "test=false", "ema={decay: 0.5}"],
                      tmp_path / "run")
    train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    again = compose_cfg("train", [*TINY, "trainer.max_epochs=2", "trainer.limit_train_batches=2", "test=false",
                                  f"ckpt_path={last}"], tmp_path / "again")
    with pytest.raises(ValueError, match="written with an EMA of the weights"):
        train(again)
