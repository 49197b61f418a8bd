"""Which models exist: one per ``configs/model/<name>.yaml``, and nothing else to keep in step.

A model is registered by having a model config whose ``_target_`` names its class; the class carries
the rest as class attributes (:class:`oad.models.base.OnlineModel`):

- ``tiny``: the constructor arguments of a tiny instance (``in_dim`` given by the caller), the model of
  the shared parametrised tests (streaming == offline, int8, export);
- ``tiny_init_norms``: whether :func:`tiny_model` also draws the 1-d parameters (biases, norm weights)
  at random, or leaves them at their initial values (post-norm models keep LayerNorm at 1/0);
- ``int8_tolerance``: ``{'fp32': ..., 'offline': ...}`` bounds of its int8 step (None: no int8 step);
- ``paper_variants``: the rows of the paper-size benchmarks (label -> constructor overrides and online
  step options);
- ``recognises_reference(names)``: whether a reference checkpoint's parameter names are this model's
  (the converter asks every registered model).

Everything that lists models reads this module: the leaderboard's default list, ``tools/bench.py``,
``tools/gpu_check.py``, the reference-checkpoint converter and the tests. The registry is read from
the repository's ``configs/`` (the same tree the Hydra entry points compose).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from torch import nn

# (torch and the model modules are imported on first use: listing the models, as the entry points do
# before composing their configs, reads only the YAML files)

#: ``configs/model/`` of the repository this package belongs to.
MODEL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"

#: Input width of the paper-size benchmarks (two-stream THUMOS'14 features: 2048 RGB + 1024 flow).
PAPER_IN_DIM = 3072


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        name: the model config's name (``model=<name>`` on the command line).
        target: the class path, ``"package.module.Class"``.
        config: the model config's constructor arguments (paper size), without ``_target_``.
    """

    name: str
    target: str
    config: dict[str, Any]

    @property
    def cls(self) -> type[nn.Module]:
        module, _, attr = self.target.rpartition(".")
        return getattr(importlib.import_module(module), attr)

    def paper_variants(self) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """Benchmark rows at paper size: ``{label: (constructor overrides, online step options)}``."""
        variants = getattr(self.cls, "paper_variants", None) or {self.name: {}}
        return {label: (dict(v.get("config", {})), dict(v.get("step", {}))) for label, v in variants.items()}

    def build_paper(self, in_dim: int = PAPER_IN_DIM, num_classes: int = 22, **overrides: Any) -> nn.Module:
        """The model at its config's (paper) size."""
        return self.cls(in_dim=in_dim, num_classes=num_classes, **{**self.config, **overrides})


def _read(path: Path) -> ModelEntry:
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    target = cfg.pop("_target_", None)
    if not isinstance(target, str):
        raise ValueError(f"model config {path}: no '_target_' naming the model class")
    # Hydra's own keys (the defaults list choosing the criterion, _convert_, ...) are not constructor arguments
    return ModelEntry(path.stem, target, {k: v for k, v in cfg.items() if k != "defaults" and not k.startswith("_")})


@functools.lru_cache(maxsize=None)
def _entries(config_dir: str) -> tuple[ModelEntry, ...]:
    files = sorted(Path(config_dir).glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"{config_dir}: no model configs (the registry reads configs/model/*.yaml)")
    return tuple(_read(p) for p in files)


def entries() -> list[ModelEntry]:
    """Every registered model, sorted by name."""
    return list(_entries(str(MODEL_CONFIG_DIR)))


def names() -> list[str]:
    """The names of every registered model, sorted."""
    return [e.name for e in entries()]


def get(name: str) -> ModelEntry:
    """The entry of model ``name``; a clear error naming the known ones otherwise."""
    for e in entries():
        if e.name == name:
            return e
    raise KeyError(f"unknown model {name!r}: expected one of {names()} (configs/model/*.yaml)")


def tiny_model(name: str, in_dim: int = 24, num_classes: int = 22, seed: int = 0, std: float = 0.3) -> nn.Module:
    """The tiny instance of model ``name`` the tests share, in eval mode.

    Weights are drawn N(0, ``std``): larger than the default init, so the scores are peaked and vary from
    chunk to chunk. 1-d parameters are drawn too unless the class keeps its norms (``tiny_init_norms``
    False).
    """
    import torch
    from torch import nn

    cls = get(name).cls
    tiny = getattr(cls, "tiny", None)
    if tiny is None:
        raise TypeError(f"{cls.__name__} has no 'tiny' configuration (class attribute)")
    torch.manual_seed(seed)
    net = cls(in_dim=in_dim, num_classes=num_classes, **tiny)
    all_params = getattr(cls, "tiny_init_norms", True)
    for p in net.parameters():
        if p.dim() >= 2 or all_params:
            nn.init.normal_(p, std=std)
    return net.eval()


def reference_models(names_in_state_dict: set[str]) -> list[ModelEntry]:
    """The registered models whose reference checkpoints have these parameter names."""
    found = []
    for e in entries():
        recognise = getattr(e.cls, "recognises_reference", None)
        if recognise is not None and recognise(names_in_state_dict):
            found.append(e)
    return found


def convertible() -> list[str]:
    """Names of the models that load reference checkpoints (``from_reference``)."""
    return [e.name for e in entries() if hasattr(e.cls, "from_reference")]
