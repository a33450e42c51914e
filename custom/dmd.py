"""Deep Mutual Distillation (DMD; Xie et al., MICCAI 2023): two networks that teach each other on unlabelled images.

Two networks of one architecture, initialised apart, are trained together: each is supervised on the labelled items
of a batch, and both are pulled towards each other on all items, labelled and unlabelled, by a Dice loss between
their temperature-softened predictions, with neither side detached. Each network may carry DSD's heads and loss; the
supervised term of a network is then DSD's eq. 4.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.metrics import Average
from monai.engines import SupervisedTrainer
from monai.losses import DiceLoss
from monai.utils import CommonKeys, convert_to_tensor

from custom.definitions import DMD_NETWORKS, TERM_NAMES, dmd_term_names
from custom.networks import PRED_KEY, DeferredLogits

__all__ = [
    "MutualDistillationLoss",
    "MutualPair",
    "SemiSupervisedTrainer",
    "mutual_dice",
    "sigmoid_rampup",
    "term_averages",
]


class MutualPair(nn.Module):
    """The two networks of DMD as one module: both run in training, the first alone in evaluation.

    In training mode the output is ``{"net1": output of net1, "net2": output of net2}``; in eval mode it is
    ``net1(x)``, so that validation scores the network that is deployed.

    Args:
        net1: the first network, the one deployed.
        net2: the second network, of the same architecture and another initialisation.
    """

    def __init__(self, net1: nn.Module, net2: nn.Module) -> None:
        super().__init__()
        self.net1, self.net2 = net1, net2

    def forward(self, x: torch.Tensor) -> Any:
        if not self.training:
            return self.net1(x)
        return {DMD_NETWORKS[0]: self.net1(x), DMD_NETWORKS[1]: self.net2(x)}


def sigmoid_rampup(epoch: float, length: float) -> float:
    """The sigmoid-shaped ramp ``exp(-5 (1 - t)^2)``, ``t = epoch / length`` clipped to [0, 1] (Laine and Aila, 2017).

    Args:
        epoch: epochs done.
        length: epochs the ramp takes; 0 or less gives 1 from the start.
    """
    if length <= 0:
        return 1.0
    t = min(max(epoch / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def mutual_dice(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Dice loss between two networks' class probabilities at ``temperature``, differentiable in both.

    ``1 - (2 sum p q + s) / (sum p^2 + sum q^2 + s)`` with ``p = softmax(first / T)`` and ``q = softmax(second / T)``
    over the class axis, sums over the batch and all voxels, one value per foreground class, then their mean: the
    authors' squared-denominator Dice over the whole batch, with a softmax instead of their binary sigmoid. It is
    symmetric, and zero where the two agree.

    Args:
        first: ``(B, K, *spatial)`` logits of one network.
        second: logits of the other, same shape.
        temperature: the softmax temperature T.
    """
    dice = DiceLoss(include_background=False, squared_pred=True, batch=True)
    p, q = (torch.softmax(logits.float() / temperature, dim=1) for logits in (first, second))
    return dice(p, q)


def _first_items(output: Any, count: int) -> Any:
    """A network's training output restricted to its first ``count`` items (the labelled ones)."""
    if isinstance(output, torch.Tensor):
        return output[:count]
    if isinstance(output, DeferredLogits):
        return output._replace(low_res=output.low_res[:count])
    if isinstance(output, Mapping):
        return {key: _first_items(value, count) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return [_first_items(value, count) for value in output]
    raise TypeError(f"Cannot take the labelled items of a network output of type {type(output).__name__}.")


def _main_logits(output: Any) -> torch.Tensor:
    return output[PRED_KEY] if isinstance(output, Mapping) else output


class MutualDistillationLoss(nn.Module):
    """The DMD objective (paper eq. 7) for two networks, each supervised by ``supervised``::

        L = S(net1 on labelled items) + S(net2 on labelled items) + lambda(epoch) * Dice(p1_T, p2_T) over all items

    The batch holds the labelled items first and the unlabelled after them; ``target`` holds the labels of the
    labelled ones, so its length tells them apart (:class:`SemiSupervisedTrainer` builds such batches).
    ``lambda(epoch) = weight * sigmoid_rampup(epoch, rampup_epochs)``; :attr:`epoch` (epochs done) is set by the
    trainer. A mutual term of weight 0 is not computed. Every term is kept, detached, in :attr:`latest_terms`
    under :func:`custom.definitions.dmd_term_names`: the supervised loss's own terms of each network, prefixed
    ``net1_`` and ``net2_``, the unweighted ``mutual_dice``, the weight ``mutual_weight`` and the ``total``.

    Args:
        supervised: the loss of one network against the labels, e.g. :class:`~custom.losses.DSDLoss`; its
            ``latest_terms``, if it has them, are logged per network.
        weight: lambda, the weight of the mutual term once ramped up.
        temperature: T of the softened predictions.
        rampup_epochs: epochs over which lambda ramps up from ``weight * exp(-5)``; 0 for no ramp-up.

    Raises:
        ValueError: a negative weight or ramp-up, or a non-positive temperature.
    """

    def __init__(
        self, supervised: nn.Module, weight: float = 4.0, temperature: float = 2.0, rampup_epochs: float = 0.0
    ) -> None:
        super().__init__()
        if weight < 0 or rampup_epochs < 0:
            raise ValueError(f"weight and rampup_epochs must be non-negative, got {weight} and {rampup_epochs}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.supervised = supervised
        self.weight, self.temperature, self.rampup_epochs = float(weight), float(temperature), float(rampup_epochs)
        self.epoch = 0
        self.latest_terms: dict[str, torch.Tensor] = {}

    @property
    def current_weight(self) -> float:
        """lambda at :attr:`epoch`."""
        return self.weight * sigmoid_rampup(self.epoch, self.rampup_epochs)

    @property
    def uses_encoder_heads(self) -> bool:
        """Whether the supervised loss reads encoder heads (see :attr:`custom.losses.DSDLoss.uses_encoder_heads`)."""
        return bool(getattr(self.supervised, "uses_encoder_heads", False))

    @property
    def uses_decoder_heads(self) -> bool:
        """Whether the supervised loss reads decoder heads (see :attr:`custom.losses.DSDLoss.uses_decoder_heads`)."""
        return bool(getattr(self.supervised, "uses_decoder_heads", False))

    def forward(self, outputs: Mapping[str, Any], target: torch.Tensor) -> torch.Tensor:
        """Compute the objective and keep each term in :attr:`latest_terms`.

        Args:
            outputs: :class:`MutualPair`'s training output, ``{"net1": ..., "net2": ...}``.
            target: ``(L, 1, *spatial)`` labels of the first ``L`` items of the batch.

        Raises:
            ValueError: more labels than items.
        """
        count = target.shape[0]
        items = _main_logits(outputs[DMD_NETWORKS[0]]).shape[0]
        if count > items:
            raise ValueError(f"{count} labels for a batch of {items} items: the labelled items must come first.")
        supervised_terms: dict[str, torch.Tensor] = {}
        supervised_sum = []
        for name in DMD_NETWORKS:
            supervised = self.supervised(_first_items(outputs[name], count), target)
            supervised_sum.append(supervised)
            own_terms = getattr(self.supervised, "latest_terms", None) or {"total": supervised}
            supervised_terms.update({f"{name}_{term}": value.detach() for term, value in own_terms.items()})
        weight = self.current_weight
        first, second = (_main_logits(outputs[name]) for name in DMD_NETWORKS)
        mutual = mutual_dice(first, second, self.temperature) if weight else first.new_zeros((), dtype=torch.float32)
        total = supervised_sum[0] + supervised_sum[1] + weight * mutual
        self.latest_terms = {
            "total": total.detach(),
            "mutual_dice": mutual.detach(),
            "mutual_weight": mutual.new_tensor(weight),
            **supervised_terms,
        }
        return total


def term_averages(
    loss: MutualDistillationLoss, device: Any = None, supervised_terms: tuple[str, ...] = TERM_NAMES
) -> dict[str, Average]:
    """Epoch means of the loss's terms as ignite metrics ``train_<term>``, all but ``total`` (the key metric's).

    Args:
        loss: the loss whose :attr:`~MutualDistillationLoss.latest_terms` are averaged.
        device: the metrics' device.
        supervised_terms: the term names of the supervised loss, DSD's by default.

    Returns:
        ``{"train_mutual_dice": Average, ..., "train_net2_kl_decoder": Average}``.
    """
    return {
        f"train_{name}": Average(output_transform=lambda _, name=name: loss.latest_terms[name], device=device)
        for name in dmd_term_names(supervised_terms)
        if name != "total"
    }


class SemiSupervisedTrainer(SupervisedTrainer):
    """MONAI's ``SupervisedTrainer`` that adds a batch of unlabelled images to every labelled batch.

    An epoch is one pass over the labelled data; the unlabelled loader is cycled through alongside, starting
    again (with the next epoch of a distributed sampler) when it runs out. Each iteration's batch holds the labelled
    images first and the unlabelled after them, with the labels of the labelled ones; the loss function tells
    them apart by the number of labels (:class:`MutualDistillationLoss`). A loss with an ``epoch`` attribute is
    told the number of epochs done at the start of every epoch, for its ramp-up. Every other argument is
    ``SupervisedTrainer``'s.

    Args:
        unlabelled_data_loader: batches of ``{"image": ...}`` crops of the labelled crops' shape.
        kwargs: the arguments of :class:`monai.engines.SupervisedTrainer`.
    """

    def __init__(self, unlabelled_data_loader: Iterable, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unlabelled_data_loader = unlabelled_data_loader
        self._unlabelled: Iterator | None = None
        self._unlabelled_passes = 0
        if hasattr(self.loss_function, "epoch"):
            self.add_event_handler(Events.EPOCH_STARTED, self._tell_loss_the_epoch)

    def _tell_loss_the_epoch(self, engine: Engine) -> None:
        self.loss_function.epoch = engine.state.epoch - 1

    def _next_unlabelled(self) -> Mapping[str, Any]:
        for _ in range(2):
            if self._unlabelled is None:
                sampler = getattr(self.unlabelled_data_loader, "sampler", None)
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(self._unlabelled_passes)
                self._unlabelled_passes += 1
                self._unlabelled = iter(self.unlabelled_data_loader)
            try:
                return next(self._unlabelled)
            except StopIteration:
                self._unlabelled = None
        raise ValueError("The unlabelled data loader gives no batch: it has no unlabelled images.")

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        unlabelled = self._next_unlabelled()
        labelled_images, unlabelled_images = (
            convert_to_tensor(batch[CommonKeys.IMAGE], track_meta=False) for batch in (batchdata, unlabelled)
        )
        if labelled_images.shape[1:] != unlabelled_images.shape[1:]:
            raise ValueError(
                f"Unlabelled crops of shape {tuple(unlabelled_images.shape[1:])} do not match the labelled crops' "
                f"{tuple(labelled_images.shape[1:])} (channels, then size): check the unlabelled images' channels."
            )
        images = torch.cat([labelled_images, unlabelled_images])
        return super()._iteration(engine, {CommonKeys.IMAGE: images, CommonKeys.LABEL: batchdata[CommonKeys.LABEL]})
