"""The loss terms of each training step as the log handlers read them: copied to the host once per step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from custom.losses import DSDLoss

__all__ = ["HostLossTerms"]


class HostLossTerms:
    """The latest :attr:`DSDLoss.latest_terms` as Python floats, for the ``output_transform`` of log handlers.

    MONAI's ``StatsHandler`` and ``TensorBoardStatsHandler`` read every term of a dictionary with
    ``.item()``, which on a GPU waits for the step to finish: two handlers and five terms made ten
    such waits per iteration. One object serving both handlers copies all terms in one transfer, once
    per step (when the loss has produced new terms), and gives the same floats to every handler.

    Args:
        loss: the loss whose terms are logged.
        prefix: put before each term's name, e.g. ``"train_loss/"``.
    """

    def __init__(self, loss: DSDLoss, prefix: str = "") -> None:
        self.loss = loss
        self.prefix = prefix
        self._source: Mapping[str, torch.Tensor] | None = None
        self._values: dict[str, float] = {}

    def __call__(self, output: Any = None) -> dict[str, float]:
        """The terms as ``{prefix + name: value}``; ``output`` (the engine's) is not read."""
        terms = self.loss.latest_terms
        if terms is not self._source:  # DSDLoss and LossTermsAllReduce put a new dictionary at each step
            scalars = [torch.as_tensor(t).detach().reshape(()).float() for t in terms.values()]
            values = torch.stack(scalars).tolist() if scalars else []
            self._source, self._values = terms, {self.prefix + name: v for name, v in zip(terms, values)}
        return self._values
