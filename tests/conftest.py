"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsd_lab.data.synthetic_mmwhs import make_mmwhs


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module: tiny tensors run fastest so, and a busy 2-core machine is not oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mmwhs_dataset(tmp_path_factory) -> Path:
    """Five synthetic MM-WHS cases, shared read-only by the bundle tests: copy before changing them."""
    data_dir = tmp_path_factory.mktemp("mmwhs")
    make_mmwhs(data_dir, cases=5, seed=3)
    return data_dir


@pytest.fixture(scope="session")
def mmwhs_fault_source(tmp_path_factory) -> Path:
    """The clean synthetic MM-WHS dataset that ``tests.helpers.DATA_FAULTS`` break, read-only: copy it first."""
    from tests.helpers import BAD_MMWHS_CASES

    data_dir = tmp_path_factory.mktemp("mmwhs_faults")
    make_mmwhs(data_dir, cases=BAD_MMWHS_CASES, seed=3)
    return data_dir
