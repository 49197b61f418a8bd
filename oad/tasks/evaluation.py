"""``evaluate(cfg)``: score a checkpoint on a dataset, or any method's predictions file, under the
field's protocols; write ``metrics.json`` (the headline at its top level), ``predictions.pkl`` and plots."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from oad.data.datamodule import OadDataModule
from oad.io import load_predictions, write_json, write_predictions
from oad.tasks.common import data_info, eval_window, metric_key, resolve_ignore_index
from oad.tasks.lit_module import OadLitModule
from oad.tasks.report import make_plots

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """What one evaluation scored: the scores and targets by video, the protocol reports computed on them
    and the settings they were computed with."""

    scores: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    reports: dict[str, dict[str, Any]]
    metric: str
    ignore_index: int | None
    class_names: list[str] | None
    source: dict[str, Any]
    outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # checkpoint mode: predictions.pkl


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score a checkpoint on a dataset (``ckpt_path``) or a predictions file (``predictions``).

    Writes ``metrics.json`` (or ``cfg.output``), in checkpoint mode also ``predictions.pkl``, and with
    ``plot=true`` timeline PNGs and a per-class AP chart. Returns ``{'metrics', 'output_dir'}``. In
    checkpoint mode the model is the checkpoint's (``metrics.json``: ``model``, its config target as in
    training, and ``model_class``); a ``model`` in the config (``+model=...``) is not used, and a warning
    says so.
    """
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    protocols = list(cfg.protocols) if not isinstance(cfg.protocols, str) else [cfg.protocols]
    postprocess = tuple(cfg.get("postprocess") or ())
    if cfg.get("predictions"):
        if cfg.get("ckpt_path"):
            raise ValueError("give either ckpt_path=<checkpoint> or predictions=<pickle>, not both")
        scored = score_predictions_file(cfg, protocols, postprocess)
    elif cfg.get("ckpt_path"):
        scored = score_checkpoint(cfg, protocols, postprocess, output_dir)
        if scored is None:  # not the global-zero process
            return {"output_dir": str(output_dir)}
    else:
        raise ValueError("nothing to evaluate: give ckpt_path=<checkpoint> or predictions=<pickle>")

    key = metric_key(scored.metric)
    reports = scored.reports
    metrics = {
        "task": "eval",
        **scored.source,
        "metric": key,
        key: reports[protocols[0]][key],
        "ignore_index": scored.ignore_index,
        "postprocess": list(postprocess),
        "headline": {"protocol": protocols[0], key: reports[protocols[0]][key]},
        "protocols": reports,
    }
    if cfg.get("plot"):
        metrics["plots"] = make_plots(scored.scores, scored.targets, reports[protocols[0]], scored.class_names,
                                      output_dir, ignore_index=scored.ignore_index,
                                      max_videos=cfg.get("plot_max_videos", 20))
    out_path = Path(cfg.output) if cfg.get("output") else output_dir / "metrics.json"
    # Written last, each atomically: a run that fails anywhere above leaves earlier results untouched.
    if "ckpt_path" in scored.source:
        write_predictions(output_dir / "predictions.pkl", scored.outputs)
    write_json(out_path, metrics)
    return {"metrics": metrics, "output_dir": str(output_dir), "metrics_path": str(out_path)}


def score_predictions_file(cfg: DictConfig, protocols: list[str], postprocess: tuple[str, ...]) -> Scored:
    """The reports of ``cfg.predictions`` (any method's scores and targets), with the settings the config
    gives (``metric``, ``ignore_index``, ``window``, ``num_queries``, ``future_offset``, ``class_names``)."""
    from oad.metrics import evaluate_protocols

    pred = load_predictions(cfg.predictions)
    scores, targets = pred["perframe_pred_scores"], pred["perframe_gt_targets"]
    first = next(iter(targets.values()), None)
    num_classes = int(first.shape[-1]) if first is not None and first.ndim == 2 else 0
    class_names = list(cfg.class_names) if cfg.get("class_names") else None
    ignore_index = resolve_ignore_index(cfg.ignore_index, 21 if num_classes == 22 else None)
    metric = cfg.metric or "AP"
    reports = evaluate_protocols(
        scores, targets, protocols, metric=metric, ignore_index=ignore_index,
        window=eval_window(None, cfg.get("window")), num_queries=cfg.num_queries, postprocess=postprocess,
        future_scores=pred.get("perframe_future_scores"), future_offset=cfg.future_offset, class_names=class_names,
    )
    return Scored(scores, targets, reports, metric, ignore_index, class_names, {"predictions": str(cfg.predictions)})


def score_checkpoint(cfg: DictConfig, protocols: list[str], postprocess: tuple[str, ...],
                     output_dir: Path) -> Scored | None:
    """Test ``cfg.ckpt_path`` on its data (``cfg.data``, else the data config stored in the checkpoint)
    through :class:`OadLitModule`, whose test hook computes the reports; None on the processes other
    than global zero (distributed evaluation)."""
    from oad.checkpoint import load_network

    net, info = load_network(cfg.ckpt_path)
    target = info["net_config"]["_target_"]
    if cfg.get("model"):
        asked = cfg.model.get("_target_") if isinstance(cfg.model, DictConfig) else cfg.model
        log.warning("model=%s on the command line is not used: the checkpoint's model is evaluated, %s (%s)%s",
                    str(asked).rsplit(".", 1)[-1], type(net).__name__, target,
                    "" if asked == target else "; it differs from the one asked for")
    data_cfg = cfg.get("data") or (info["data_info"] or {}).get("data_config")
    if not data_cfg:
        raise ValueError(f"checkpoint {cfg.ckpt_path} stores no data config: choose one, e.g. data=thumos14 data.root=...")
    dm: OadDataModule = instantiate(data_cfg)
    dm.setup("test")
    if dm.in_dim != getattr(net, "in_dim", dm.in_dim):
        raise ValueError(f"checkpoint {cfg.ckpt_path}: the model takes {net.in_dim}-d features, "
                         f"the data has {dm.in_dim} ({'+'.join(map(str, dm.stream_dims))})")
    if dm.num_classes != net.num_classes:
        raise ValueError(f"checkpoint {cfg.ckpt_path}: the model has {net.num_classes} classes, "
                         f"the data has {dm.num_classes}")
    metric = cfg.metric or dm.metric
    ignore_index = resolve_ignore_index(cfg.ignore_index, dm.ignore_index)
    lit = OadLitModule(net=net, net_config=info["net_config"], data_info={**data_info(dm), "metric": metric,
                       "ignore_index": ignore_index}, eval_protocols=tuple(protocols), postprocess=postprocess,
                       eval_window=eval_window(net, cfg.get("window")))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[], default_root_dir=output_dir)
    trainer.test(lit, datamodule=dm)
    if not trainer.is_global_zero:
        return None
    outputs = lit.test_predictions
    return Scored(
        scores={k: v["scores"] for k, v in outputs.items()},
        targets={k: v["targets"] for k, v in outputs.items()},
        reports=lit.test_results, metric=metric, ignore_index=ignore_index, class_names=dm.class_names,
        source={"ckpt_path": str(cfg.ckpt_path), "epoch": info.get("epoch"), "model": target,
                "model_class": type(net).__name__}, outputs=outputs,
    )
