"""Dual Self-Distillation (DSD) runtime: the code that the bundles' configs instantiate and that a bundle package ships.

Submodules load on first attribute access, so that a bundle config's ``"$import custom"`` reaches
``custom.mmwhs``, ``custom.losses`` etc., while light tools (the lab's figures) that need only
``custom.definitions`` do not pay for importing MONAI and PyTorch. Nothing here imports the lab (``dsd_lab``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "blockwise_loss",
    "checkpoint",
    "definitions",
    "distributed",
    "dmd",
    "files",
    "flags",
    "losses",
    "metrics",
    "mmwhs",
    "msd",
    "networks",
    "progress",
    "semi_supervised",
    "transforms",
]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
