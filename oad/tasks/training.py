"""``train(cfg)``: data -> model (feature sizes read from the data) -> LightningModule -> Trainer.fit ->
test of the final weights on every chunk of every test video -> ``metrics.json`` and ``predictions.pkl``
in the run directory.

Checkpoints go to ``<run dir>/checkpoints/``: ``last.ckpt`` always holds the newest weights (the final
ones after a finished run), ``epoch<NNN>.ckpt`` one per epoch; nothing is picked on a metric unless
``checkpoint.select_best=true``. ``ckpt_path=last`` resumes from ``last.ckpt``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from oad.distributed import AtomicCheckpointIO
from oad.io import write_json, write_predictions
from oad.models.base import count_parameters
from oad.tasks.common import build_datamodule, build_net_config, data_info, eval_window, metric_key, recipe_name, resolve_ckpt_path
from oad.tasks.lit_module import OadLitModule

log = logging.getLogger(__name__)


class LastCheckpoint(L.Callback):
    """``last.ckpt``: always the newest weights of the run.

    Written (atomically, through the trainer's checkpoint IO) after every validation of the fit, every
    ``every_n_train_steps`` optimizer steps (0: never mid-epoch), at the end of an epoch without
    validation, and once more when training ends, so after a finished run it holds the final global
    step, the weights the headline is computed from. A killed run resumes from it (``ckpt_path=last``)
    losing at most ``every_n_train_steps`` steps.

    Lightning's own ``ModelCheckpoint(save_last=True)`` only rewrites ``last.ckpt`` when that callback
    saved a top-k file at the same step: with a monitored metric, an epoch that is not the best leaves
    ``last.ckpt`` at the best epoch's step (the bug this replaces).
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_train_steps: int = 0):
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n = int(every_n_train_steps or 0)
        self._saved_step = -1

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.every_n > 0 and trainer.global_step % self.every_n == 0 and trainer.global_step != self._saved_step:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the end-of-epoch state (validation done) replaces a mid-epoch file of the same step
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.enable_validation or not trainer.val_dataloaders:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the final step when the last save was earlier (e.g. max_steps reached inside an epoch); after a
        # full last epoch the file written after its validation already holds the final weights, and
        # keeps Lightning's epoch index of that epoch
        if trainer.global_step != self._saved_step:
            self._save(trainer)


def checkpoint_callbacks(dirpath: Path, cfg: DictConfig | None, key: str, has_val: bool) -> list[L.Callback]:
    """``last.ckpt`` (:class:`LastCheckpoint`), ``epoch<NNN>.ckpt`` per epoch, and ``best.ckpt`` on request.

    No checkpoint is picked on a metric by default: THUMOS'14 has no validation split and its
    validation monitors the test videos, so "best" would be chosen on the test set. With a real
    validation split, ``checkpoint.select_best=true`` also keeps the epoch with the best ``val/<metric>``
    as ``best.ckpt``; the headline is still computed from the final weights.
    """
    cfg = cfg or {}
    callbacks: list[L.Callback] = [LastCheckpoint(dirpath, int(cfg.get("every_n_train_steps") or 0))]
    every_n_epochs = int(cfg.get("every_n_epochs", 1) or 0)
    if every_n_epochs > 0:
        callbacks.append(ModelCheckpoint(dirpath=dirpath, filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                                         save_top_k=-1, every_n_epochs=every_n_epochs, save_last=False,
                                         enable_version_counter=False))
    if cfg.get("select_best", False):
        if not has_val:
            raise ValueError("checkpoint.select_best=true needs a validation split (data.val_split)")
        callbacks.append(ModelCheckpoint(dirpath=dirpath, filename="best", monitor=f"val/{key}", mode="max",
                                         save_top_k=1, save_last=False, enable_version_counter=False))
    return callbacks


def train(cfg: DictConfig, callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Train, then test the final weights. Returns ``{'metrics': ..., 'output_dir': ..., 'ckpt': ...}``.

    ``callbacks`` are added to the trainer's (e.g. a throughput meter).
    """
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    dm = build_datamodule(cfg)
    dm.setup("fit")  # loads and checks the data before anything else is built
    net_config = build_net_config(cfg, dm)
    net = instantiate(net_config)
    criterion = instantiate(cfg.criterion, ignore_index=dm.ignore_index)
    lit = OadLitModule(
        net=net,
        criterion=criterion,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        scheduler_interval=cfg.get("scheduler_interval", "epoch"),
        net_config=net_config,
        data_info=data_info(dm, cfg.data),
        eval_window=eval_window(net, (cfg.get("eval") or {}).get("window")),
    )
    n_params = count_parameters(net)
    recipe = recipe_name(cfg)
    log.info("model %s, recipe %s: %s parameters, in_dim %d", type(net).__name__, recipe, f"{n_params:,}", dm.in_dim)

    key = metric_key(dm.metric)
    saving = checkpoint_callbacks(output_dir / "checkpoints", cfg.get("checkpoint"), key, bool(dm.splits["val"]))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=[*saving, *(callbacks or [])], logger=CSVLogger(output_dir, name="logs"),
        default_root_dir=output_dir, plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(lit, datamodule=dm, ckpt_path=resolve_ckpt_path(cfg.get("ckpt_path"), output_dir))

    result: dict[str, Any] = {"output_dir": str(output_dir), "ckpt": str(output_dir / "checkpoints" / "last.ckpt")}
    if cfg.get("test", True):
        trainer.test(lit, datamodule=dm)
        if trainer.is_global_zero:
            metrics = {
                "task": "train",
                "model": net_config["_target_"],
                "recipe": recipe,
                "num_parameters": n_params,
                "metric": key,
                key: lit.test_results["all"][key],
                "headline": {"protocol": "all", key: lit.test_results["all"][key]},
                "protocols": lit.test_results,
            }
            write_json(output_dir / "metrics.json", metrics)
            write_predictions(output_dir / "predictions.pkl", lit.test_predictions)
            result["metrics"] = metrics
    return result


