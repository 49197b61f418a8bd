"""One LightningModule for every model: training on windows, online scoring of whole videos for
validation and test, metrics from ``oad.metrics`` (the project's single definition of every number).

The network, the criterion and the optimizer/scheduler partials are built outside (Hydra) and passed
in, as in the lightning-hydra-template. The checkpoint carries ``net_config`` (the model's constructor
arguments with its ``_target_``) and the dataset facts, so ``oad.checkpoint.load_network`` rebuilds the
network without the training config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from oad.data.base import Batch
from oad.models.base import class_probabilities
from oad.tasks.common import eval_window, metric_key
from oad.tasks.scoring import score_videos

log = logging.getLogger(__name__)


class OadLitModule(L.LightningModule):
    """Training/evaluation system around any ``oad`` model (the interface of :mod:`oad.models.base`).

    Args:
        net: the network.
        criterion: loss module returning named terms with a ``loss`` key (``OadCriterion``); None for
            evaluation only.
        optimizer: partial taking the parameters, e.g. ``functools.partial(torch.optim.Adam, lr=1e-4)``;
            None for evaluation only.
        scheduler: optional partial taking the optimizer.
        scheduler_interval: ``'epoch'`` or ``'step'``.
        net_config: constructor config of ``net`` (with ``_target_``), stored in checkpoints.
        data_info: dataset facts (``class_names``, ``ignore_index``, ``metric``, ``fps``, ``stream_dims``).
        eval_protocols: protocols reported at test time (``'all'`` first: it is the headline).
        postprocess: optional post-processing of the test scores (``'switch'``, ``'smooth'``), off by
            default and named in every report.
        eval_window: window of the "windows" protocol (None: the model's window, else 64).
        augment: optional function applied to every training batch (:class:`oad.data.augment.VideoShift`).

    After ``trainer.test``: ``test_results`` holds the report of each of ``eval_protocols`` (the test's
    metrics, computed once here for ``train`` and ``evaluate``) and ``test_predictions`` the scored videos.
    """

    def __init__(
        self,
        net: nn.Module,
        criterion: nn.Module | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        net_config: dict | None = None,
        data_info: dict | None = None,
        eval_protocols: tuple[str, ...] = ("all", "windows"),
        postprocess: tuple[str, ...] = (),
        eval_window: int | None = None,
        augment: Callable[[Batch], Batch] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "criterion", "optimizer", "scheduler", "augment"])
        self.net = net
        self.criterion = criterion
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.augment = augment
        info = data_info or {}
        self.ignore_index = info.get("ignore_index", 21)
        self.metric = info.get("metric", "AP")
        self.class_names = info.get("class_names")
        self._eval_outputs: dict[str, dict[str, np.ndarray]] = {}
        self.test_results: dict[str, Any] = {}
        self.test_predictions: dict[str, dict[str, np.ndarray]] = {}

    # -- training --------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        return self.net(x, mask)

    def _step(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits, future = self.net.training_logits(batch)
        return self.criterion(logits, future, batch["target"], batch["future_target"])

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.augment is not None:
            batch = self.augment(batch)
        terms = self._step(batch)
        bs = batch["features"].shape[0]
        for k, v in terms.items():
            self.log(f"train/{k}", v, on_step=True, on_epoch=True, prog_bar=(k == "loss"), batch_size=bs)
        return terms["loss"]

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        train_set = getattr(dm, "train_set", None)
        if train_set is not None and hasattr(train_set, "set_epoch"):
            train_set.set_epoch(self.current_epoch)  # new random window offsets (TRN, MiniROAD, LSTR recipes)

    # -- evaluation: whole videos, every chunk, online ---------------------------------------------------
    def _score_batch(self, batch: list[dict]) -> None:
        feats = [item["features"] for item in batch]
        outs = score_videos(self.net, feats)
        for item, (logits, future) in zip(batch, outs):
            self._eval_outputs[item["name"]] = {
                "scores": class_probabilities(logits, self.ignore_index).cpu().numpy(),
                "future_scores": class_probabilities(future, self.ignore_index).cpu().numpy(),
                "targets": item["targets"].cpu().numpy(),
            }

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        self._score_batch(batch)

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        self._score_batch(batch)

    def on_validation_epoch_start(self) -> None:
        self._eval_outputs = {}

    on_test_epoch_start = on_validation_epoch_start

    def gather_outputs(self) -> dict[str, dict[str, np.ndarray]]:
        """This process's scored videos, merged with the other processes' under DDP (each video once).

        Every process gets the same dict, in video-name order, so every process computes the same metrics
        (and ``ModelCheckpoint`` sees the same monitored value everywhere).
        """
        outputs = self._eval_outputs
        if self.trainer is not None and self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, outputs)
            outputs = {}
            for part in gathered:
                for name, value in part.items():
                    if name in outputs:
                        raise RuntimeError(f"video {name!r} was scored by two processes")
                    outputs[name] = value
        return dict(sorted(outputs.items()))

    def _evaluate(self, outputs: dict[str, dict[str, np.ndarray]], protocols: tuple[str, ...] = ("all",)) -> dict:
        from oad.metrics import evaluate_protocols

        return evaluate_protocols(
            {k: v["scores"] for k, v in outputs.items()},
            {k: v["targets"] for k, v in outputs.items()},
            protocols,
            metric=self.metric,
            ignore_index=self.ignore_index,
            window=eval_window(self.net, self.hparams.eval_window),
            num_queries=getattr(self.net, "num_queries", 8),
            future_scores={k: v["future_scores"] for k, v in outputs.items()},
            future_offset=getattr(self.net, "future_offset", 1),
            class_names=self.class_names,
            postprocess=tuple(self.hparams.postprocess),
        )

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        outputs = self.gather_outputs()
        if not outputs:
            return
        key = metric_key(self.metric)
        res = self._evaluate(outputs)["all"]
        # the same value on every process (gathered outputs): nothing to reduce
        self.log(f"val/{key}", float(res[key]), sync_dist=False, prog_bar=True)

    def on_test_epoch_end(self) -> None:
        outputs = self.gather_outputs()
        key = metric_key(self.metric)
        results = self._evaluate(outputs, tuple(self.hparams.eval_protocols))
        self.test_results = results
        self.test_predictions = outputs
        self.log(f"test/{key}", float(results[self.hparams.eval_protocols[0]][key]), sync_dist=False)

    # -- optimisation ------------------------------------------------------------------------------------
    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise RuntimeError("OadLitModule was built without an optimizer (evaluation only)")
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        if _takes_unbound(self.scheduler_factory, "total_steps"):  # e.g. oad.schedules.warmup_cosine
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval},
        }


def _takes_unbound(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory`` (a function or a ``functools.partial``) has a parameter ``name`` not yet bound."""
    import functools
    import inspect

    if isinstance(factory, functools.partial) and name in factory.keywords:
        return False
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
