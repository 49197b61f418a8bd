"""The ``callbacks`` and ``logger`` config groups as training builds them (``oad.tasks.training``), and the
checkpoint callbacks' settings (``checkpoint:`` of configs/train.yaml, ``oad/callbacks.py``). The files
they write are checked by tests/test_tasks.py, tests/test_resume.py and tests/test_entry_points.py."""

from __future__ import annotations

import pytest
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from oad.callbacks import BestCheckpoint, LastCheckpoint
from oad.tasks import train
from oad.tasks.training import instantiate_entries
from tests.conftest import TINY, compose_cfg


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
