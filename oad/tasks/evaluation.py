"""``evaluate(cfg)``: score a checkpoint on a dataset, or any method's predictions file, under the
field's protocols; write ``metrics.json`` (the headline at its top level), ``predictions.pkl`` and plots."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from oad.data.datamodule import OadDataModule
from oad.io import load_predictions, write_json, write_predictions
from oad.tasks.common import DEFAULT_WINDOW, data_info, eval_window, resolve_ignore_index
from oad.tasks.lit_module import OadLitModule
from oad.tasks.report import make_plots

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score a checkpoint on a dataset (``ckpt_path``) or a predictions file (``predictions``).

    Writes ``metrics.json`` (or ``cfg.output``), in checkpoint mode also ``predictions.pkl``, and with
    ``plot=true`` timeline PNGs and a per-class AP chart. Returns ``{'metrics', 'output_dir'}``.
    """
    from oad.metrics import evaluate_protocols

    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    protocols = list(cfg.protocols) if not isinstance(cfg.protocols, str) else [cfg.protocols]
    postprocess = tuple(cfg.get("postprocess") or ())
    outputs: dict[str, dict[str, np.ndarray]]
    if cfg.get("predictions"):
        if cfg.get("ckpt_path"):
            raise ValueError("give either ckpt_path=<checkpoint> or predictions=<pickle>, not both")
        pred = load_predictions(cfg.predictions)
        scores, targets = pred["perframe_pred_scores"], pred["perframe_gt_targets"]
        first = next(iter(targets.values()), None)
        num_classes = int(first.shape[-1]) if first is not None and first.ndim == 2 else 0
        class_names = list(cfg.class_names) if cfg.get("class_names") else None
        ignore_index = resolve_ignore_index(cfg.ignore_index, 21 if num_classes == 22 else None)
        metric = cfg.metric or "AP"
        future = pred.get("perframe_future_scores")
        window = int(cfg.window) if cfg.get("window") is not None else DEFAULT_WINDOW
        num_queries, future_offset = cfg.num_queries, cfg.future_offset
        source = {"predictions": str(cfg.predictions)}
    elif cfg.get("ckpt_path"):
        from oad.checkpoint import load_network

        net, info = load_network(cfg.ckpt_path)
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
        class_names = dm.class_names
        window = eval_window(net, cfg.get("window"))
        lit = OadLitModule(net=net, net_config=info["net_config"], data_info={**data_info(dm), "metric": metric,
                           "ignore_index": ignore_index}, eval_protocols=tuple(protocols), postprocess=postprocess,
                           eval_window=window)
        trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[], default_root_dir=output_dir)
        trainer.test(lit, datamodule=dm)
        if not trainer.is_global_zero:
            return {"output_dir": str(output_dir)}
        outputs = lit.test_predictions
        scores = {k: v["scores"] for k, v in outputs.items()}
        targets = {k: v["targets"] for k, v in outputs.items()}
        future = {k: v["future_scores"] for k, v in outputs.items()}
        num_queries, future_offset = net.num_queries, net.future_offset
        source = {"ckpt_path": str(cfg.ckpt_path), "epoch": info.get("epoch")}
    else:
        raise ValueError("nothing to evaluate: give ckpt_path=<checkpoint> or predictions=<pickle>")

    key = "mcAP" if metric == "cAP" else "mAP"
    reports = evaluate_protocols(
        scores, targets, protocols, metric=metric, ignore_index=ignore_index, window=window,
        num_queries=num_queries, postprocess=postprocess, future_scores=future, future_offset=future_offset,
        class_names=class_names,
    )
    metrics = {
        "task": "eval",
        **source,
        "metric": key,
        key: reports[protocols[0]][key],
        "ignore_index": ignore_index,
        "postprocess": list(postprocess),
        "headline": {"protocol": protocols[0], key: reports[protocols[0]][key]},
        "protocols": reports,
    }
    if cfg.get("plot"):
        metrics["plots"] = make_plots(scores, targets, reports[protocols[0]], class_names, output_dir,
                                      ignore_index=ignore_index, max_videos=cfg.get("plot_max_videos", 20))
    out_path = Path(cfg.output) if cfg.get("output") else output_dir / "metrics.json"
    # Written last, each atomically: a run that fails anywhere above leaves earlier results untouched.
    if "ckpt_path" in source:
        write_predictions(output_dir / "predictions.pkl", outputs)
    write_json(out_path, metrics)
    return {"metrics": metrics, "output_dir": str(output_dir), "metrics_path": str(out_path)}


