"""A caching dataset whose loading threads have stopped before a failure leaves it, so that a bad file ends a command
with its error and exit code 1 rather than an abort."""

from __future__ import annotations

from multiprocessing.pool import ThreadPool

from monai.data import CacheDataset as MonaiCacheDataset
from monai.utils import optional_import

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["CacheDataset"]


class CacheDataset(MonaiCacheDataset):
    """MONAI's ``CacheDataset`` that waits for its cache-filling threads before it passes an error on.

    MONAI fills the cache in a ``ThreadPool`` left through ``with``, which terminates the pool without joining its
    threads. When one item fails (a truncated file, a NaN voxel), the error reaches the top while the other threads
    still decode their files; the interpreter then shuts down under them and the process dies in
    ``terminate called without an active exception`` (exit code 134). Here the queued items are dropped and the
    items in progress finish before the first failure is raised. Arguments and results are MONAI's.
    """

    def _fill_cache(self, indices=None) -> list:
        if self.cache_num <= 0:
            return []
        if indices is None:
            indices = list(range(self.cache_num))
        pool = ThreadPool(self.num_workers)
        try:
            items = pool.imap(self._load_cache_item, indices)
            if self.progress and has_tqdm:
                items = tqdm(items, total=len(indices), desc="Loading dataset")
            return list(items)
        finally:
            pool.terminate()  # drops the items not started; no-op once all are done
            pool.join()  # waits for the items in progress
