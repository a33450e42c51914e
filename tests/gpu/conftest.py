"""Every test in ``tests/gpu`` carries the ``cuda`` marker and is skipped where PyTorch sees no CUDA device.

Run them with ``python -m pytest -m cuda tests/gpu``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# cuBLAS is deterministic only with a fixed workspace; it reads this when its first handle is made
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cuda)
            if not torch.cuda.is_available():
                item.add_marker(skip)
