"""``train(cfg)``: data -> model (feature sizes read from the data) -> LightningModule -> Trainer.fit ->
test on every chunk of every test video -> ``metrics.json`` and ``predictions.pkl`` in the run directory.
The test scores the final weights, or with ``checkpoint.test_weights=best`` the epoch with the best
validation metric (``best.ckpt``: early stopping on a real validation split; ``metrics.json`` says which).

The trainer's callbacks and loggers are the ``callbacks`` and ``logger`` config groups, instantiated
entry by entry. By default (``configs/callbacks/default.yaml``, :mod:`oad.callbacks`) checkpoints go to
``<run dir>/checkpoints/``: ``last.ckpt`` always holds the newest weights (the final ones after a finished
run), ``epoch<NNN>.ckpt`` one per epoch; nothing is picked on a metric unless
``checkpoint.select_best=true``. ``ckpt_path=last`` resumes from ``last.ckpt``, exactly: the resumed run
ends with the weights the uninterrupted run ends with (:mod:`oad.data.sampling` says what Lightning restores
and what the data module adds). The default logger writes ``<run dir>/logs/`` (CSV);
``logger=tensorboard`` TensorBoard event files, ``logger=none`` nothing. With an ``ema:`` block in the
recipe (:class:`oad.callbacks.ExponentialMovingAverage`), validation, the test and the checkpoints'
``state_dict`` are the averaged weights, and ``metrics.json`` says the ``ema`` settings (null: none).

A run holds its run directory for as long as it lasts (:mod:`oad.runlock`): a second run there fails at
once, before anything is built.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import WeightAveraging
from omegaconf import DictConfig

from oad.callbacks import AtomicCheckpointIO, BestCheckpoint, ExponentialMovingAverage, LastCheckpoint
from oad.checkpoint import check_resume_checkpoint
from oad.data.augment import VideoShift, video_mean_spread
from oad.io import write_json, write_predictions
from oad.models.base import count_parameters
from oad.runlock import hold_run_folder
from oad.tasks.common import build_datamodule, build_net_config, data_info, eval_window, metric_key, recipe_name, resolve_ckpt_path
from oad.tasks.lit_module import OadLitModule

log = logging.getLogger(__name__)


def instantiate_entries(node: DictConfig | None) -> list[Any]:
    """Every entry of a config group made of named ``_target_`` entries (``callbacks``, ``logger``),
    instantiated in order; an entry that builds a list (e.g. :func:`oad.callbacks.checkpoint_callbacks`)
    adds each of its items. An empty or missing group gives ``[]``."""
    made: list[Any] = []
    for entry in (node or {}).values():
        obj = instantiate(entry)
        made.extend(obj if isinstance(obj, list) else [obj])
    return made


def build_augment(cfg: DictConfig, dm) -> VideoShift | None:
    """The training batches' augmentation from ``cfg.augment`` (None when off): ``video_shift``, the
    strength of :class:`oad.data.augment.VideoShift`, scaled by the training videos' per-video spread."""
    strength = float((cfg.get("augment") or {}).get("video_shift", 0.0) or 0.0)
    if strength == 0:
        return None
    scale = video_mean_spread(dm.videos("train"))
    log.info("augment: video shift %.3g x the per-video spread of the training means (mean %.3g per dimension)",
             strength, float(scale.mean()))
    return VideoShift(scale, strength)


def train(cfg: DictConfig, callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Train, then test the final (or best-on-validation) weights. Returns ``{'metrics': ..., 'output_dir': ..., 'ckpt': ...}``.

    ``callbacks`` are added to the trainer's (e.g. a throughput meter). The run folder is held for the
    whole run (:mod:`oad.runlock`), before anything is built.

    Raises:
        oad.runlock.RunFolderBusy: another run holds ``cfg.output_dir``.
    """
    output_dir = Path(cfg.output_dir)
    with hold_run_folder(output_dir):
        return _train(cfg, output_dir, callbacks)


def _train(cfg: DictConfig, output_dir: Path, callbacks: list[L.Callback] | None) -> dict[str, Any]:
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
        augment=build_augment(cfg, dm),
    )
    n_params = count_parameters(net)
    recipe = recipe_name(cfg)
    log.info("model %s, recipe %s: %s parameters, in_dim %d", type(net).__name__, recipe, f"{n_params:,}", dm.in_dim)

    key = metric_key(dm.metric)
    # weight averaging first: at the end of a step it updates the average before last.ckpt is written
    configured = sorted(instantiate_entries(cfg.get("callbacks")), key=lambda c: not isinstance(c, WeightAveraging))
    ema = next((c.settings for c in configured if isinstance(c, ExponentialMovingAverage)), None)
    test_weights = (cfg.get("checkpoint") or {}).get("test_weights", "final")
    best_cb = next((c for c in configured if isinstance(c, BestCheckpoint)), None)
    if test_weights == "best" and (best_cb is None or not dm.splits["val"]):
        raise ValueError("checkpoint.test_weights=best needs checkpoint.select_best=true and a validation split "
                         "(data.val_split)")
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=[*configured, *(callbacks or [])], logger=instantiate_entries(cfg.get("logger")) or False,
        default_root_dir=output_dir, plugins=[AtomicCheckpointIO()],
    )
    ckpt_path = check_resume_checkpoint(resolve_ckpt_path(cfg.get("ckpt_path"), output_dir), net_config, net,
                                        weight_averaging=any(isinstance(c, WeightAveraging) for c in configured))
    with warnings.catch_warnings():
        # the data module does resume a mid-epoch checkpoint where it was (oad.data.sampling); Lightning
        # only knows loaders that follow its own state protocol, and would warn that it does not
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
        trainer.fit(lit, datamodule=dm, ckpt_path=ckpt_path)

    last = next((c.path for c in configured if isinstance(c, LastCheckpoint)), None)
    result: dict[str, Any] = {"output_dir": str(output_dir), "ckpt": str(last) if last else None}
    if cfg.get("test", True):
        tested = {"weights": "final", "epoch": int(trainer.current_epoch) - 1}
        if test_weights == "best":
            # early stopping: the epoch with the best validation metric, chosen on the validation split only
            best_score = best_cb.best_model_score
            trainer.test(lit, datamodule=dm, ckpt_path=best_cb.best_model_path, weights_only=False)
            best_epoch = torch.load(best_cb.best_model_path, map_location="cpu", weights_only=False)["epoch"]
            tested = {"weights": "best", "epoch": int(best_epoch), best_cb.monitor: float(best_score)}
        else:
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
                "tested": tested,
                "ema": ema,
                "augment": {"video_shift": float(lit.augment.strength)} if lit.augment is not None else None,
                "class_coverage": class_coverage(dm, lit.test_results["all"], key),
                "protocols": lit.test_results,
            }
            unseen = metrics["class_coverage"]["unseen_in_training"]
            if unseen:
                log.warning("%d of %d scored test classes have no training chunk (%s): their AP measures guesses; "
                            "%s over the others: %s", len(unseen), metrics["class_coverage"]["scored"],
                            ", ".join(unseen), key, metrics["class_coverage"][f"{key}_seen"])
            write_json(output_dir / "metrics.json", metrics)
            write_predictions(output_dir / "predictions.pkl", lit.test_predictions)
            result["metrics"] = metrics
    return result




def class_coverage(dm, results: dict, key: str) -> dict[str, Any]:
    """Which scored test classes the training split never shows (no positive chunk), and the headline over
    the others: a split that leaves a class out of training measures guesses on it (e.g. 20 training
    videos drawn at random from THUMOS'14's 200, one action class per video, miss a third of the classes).

    Args:
        dm: the data module (its training videos and class names).
        results: the test results of the "all" protocol (``per_class_AP`` by class name).
        key: the headline's name (``mAP`` or ``mcAP``).

    Returns:
        ``{'scored': classes with an AP, 'unseen_in_training': [names], '<key>_seen': mean AP over the
        scored classes seen in training (None when none is)}``.
    """
    names = dm.class_names
    seen = set()
    for v in dm.videos("train"):
        seen.update(int(c) for c in np.flatnonzero(np.asarray(v.targets).sum(0) > 0))
    per_class = results.get("per_class_AP") or {}
    unseen = [n for n in per_class if n in names and names.index(n) not in seen]
    kept = [float(ap) for n, ap in per_class.items() if n not in unseen and ap is not None]
    return {"scored": len(per_class), "unseen_in_training": unseen,
            f"{key}_seen": float(np.mean(kept)) if kept else None}
