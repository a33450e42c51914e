"""What each auxiliary head of a DSD network segments: the validation Dice of every head, as epoch metrics."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.handlers import from_engine
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from custom.definitions import HEAD_DICE_PREFIX
from custom.networks import DSDNet

__all__ = ["HeadDice", "head_metric_names"]


def head_metric_names(network: DSDNet, prefix: str = HEAD_DICE_PREFIX) -> list[str]:
    """The metric name of each head of ``network``: ``<prefix>/E<i>_<tap>`` for encoders, ``D<i>`` for decoders.

    E_1..E_Z are numbered shallow to deep and D_1..D_Z deepest first, as in the paper; characters of a tap that
    MLflow refuses in metric names (``.``, ``:``) become ``_``.
    """
    def name(stage: str, index: int, tap: str) -> str:
        return f"{prefix}/{stage}{index}_{tap.replace('.', '_').replace(':', '_')}"

    encoders = [name("E", i, tap) for i, tap in enumerate(network.encoder_taps, 1)]
    return encoders + [name("D", i, tap) for i, tap in enumerate(network.decoder_taps, 1)]


class HeadDice(Metric):
    """Mean foreground Dice of every auxiliary head of a :class:`~custom.networks.DSDNet` over the validation cases.

    Each validation image goes through the network once more, with every head's logits upsampled to input size
    and stitched by the validation's own inferer; each head's argmax is scored against the label like the main
    output's ``val_mean_dice``: Dice per class present in the label, averaged per case, then over cases. The
    metric adds one value per head to the engine's metrics, named by :func:`head_metric_names`, so that the
    stats, TensorBoard and MLflow handlers log them beside ``val_mean_dice``. Multi-process validation sums over
    the processes.

    Scoring costs one more forward pass of the backbone and the heads per validation image; a bundle builds this
    metric only with ``--score_heads true``.

    Args:
        network: the DSD network; its heads are scored in whatever mode it is in (validation sets eval).
        inferer: the validation inferer, e.g. MONAI's ``SlidingWindowInferer``; it must accept a network that
            returns a dictionary.
        num_classes: classes K of the heads' logits, background included.
        include_background: score the background class too.
        output_transform: gives ``(images, labels)`` from the evaluator's output: lists of ``(C, *spatial)``
            images and labels, one-hot or of class indices.
        prefix: start of the metric names.
    """

    def __init__(
        self,
        network: DSDNet,
        inferer: Callable[..., Any],
        num_classes: int,
        include_background: bool = False,
        output_transform: Callable = from_engine(["image", "label"]),
        prefix: str = HEAD_DICE_PREFIX,
    ) -> None:
        self.network = network
        self.inferer = inferer
        self.num_classes = int(num_classes)
        self.include_background = include_background
        self.names = head_metric_names(network, prefix)
        super().__init__(output_transform, skip_unrolling=True, metrics_result_mode="flatten")

    @reinit__is_reduced
    def reset(self) -> None:
        self._dice_sums = torch.zeros(len(self.names), dtype=torch.float64)
        self._cases = torch.zeros(len(self.names), dtype=torch.float64)

    @reinit__is_reduced
    def update(self, output: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]) -> None:
        if not self.names:
            return
        images, labels = output
        device = next(self.network.parameters()).device
        for image, label in zip(images, labels):
            with torch.no_grad():
                logits = self.inferer(torch.as_tensor(image)[None].to(device), self.network.head_outputs)
            target = self._one_hot(torch.as_tensor(label)[None].to(device))
            taps = [*self.network.encoder_taps, *self.network.decoder_taps]
            for index, tap in enumerate(taps):  # by tap: a sliding window returns the dictionary's keys sorted
                prediction = one_hot(logits[tap].argmax(dim=1, keepdim=True), self.num_classes)
                dice = compute_dice(prediction, target, include_background=self.include_background)
                present = dice[~torch.isnan(dice)]
                if present.numel():
                    self._dice_sums[index] += float(present.mean())
                    self._cases[index] += 1

    @sync_all_reduce("_dice_sums", "_cases")
    def compute(self) -> dict[str, float]:
        return {
            name: float(total / cases) if cases else math.nan
            for name, total, cases in zip(self.names, self._dice_sums.tolist(), self._cases.tolist())
        }

    def _one_hot(self, label: torch.Tensor) -> torch.Tensor:
        return label if label.shape[1] == self.num_classes else one_hot(label.long(), self.num_classes)
