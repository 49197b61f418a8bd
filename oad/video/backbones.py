"""Image backbones for per-chunk features: torchvision models with the classifier removed, weights
from a local file or torchvision's local cache only (nothing is downloaded), and the ImageNet input
transform. The motion stream's backbone takes ``2 * pairs`` flow channels in its first convolution
(TSN's cross-modality initialisation from RGB weights).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """A torchvision classification model with its classifier removed: images in, pooled features out.

    Attributes:
        name: torchvision model name.
        dim: feature size (2048 for ResNet-50).
        weights: where the weights came from: ``random``, ``imagenet:<file>`` or a file path.
        in_channels: input channels (3 for RGB, ``2 * pairs`` for stacked flow).
    """

    def __init__(self, net: nn.Module, name: str, dim: int, weights: str, in_channels: int):
        super().__init__()
        self.net = net
        self.name = name
        self.dim = dim
        self.weights = weights
        self.in_channels = in_channels

    @property
    def random(self) -> bool:
        return self.weights == "random"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` normalised input -> ``(B, dim)`` features."""
        return self.net(x)


_HEAD_NAMES = ("fc", "classifier", "heads", "head")


def _remove_head(net: nn.Module, name: str) -> tuple[str, int]:
    """Replace the final ``nn.Linear`` by identity; returns its module path and input size."""
    for attr in _HEAD_NAMES:
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Identity())
            return attr, head.in_features
        if isinstance(head, nn.Sequential):
            linear = [k for k, m in head.named_children() if isinstance(m, nn.Linear)]
            if linear:
                key = linear[-1]
                dim = head.get_submodule(key).in_features
                setattr(head, key, nn.Identity())
                return f"{attr}.{key}", dim
    raise ValueError(f"backbone {name!r}: no linear classifier found in {_HEAD_NAMES} to remove")


def _first_conv(net: nn.Module) -> tuple[str, nn.Conv2d]:
    for path, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            return path, m
    raise ValueError("backbone has no Conv2d to adapt to flow input")


def _adapt_first_conv(net: nn.Module, in_channels: int) -> str:
    """Give the first convolution ``in_channels`` inputs (weights re-initialised); returns its path."""
    path, conv = _first_conv(net)
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    parent, _, child = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, new)
    return path


def torchvision_cache_files(name: str) -> list[Path]:
    """Where torchvision's ImageNet weights of ``name`` would be cached, preferred first (V2, V1)."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    entries = [getattr(enum, k) for k in ("IMAGENET1K_V2", "IMAGENET1K_V1") if hasattr(enum, k)]
    if not entries:
        entries = [enum.DEFAULT]
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return [checkpoints / e.url.rsplit("/", 1)[-1] for e in entries]


def _resolve_weights(name: str, weights: str | None, allow_random: bool) -> tuple[Path | None, str]:
    """The local weights file and its description; never downloads."""
    if weights is None or weights == "imagenet":
        files = torchvision_cache_files(name)
        for f in files:
            if f.is_file():
                return f, f"imagenet:{f.name}"
        raise FileNotFoundError(
            f"ImageNet weights of {name!r} are not in torchvision's local cache; nothing is downloaded. "
            f"Put the file at {files[0]}"
            + (f" (or {', '.join(str(f) for f in files[1:])})" if len(files) > 1 else "")
            + ", or pass a local state dict path as the weights, or 'random' with allow_random=True."
        )
    if weights == "random":
        if not allow_random:
            raise ValueError(
                f"backbone {name!r}: weights='random' gives meaningless features; pass allow_random=True "
                "(backbone.allow_random=true) to use them anyway (outputs are then flagged random)"
            )
        return None, "random"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone {name!r}: weights file {path} does not exist; give the path of a local state dict, "
            "'imagenet' (torchvision's local cache) or 'random'"
        )
    return path, str(path)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: not a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def build_backbone(
    name: str = "resnet50",
    weights: str | None = "imagenet",
    allow_random: bool = False,
    *,
    in_channels: int = 3,
) -> Backbone:
    """A torchvision classification model without its classifier, in eval mode.

    Args:
        name: any torchvision classification model with a linear classifier (``resnet50``, ``resnet18``,
            ``mobilenet_v3_small``, ``efficientnet_b0``, ``vit_b_16``, ...).
        weights: ``'imagenet'`` (or None): torchvision's ImageNet weights (IMAGENET1K_V2, else V1) from
            the local cache ``torch.hub.get_dir()/checkpoints``; a path: a local state dict (with or
            without the classifier); ``'random'``: random init, only with ``allow_random``.
        allow_random: permit ``weights='random'``.
        in_channels: input channels; other than 3, the first convolution is widened and, from RGB
            weights, initialised with the mean of its RGB filters in every channel (TSN cross-modality).
            A state dict whose first convolution already has ``in_channels`` is loaded as it is.

    Raises:
        FileNotFoundError: the weights file is missing (the message says where to put it).
        ValueError: random weights without ``allow_random``, or a state dict that does not fit.
    """
    from torchvision.models import get_model

    path, desc = _resolve_weights(name, weights, allow_random)
    net = get_model(name, weights=None)
    head_path, dim = _remove_head(net, name)
    conv_path = _adapt_first_conv(net, in_channels) if in_channels != 3 else None
    if path is not None:
        sd = _load_state_dict(path)
        if conv_path is not None:
            w = sd.get(f"{conv_path}.weight")
            if w is not None and w.shape[1] == 3:
                # (O, 3, k, k) -> (O, in_channels, k, k): TSN's cross-modality initialisation.
                w = w.mean(dim=1, keepdim=True).expand(-1, in_channels, -1, -1)
                sd[f"{conv_path}.weight"] = w.clone()
                desc = f"{desc} (cross-modality)"
        missing, unexpected = net.load_state_dict(sd, strict=False)
        unexpected = [k for k in unexpected if not k.startswith(head_path + ".")]
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit {name!r}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
    elif desc == "random":
        log.warning("backbone %s uses RANDOM weights: its features are for testing only", name)
    return Backbone(net, name, dim, desc, in_channels).eval()


# ---------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------


def resize_crop(frames: np.ndarray, resize: int, crop: int) -> torch.Tensor:
    """Shorter side to ``resize`` (bilinear, antialiased), then the centre ``crop`` x ``crop``.

    Args:
        frames: ``(N, H, W, 3)`` RGB uint8.

    Returns:
        ``(N, 3, crop, crop)`` float32 in ``[0, 255]``.
    """
    if crop > resize:
        raise ValueError(f"crop {crop} is larger than the resized shorter side {resize}")
    x = torch.from_numpy(np.ascontiguousarray(frames))
    x = x.permute(0, 3, 1, 2).float()  # (N, H, W, 3) -> (N, 3, H, W)
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_long = int(resize * long / short)
    size = (resize, new_long) if h <= w else (new_long, resize)
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = round((size[0] - crop) / 2), round((size[1] - crop) / 2)
    return x[..., top : top + crop, left : left + crop].clamp_(0, 255)


def normalize_rgb(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, h, w)`` in ``[0, 255]`` -> ImageNet-normalised float."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


