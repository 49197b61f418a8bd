"""Tasks behind the thin entry points in ``tools/``: build everything from a Hydra config, run it,
return the results (so tests call these directly).

``train(cfg)``: data -> model (feature sizes read from the data) -> LightningModule -> Trainer.fit ->
test of the final weights on every chunk of every test video -> ``metrics.json`` and ``predictions.pkl``
in the run directory. Checkpoints go to ``<run dir>/checkpoints/`` (``last.ckpt`` among them, written
atomically and every ``checkpoint.every_n_train_steps`` steps); ``ckpt_path=last`` resumes from it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from oad.atomic import atomic_write_bytes
from oad.data.datamodule import OadDataModule
from oad.distributed import AtomicCheckpointIO
from oad.lit_module import OadLitModule

log = logging.getLogger(__name__)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_predictions(path: str | os.PathLike, outputs: dict[str, dict[str, np.ndarray]]) -> None:
    """Predictions in the LSTR exchange format, plus the decoder's future scores."""
    payload = {
        "perframe_pred_scores": {k: v["scores"] for k, v in outputs.items()},
        "perframe_gt_targets": {k: v["targets"] for k, v in outputs.items()},
        "perframe_future_scores": {k: v["future_scores"] for k, v in outputs.items()},
    }
    atomic_write_bytes(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def build_datamodule(cfg: DictConfig) -> OadDataModule:
    """The data config, told the model's window, queries and supervision mode."""
    net_cls = get_class(cfg.model._target_)
    return instantiate(
        cfg.data,
        window=cfg.model.window,
        num_queries=cfg.model.num_queries,
        future_offset=net_cls.future_offset,
        dense=net_cls.dense_supervision,
        _recursive_=True,
    )


def build_net_config(cfg: DictConfig, dm: OadDataModule) -> dict:
    """The model's constructor config with the feature size and class count read from the data."""
    net_config = OmegaConf.to_container(cfg.model, resolve=True)
    net_config.update(in_dim=dm.in_dim, num_classes=dm.num_classes)
    return net_config


def data_info(dm: OadDataModule, data_cfg: DictConfig | None = None) -> dict:
    """Dataset facts stored with a model (and the data config, so evaluation can rebuild the data)."""
    info = {
        "class_names": dm.class_names,
        "ignore_index": dm.ignore_index,
        "metric": dm.metric,
        "fps": float(getattr(dm.source, "fps", 4.0)),
        "stream_dims": list(dm.stream_dims),
    }
    if data_cfg is not None:
        info["data_config"] = OmegaConf.to_container(data_cfg, resolve=True)
    return info


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"ckpt_path=last: {last} does not exist (set hydra.run.dir to the run to resume)")
        return str(last)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such file")
    return str(ckpt_path)


def checkpoint_callbacks(dirpath: Path, cfg: DictConfig | None, key: str, has_val: bool) -> list[ModelCheckpoint]:
    """``epoch<NNN>.ckpt`` (the best on validation, or every epoch without it) and ``last.ckpt``.

    ``last.ckpt`` is rewritten at every epoch end and, with ``checkpoint.every_n_train_steps: N``, every
    N optimizer steps, so a killed run resumes (``ckpt_path=last``) losing at most N steps. Both callbacks
    write the same ``last.ckpt`` (no ``last-v1.ckpt`` versions).
    """
    every_n = int((cfg or {}).get("every_n_train_steps") or 0)
    callbacks = [
        ModelCheckpoint(
            dirpath=dirpath,
            filename="epoch{epoch:03d}",
            auto_insert_metric_name=False,
            save_last=True,
            save_top_k=-1 if not has_val else 1,
            monitor=f"val/{key}" if has_val else None,
            mode="max",
            enable_version_counter=False,
        )
    ]
    if every_n > 0:
        callbacks.append(ModelCheckpoint(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n,
                                         enable_version_counter=False))
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
    )
    n_params = sum(p.numel() for p in net.parameters())
    log.info("model %s: %s parameters, in_dim %d", net_config["_target_"], f"{n_params:,}", dm.in_dim)

    key = "mcAP" if dm.metric == "cAP" else "mAP"
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
                "num_parameters": n_params,
                "metric": key,
                "headline": {"protocol": "all", key: lit.test_results["all"][key]},
                "protocols": lit.test_results,
            }
            write_json(output_dir / "metrics.json", metrics)
            write_predictions(output_dir / "predictions.pkl", lit.test_predictions)
            result["metrics"] = metrics
    return result


def load_predictions(path: str | os.PathLike) -> dict[str, Any]:
    """Read a predictions pickle in the LSTR exchange format, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions {path}: no such file")
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"predictions {path}: not a readable pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or "perframe_pred_scores" not in obj or "perframe_gt_targets" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"predictions {path}: expected a dict with 'perframe_pred_scores' and 'perframe_gt_targets' "
            f"(the LSTR format), got {keys}"
        )
    for key in ("perframe_pred_scores", "perframe_gt_targets"):
        if not isinstance(obj[key], dict):
            raise ValueError(f"predictions {path}: {key!r} must map session -> (T, C) array")
        obj[key] = {str(k): np.asarray(v) for k, v in obj[key].items()}
    return obj


def _resolve_ignore_index(value: Any, num_classes: int) -> int | None:
    """``'auto'``: 21 for 22-class (THUMOS-style) data, none otherwise; ``null``/``none``: none."""
    if value in (None, "null", "none", "None", -100):
        return None
    if value == "auto":
        return 21 if num_classes == 22 else None
    return int(value)


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
        ignore_index = _resolve_ignore_index(cfg.ignore_index, num_classes)
        metric = cfg.metric or "AP"
        future = pred.get("perframe_future_scores")
        window, num_queries, future_offset = cfg.window, cfg.num_queries, cfg.future_offset
        source = {"predictions": str(cfg.predictions)}
    elif cfg.get("ckpt_path"):
        from oad.checkpoint import load_network

        net, info = load_network(cfg.ckpt_path)
        data_cfg = cfg.get("data") or (info["data_info"] or {}).get("data_config")
        if not data_cfg:
            raise ValueError(f"checkpoint {cfg.ckpt_path} stores no data config: choose one, e.g. data=thumos14 data.root=...")
        dm: OadDataModule = instantiate(
            data_cfg, window=net.window, num_queries=net.num_queries, future_offset=net.future_offset,
            dense=net.dense_supervision,
        )
        dm.setup("test")
        if dm.in_dim != getattr(net, "in_dim", dm.in_dim):
            raise ValueError(f"checkpoint {cfg.ckpt_path}: the model takes {net.in_dim}-d features, "
                             f"the data has {dm.in_dim} ({'+'.join(map(str, dm.stream_dims))})")
        if dm.num_classes != net.num_classes:
            raise ValueError(f"checkpoint {cfg.ckpt_path}: the model has {net.num_classes} classes, "
                             f"the data has {dm.num_classes}")
        metric = cfg.metric or dm.metric
        ignore_index = dm.ignore_index if cfg.ignore_index == "auto" else _resolve_ignore_index(cfg.ignore_index, dm.num_classes)
        class_names = dm.class_names
        lit = OadLitModule(net=net, net_config=info["net_config"], data_info={**data_info(dm), "metric": metric,
                           "ignore_index": ignore_index}, eval_protocols=tuple(protocols), postprocess=postprocess)
        trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[], default_root_dir=output_dir)
        trainer.test(lit, datamodule=dm)
        if not trainer.is_global_zero:
            return {"output_dir": str(output_dir)}
        outputs = lit.test_predictions
        scores = {k: v["scores"] for k, v in outputs.items()}
        targets = {k: v["targets"] for k, v in outputs.items()}
        future = {k: v["future_scores"] for k, v in outputs.items()}
        window, num_queries, future_offset = net.window, net.num_queries, net.future_offset
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


def make_plots(scores, targets, report, class_names, output_dir: Path, ignore_index, max_videos: int = 20) -> dict:
    """Timeline PNG per video (up to ``max_videos``) and the per-class AP bar chart."""
    from oad.plots import plot_per_class_ap, plot_timeline

    C = next(iter(scores.values())).shape[1]
    names = class_names or [str(i) for i in range(C)]
    timelines = []
    for session in sorted(scores)[:max_videos]:
        path = output_dir / "timelines" / f"{session}.png"
        plot_timeline(scores[session], targets[session], names, path, title=session, ignore_index=ignore_index)
        timelines.append(str(path))
    per_class = {str(k): v for k, v in report["per_class_AP"].items() if v is not None}
    bar = plot_per_class_ap(per_class, output_dir / "per_class_ap.png", title=f"per-class AP ({report['protocol']})")
    return {"timelines": timelines, "per_class_ap": str(bar)}


def format_report(metrics: dict[str, Any]) -> str:
    """A per-class table and the means, one block per protocol, for the terminal."""
    key = metrics["metric"]
    lines = []
    for protocol, rep in metrics["protocols"].items():
        if "error" in rep:
            lines.append(f"protocol '{protocol}': not reported ({rep['error']})")
            continue
        extra = f", post-processing: {'+'.join(rep['postprocess'])}" if rep.get("postprocess") else ""
        lines.append(f"protocol '{protocol}': {rep['num_videos']} videos, {rep['num_chunks_scored']} chunks scored{extra}")
        width = max([len(str(c)) for c in rep["per_class_AP"]] + [10])
        lines.append(f"  {'class':<{width}}  {'cAP' if key == 'mcAP' else 'AP':>7}")
        for c, ap in rep["per_class_AP"].items():
            lines.append(f"  {str(c):<{width}}  {'   n/a' if ap is None else f'{100 * ap:7.2f}'}")
        lines.append(f"  {'mean':<{width}}  {100 * rep[key]:7.2f}")
        stage = rep.get("per_stage")
        if stage and stage.get("mAP"):
            lines.append("  per-stage mAP (deciles): " + " ".join(
                "  n/a" if v is None else f"{100 * v:5.1f}" for v in stage["mAP"]))
        ant = rep.get("anticipation")
        if ant and ant.get("mAP"):
            lines.append("  anticipation mAP (step 1..Q): " + " ".join(
                "  n/a" if v is None else f"{100 * v:5.1f}" for v in ant["mAP"]))
    return "\n".join(lines)


def headline(metrics: dict[str, Any]) -> str:
    """The last line every task prints: ``test/mAP=<value>`` (or ``test/mcAP=``)."""
    key = metrics["metric"]
    return f"test/{key}={metrics['headline'][key]:.4f}"


__all__ = ["train", "evaluate", "format_report", "headline", "write_json", "atomic_write_bytes", "write_predictions", "build_datamodule"]

