"""What the tasks share: building the data module for a model, the model's config from the data, the
facts stored with a trained model, and the resolution of a few config values."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from oad.models.base import resolve

if TYPE_CHECKING:  # Lightning is imported by the tasks that train or evaluate, not by streaming
    from oad.data.datamodule import OadDataModule

log = logging.getLogger(__name__)


def sample_function(model_cfg: DictConfig | dict):
    """The model's training-sample function bound to its config (``samples(videos, ignore_index, seed)``)."""
    cfg = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
    cls = get_class(cfg["_target_"])
    cfg["future_offset"] = cls.future_offset
    return functools.partial(resolve(cls.samples), config=cfg)


def build_datamodule(cfg: DictConfig) -> OadDataModule:
    """The data config, with the model's training samples."""
    return instantiate(cfg.data, samples=sample_function(cfg.model), _recursive_=True)


def build_net_config(cfg: DictConfig, dm: OadDataModule) -> dict:
    """The model's constructor config with the feature size and class count read from the data, and for a
    model that splits its input by stream (a ``visual_dim`` key left null) the width of the first stream."""
    net_config = OmegaConf.to_container(cfg.model, resolve=True)
    net_config.update(in_dim=dm.in_dim, num_classes=dm.num_classes)
    if "visual_dim" in net_config and net_config["visual_dim"] is None and len(dm.stream_dims) == 2:
        net_config["visual_dim"] = int(dm.stream_dims[0])
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


def resolve_ignore_index(value: Any, auto: int | None) -> int | None:
    """The ignore class a config value names: ``'auto'``: ``auto`` (the data's or the checkpoint's);
    ``null``/``none``/-100: none; an integer: that class."""
    if value == "auto":
        value = auto
    if value in (None, "null", "none", "None", -100):
        return None
    return int(value)


DEFAULT_WINDOW = 64  # the "windows" protocol's window for models without one (and for prediction files)


def eval_window(net: Any, window: int | None = None) -> int:
    """The window of the "windows" protocol: ``window`` when given (one window for all models, e.g.
    ``eval.window=64``), else the model's own ``window`` (``net`` may be None: a predictions file), else 64."""
    if window is not None:
        return int(window)
    return int(getattr(net, "window", None) or DEFAULT_WINDOW)


def metric_key(metric: str) -> str:
    """The headline key of a data metric, as reports, logs (``val/<key>``, ``test/<key>``) and
    ``metrics.json`` name it: ``'mcAP'`` for calibrated AP (``'cAP'``, TVSeries), else ``'mAP'``."""
    return "mcAP" if metric == "cAP" else "mAP"


def recipe_name(cfg: DictConfig) -> str:
    """The recipe chosen for this run (``recipe/<name>.yaml``), for the start-up line and the reports."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices.get("recipe"))
    except Exception:  # noqa: BLE001 - composed without Hydra's runtime (e.g. a plain OmegaConf config)
        return str(cfg.get("recipe_name", "unknown"))
