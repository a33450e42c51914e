"""custom.distributed: loss terms averaged over ranks, and a clear error instead of a hang."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from custom.definitions import TERM_NAMES
from custom.distributed import LossTermsAllReduce, check_enough_cases, mean_across_ranks
from custom.losses import DSDLoss

WORLD_SIZE = 2


def _rank_terms(rank: int) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(10.0 * rank + i) for i, name in enumerate(TERM_NAMES)}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        loss = DSDLoss()
        loss.latest_terms = _rank_terms(rank)
        LossTermsAllReduce(loss)(engine=None)
        try:
            check_enough_cases([0], "validation")
            error = ""
        except ValueError as e:
            error = str(e)
        torch.save({"terms": loss.latest_terms, "error": error}, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    """What each of two gloo ranks logged after :class:`LossTermsAllReduce`, and ``check_enough_cases`` said."""
    work = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(work / "init"), str(work)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(work / f"{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


def test_logged_loss_terms_are_the_mean_over_ranks(results):
    for result in results:
        assert list(result["terms"]) == list(TERM_NAMES)
        for name in TERM_NAMES:
            expected = sum(_rank_terms(rank)[name] for rank in range(WORLD_SIZE)) / WORLD_SIZE
            torch.testing.assert_close(result["terms"][name], expected)


def test_fewer_cases_than_ranks_fail_on_every_rank(results):
    assert all("1 case(s) for 2 processes" in result["error"] for result in results)


def test_single_process_is_a_no_op():
    terms = _rank_terms(3)
    assert mean_across_ranks(terms) == terms
    assert check_enough_cases([0], "validation")
