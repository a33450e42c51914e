"""Dual Self-Distillation (DSD) components for MONAI bundles.

Submodules load on first attribute access, so that a bundle config's ``"$import custom"`` reaches
``custom.data``, ``custom.losses`` etc., while command-line tools do not pay for importing all of them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["checkpoint", "data", "distributed", "flags", "losses", "metrics", "msd", "networks", "progress", "transforms"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
