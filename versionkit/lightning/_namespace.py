"""The two spellings of Lightning: ``lightning.pytorch`` and ``pytorch_lightning``.

They ship the same code twice under two package names, and their classes are distinct:
a ``pytorch_lightning.Trainer`` refuses a plugin or callback built on
``lightning.pytorch``'s base classes. Everything the adapter subclasses is therefore
looked up here, for the namespace the user's Trainer comes from, and only that
namespace is imported (a user may have only one of the two installed).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import Any

from versionkit.errors import ConfigError

__all__ = ["NAMESPACES", "Namespace", "namespace", "namespace_of"]

#: ``lightning=`` values: the Lightning package (``lightning.pytorch`` inside it) or the
#: standalone ``pytorch_lightning``.
NAMESPACES = ("pytorch_lightning", "lightning")

_MODULES = {
    # name: (trainer package, fabric package)
    "pytorch_lightning": ("pytorch_lightning", "lightning_fabric"),
    "lightning": ("lightning.pytorch", "lightning.fabric"),
}


@dataclass(frozen=True)
class Namespace:
    """The Lightning classes the adapter builds on, from one namespace."""

    name: str
    pl: Any  # the package: pytorch_lightning or lightning.pytorch
    Trainer: Any
    LightningModule: Any
    Callback: Any
    ModelCheckpoint: Any
    TQDMProgressBar: Any
    Logger: Any
    TensorBoardLogger: Any
    TorchCheckpointIO: Any
    rank_zero_only: Any


@cache
def namespace(name: str) -> Namespace:
    """The classes of namespace ``name`` (``"pytorch_lightning"`` or ``"lightning"``).

    Raises:
        ConfigError: an unknown name, or the package is not installed.
    """
    if name not in _MODULES:
        raise ConfigError(
            f"lightning={name!r}: expected one of {', '.join(repr(n) for n in NAMESPACES)}"
        )
    trainer_pkg, fabric_pkg = _MODULES[name]
    try:
        pl = importlib.import_module(trainer_pkg)
        callbacks = importlib.import_module(f"{trainer_pkg}.callbacks")
        loggers = importlib.import_module(f"{trainer_pkg}.loggers")
        torch_io = importlib.import_module(f"{fabric_pkg}.plugins.io.torch_io")
        rank_zero = importlib.import_module(f"{fabric_pkg}.utilities.rank_zero")
    except ImportError as exc:
        raise ConfigError(
            f"lightning={name!r}: cannot import {trainer_pkg} ({exc}); install "
            f"{'lightning' if name == 'lightning' else 'pytorch-lightning'} or choose the other "
            "namespace"
        ) from None
    return Namespace(
        name=name,
        pl=pl,
        Trainer=pl.Trainer,
        LightningModule=pl.LightningModule,
        Callback=callbacks.Callback,
        ModelCheckpoint=callbacks.ModelCheckpoint,
        TQDMProgressBar=callbacks.TQDMProgressBar,
        Logger=loggers.Logger,
        TensorBoardLogger=loggers.TensorBoardLogger,
        TorchCheckpointIO=torch_io.TorchCheckpointIO,
        rank_zero_only=rank_zero.rank_zero_only,
    )


def namespace_of(obj: Any) -> Namespace:
    """The namespace a Trainer, LightningModule, callback or plugin comes from.

    Raises:
        ConfigError: ``obj`` is not from either namespace.
    """
    for klass in type(obj).__mro__:
        module = klass.__module__
        if module.startswith(("lightning.pytorch", "lightning.fabric")):
            return namespace("lightning")
        if module.startswith(("pytorch_lightning", "lightning_fabric")):
            return namespace("pytorch_lightning")
    raise ConfigError(
        f"{type(obj).__name__} is neither a lightning.pytorch nor a pytorch_lightning object"
    )
