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


def save_network(path: str | os.PathLike, net: nn.Module, net_config: dict, data_info: dict | None = None) -> None:
    """Write a network in the format ``load_network`` reads (atomically: temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "hyper_parameters": {"net_config": dict(net_config), "data_info": dict(data_info or {})},
        "epoch": None,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
