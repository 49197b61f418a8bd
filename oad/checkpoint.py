"""Checkpoints: rebuild a trained network from a checkpoint file without its training config.

Both files this project writes carry the network's constructor config and the dataset facts under
``hyper_parameters``: Lightning checkpoints saved during training, and files written by
``tools/convert_reference_checkpoint.py`` (a reference OadTR/TRN checkpoint turned into this format).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from torch import nn

from oad.io import atomic_open


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"checkpoint {path}: cannot be read ({type(e).__name__}: {e})") from e


def load_network(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Build the network stored in an ``oad`` checkpoint and load its weights (eval mode, CPU).

    Returns:
        ``(net, info)`` with ``info = {'net_config', 'data_info', 'epoch'}``.
    """
    ckpt = load_checkpoint_file(path)
    hp = ckpt.get("hyper_parameters") or {}
    cfg = hp.get("net_config")
    if not cfg or "_target_" not in cfg:
        raise ValueError(
            f"checkpoint {path}: no 'hyper_parameters.net_config'; it was not written by oad "
            "(convert a reference checkpoint with tools/convert_reference_checkpoint.py)"
        )
    cfg = dict(cfg)
    cls = get_class(cfg.pop("_target_"))
    net = cls(**cfg)
    prefix = "net."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path}: weights do not fit {cls.__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    net.eval()
    return net, {"net_config": hp.get("net_config"), "data_info": hp.get("data_info") or {},
                 "epoch": ckpt.get("epoch")}


def check_resume_checkpoint(path: str | None, net_config: dict, net: nn.Module,
                            weight_averaging: bool = False) -> str | None:
    """The checkpoint a training run resumes from (``ckpt_path=``), checked before Lightning restores it:
    readable, a checkpoint of a training run (with its optimizer state), of the configured model class,
    with weights of the configured model's names and shapes; one written with an average of the weights
    (its ``state_dict`` the average, the trained weights in ``current_model_state``) only when this run
    averages too (``weight_averaging``): else the average would silently become the weights trained on.
    Returns ``path`` (None: no resume).

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file and what does not fit (the stored and the configured model, the first
            differing weights and config values).
    """
    if path is None:
        return None
    ckpt = load_checkpoint_file(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"checkpoint {path}: not a checkpoint of this project (no state_dict)")
    stored = dict((ckpt.get("hyper_parameters") or {}).get("net_config") or {})
    target = net_config["_target_"]
    if stored.get("_target_") not in (None, target):
        raise ValueError(f"checkpoint {path}: a checkpoint of another model: {stored['_target_']}, this run configures "
                         f"{target}; resume with the model it was trained with (model=...), or start a new run "
                         "without ckpt_path")
    if "optimizer_states" not in ckpt or "loops" not in ckpt:
        raise ValueError(f"checkpoint {path}: weights only, no training state (optimizer, loops): ckpt_path= resumes "
                         "a training run from its own checkpoints (<run dir>/checkpoints/last.ckpt)")
    if "current_model_state" in ckpt and not weight_averaging:
        raise ValueError(f"checkpoint {path}: written with an EMA of the weights (ema:), which this run does not "
                         "keep; resume with the run's ema settings")
    want = {f"net.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    differ = [f"{k} {got.get(k, 'missing')} vs {want.get(k, 'absent')}" for k in sorted(want.keys() | got.keys())
              if got.get(k) != want.get(k)]
    if differ:
        configs = {k: (stored.get(k), v) for k, v in net_config.items() if k in stored and stored[k] != v}
        raise ValueError(f"checkpoint {path}: its weights do not fit the configured {target.rsplit('.', 1)[-1]} "
                         f"({len(differ)} differ, stored vs configured: {'; '.join(differ[:3])}"
                         + (f"; config values stored vs configured: {configs}" if configs else "") + ")")
    return path


def save_network(path: str | os.PathLike, net: nn.Module, net_config: dict, data_info: dict | None = None) -> None:
    """Write a network in the format ``load_network`` reads (atomically: temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "hyper_parameters": {"net_config": dict(net_config), "data_info": dict(data_info or {})},
        "epoch": None,
    }
    with atomic_open(path) as f:
        torch.save(payload, f)


def _reference_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a reference checkpoint: OadTR saves ``{'model': sd, ...}``, TRN.pytorch
    ``{'model_state_dict': sd, ...}``; a bare state dict is accepted too."""
    if isinstance(obj, dict):
        for key in ("model", "model_state_dict", "state_dict"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ValueError(f"reference checkpoint {path}: no state dict found (looked for 'model', "
                     "'model_state_dict', 'state_dict' or a dict of tensors)")


def convert_reference_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, dataset: str | None = None,
                                 arch: str | None = None, **overrides) -> dict[str, Any]:
    """Turn a reference OadTR (``VisionTransformer_v3``), TRN (``GeneralizedTRN``), MiniROAD (``MROAD``),
    LSTR or TeSTra checkpoint into one that this project's tools load (``load_network``,
    ``tools/eval.py ckpt_path=...``).

    The architecture is recognised from the parameter names (``arch`` names it; needed for LSTR vs
    TeSTra, whose names are the same) and its sizes read from the tensors; head counts, window (TRN),
    query count (TRN) and memory lengths (LSTR, TeSTra) come from ``overrides`` or the paper defaults. The dataset
    facts (class names, ignore index, metric) are those of ``dataset`` (``thumos14``, ``tvseries``,
    ``hdd``), by default guessed from the class count (22 THUMOS'14, 31 TVSeries, 12 HDD).

    Returns:
        ``{'model': class name, 'net_config': ..., 'data_info': ..., 'num_parameters': ...}``.
    """
    from oad.data.readers import packaged_info
    from oad.models import registry

    src = Path(src)
    sd = _reference_state_dict(load_checkpoint_file(src), src)
    names = {k.removeprefix("module.") for k in sd}
    if arch is not None:
        known = registry.convertible()
        if arch not in known:
            raise ValueError(f"arch={arch!r}: expected one of {known}")
        cls = registry.get(arch).cls
    else:
        found = registry.reference_models(names)
        if not found:
            raise ValueError(f"reference checkpoint {src}: not a state dict of any model that loads reference "
                             f"checkpoints ({', '.join(registry.convertible())}; first keys: {sorted(names)[:5]})")
        if len(found) > 1:  # e.g. LSTR and TeSTra: the same parameter names
            which = "|".join(e.name for e in found)
            raise ValueError(f"reference checkpoint {src}: a state dict of {', '.join(e.cls.__name__ for e in found)}, "
                             f"which the weights cannot tell apart; say which with arch={which} (and the options "
                             "the tensors do not hold, e.g. kernel=box|laplace, alpha=... for TeSTra)")
        cls = found[0].cls
    try:
        net = cls.from_reference(sd, **overrides)
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"reference checkpoint {src}: cannot be loaded as {cls.__name__}: {e}") from e
    config = {"_target_": f"{cls.__module__}.{cls.__qualname__}", **cls.reference_config(sd, **overrides)}
    guess = {22: "thumos14", 31: "tvseries", 12: "hdd"}.get(net.num_classes)
    info = packaged_info(dataset or guess) or {}
    data_info = {
        "class_names": info.get("class_names", [str(i) for i in range(net.num_classes)]),
        "ignore_index": info.get("ignore_index"),
        "metric": info.get("metric", "AP"),
        "fps": info.get("fps", 4.0),
        "source": f"converted from reference checkpoint {src.name}",
    }
    if len(data_info["class_names"]) != net.num_classes:
        raise ValueError(f"reference checkpoint {src}: {net.num_classes} classes, dataset {dataset!r} has "
                         f"{len(data_info['class_names'])}")
    save_network(dst, net, config, data_info)
    # the written file must load back to the same outputs
    net2, _ = load_network(dst)
    for (k, a), (_, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        if not torch.equal(a, b):
            raise RuntimeError(f"conversion check failed: {k} differs after reloading {dst}")
    return {"model": cls.__name__, "net_config": config, "data_info": data_info,
            "num_parameters": sum(p.numel() for p in net.parameters())}

