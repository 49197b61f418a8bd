"""Tasks behind the thin entry points in ``tools/``: build everything from a Hydra config, run it,
return the results (so tests call these directly).

``train(cfg)``: data -> model (feature sizes read from the data) -> LightningModule -> Trainer.fit ->
test of the final weights on every chunk of every test video -> ``metrics.json`` and ``predictions.pkl``
in the run directory.
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

from oad.data.datamodule import OadDataModule
from oad.lit_module import OadLitModule

log = logging.getLogger(__name__)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def data_info(dm: OadDataModule) -> dict:
    return {
        "class_names": dm.class_names,
        "ignore_index": dm.ignore_index,
        "metric": dm.metric,
        "fps": float(getattr(dm.source, "fps", 4.0)),
        "stream_dims": list(dm.stream_dims),
    }


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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, then test the final weights. Returns ``{'metrics': ..., 'output_dir': ..., 'ckpt': ...}``."""
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
        data_info=data_info(dm),
    )
    n_params = sum(p.numel() for p in net.parameters())
    log.info("model %s: %s parameters, in_dim %d", net_config["_target_"], f"{n_params:,}", dm.in_dim)

    key = "mcAP" if dm.metric == "cAP" else "mAP"
    callbacks = [
        ModelCheckpoint(
            dirpath=output_dir / "checkpoints",
            filename="epoch{epoch:03d}",
            auto_insert_metric_name=False,
            save_last=True,
            save_top_k=-1 if not dm.splits["val"] else 1,
            monitor=f"val/{key}" if dm.splits["val"] else None,
            mode="max",
        )
    ]
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=CSVLogger(output_dir, name="logs"), default_root_dir=output_dir
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


def headline(metrics: dict[str, Any]) -> str:
    """The last line every task prints: ``test/mAP=<value>`` (or ``test/mcAP=``)."""
    key = metrics["metric"]
    return f"test/{key}={metrics['headline'][key]:.4f}"


__all__ = ["train", "headline", "write_json", "atomic_write_bytes", "write_predictions", "build_datamodule"]

