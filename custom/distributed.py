"""Helpers for ``torchrun`` + DistributedDataParallel runs of the bundles (``configs/multi_gpu_*.json``)."""

from __future__ import annotations

from collections.abc import Mapping, Sized

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from custom.losses import DSDLoss

__all__ = ["LossTermsAllReduce", "check_enough_cases", "mean_across_ranks", "world_size"]


def world_size() -> int:
    """Number of processes of the default process group; 1 when none is initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_across_ranks(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mean of each scalar over all ranks, in one ``all_reduce``; the values unchanged in a single process.

    Every rank must call it with the same keys, in the same order.

    Args:
        values: name -> scalar tensor (on the device of the process group's backend).

    Returns:
        name -> mean over ranks, a float tensor on the device of the inputs.
    """
    size = world_size()
    if size == 1 or not values:
        return dict(values)
    stacked = torch.stack([torch.as_tensor(v).detach().float().reshape(()) for v in values.values()])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return dict(zip(values.keys(), stacked / size))


class LossTermsAllReduce:
    """Replace :attr:`DSDLoss.latest_terms` by their mean over all ranks after every training iteration.

    Each rank's loss terms describe only its own batch; averaging them gives the loss of the global
    batch, the quantity whose gradient DistributedDataParallel applies. Attach it before the handlers
    that log the terms, on every rank (it is a collective operation); a no-op in a single process.

    Args:
        loss: the loss whose terms are logged.
    """

    def __init__(self, loss: DSDLoss) -> None:
        self.loss = loss

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.loss.latest_terms = mean_across_ranks(self.loss.latest_terms)


def check_enough_cases(dataset: Sized, name: str) -> bool:
    """Fail clearly when a distributed evaluation would leave a rank without data.

    MONAI's evaluators skip an empty data loader, and the other ranks would then wait forever for it
    in the metrics' all-gather.

    Args:
        dataset: the evaluation dataset, before it is split among ranks.
        name: what the dataset is, for the message.

    Returns:
        ``True``.

    Raises:
        ValueError: fewer cases than ranks.
    """
    size = world_size()
    if len(dataset) < size:
        raise ValueError(
            f"The {name} data has {len(dataset)} case(s) for {size} processes; distributed evaluation needs "
            f"at least one case per process. Run it with --nproc_per_node {max(1, len(dataset))} or fewer."
        )
    return True
