"""Dual Self-Distillation (DSD) runtime: the code that the bundles' configs instantiate and that a bundle package ships.

Submodules load on first attribute access, so that a bundle config's ``"$import custom"`` reaches
``custom.mmwhs``, ``custom.losses`` etc., while light tools (the lab's figures) that need only
``custom.definitions`` do not pay for importing MONAI and PyTorch. Nothing here imports the lab (``dsd_lab``).

Importing the package installs :func:`custom.errors.install_exception_hook`: a bundle command that fails on one of
the runtime's own errors ends with that error's message, after the full traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from custom.errors import install_exception_hook

__all__ = [
    "amp",
    "blockwise_loss",
    "checkpoint",
    "datasets",
    "definitions",
    "distributed",
    "dmd",
    "emkd",
    "errors",
    "files",
    "flags",
    "headers",
    "loss_terms",
    "losses",
    "metrics",
    "mmwhs",
    "msd",
    "networks",
    "progress",
    "reproducibility",
    "semi_supervised",
    "teacher",
    "transforms",
]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


install_exception_hook()
