"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dsd_lab.data.synthetic_mmwhs import make_mmwhs

#: Most pytest-xdist workers that ``-n auto`` starts: each loads torch and MONAI (about 1 GB) and spawns bundle
#: commands of its own, so beyond a few workers memory, not cores, runs out first.
MAX_WORKERS = 8


def usable_cores() -> int:
    """The cores this process may run on (a container's or ``taskset``'s share, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def xdist_workers() -> int:
    """How many pytest-xdist workers run the suite; 1 without xdist or with ``-n 0``."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def threads_per_worker() -> int:
    """Intra-op threads of each pytest-xdist worker: the usable cores split between the workers."""
    return max(1, usable_cores() // xdist_workers())


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core, at most :data:`MAX_WORKERS`."""
    return max(1, min(MAX_WORKERS, usable_cores()))


def pytest_configure(config: pytest.Config) -> None:
    """Split the cores between pytest-xdist workers, for their own tensors and for the commands they spawn.

    Each worker would otherwise start as many intra-op threads as the host has cores, and OpenMP threads
    that outnumber the cores wait on one another.
    """
    if xdist_workers() > 1:
        os.environ["OMP_NUM_THREADS"] = str(threads_per_worker())
        torch.set_num_threads(threads_per_worker())


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
