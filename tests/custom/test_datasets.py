"""The caching dataset stops its loading threads before a failure leaves it."""

from __future__ import annotations

import threading
import time

import pytest
from monai.transforms import Transform

from custom.datasets import CacheDataset


class _SlowLoad(Transform):
    """Fails on item 1; every other item takes a while, as decoding a large volume does."""

    def __init__(self) -> None:
        self.started: list[int] = []

    def __call__(self, item: dict) -> dict:
        self.started.append(item["index"])
        if item["index"] == 1:
            raise ValueError("item 1 cannot be read")
        time.sleep(0.05)
        return item


def test_a_failing_item_stops_the_cache_with_no_thread_left_running():
    before = set(threading.enumerate())
    load = _SlowLoad()
    with pytest.raises(RuntimeError) as raised:
        CacheDataset([{"index": i} for i in range(40)], load, cache_rate=1.0, num_workers=3, progress=False)
    assert "item 1 cannot be read" in str(raised.value.__cause__)
    assert set(threading.enumerate()) <= before  # the threads were joined, none decodes on
    assert len(load.started) < 40  # the items not started were dropped


def test_a_clean_dataset_is_cached_as_monai_caches_it():
    data = [{"index": i} for i in (0, 2, 3, 4)]
    dataset = CacheDataset(data, _SlowLoad(), cache_rate=1.0, num_workers=2, progress=False)
    assert [dataset[i]["index"] for i in range(4)] == [0, 2, 3, 4]
