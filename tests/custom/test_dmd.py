"""Deep Mutual Distillation: the mutual term, the gradients of each network, the trainer's mixed batches."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from custom.definitions import dmd_term_names
from custom.dmd import MutualDistillationLoss, MutualPair, SemiSupervisedTrainer, mutual_dice, sigmoid_rampup
from custom.losses import DSDLoss
from custom.networks import DSDNet

K = 3  # classes
SIZE = 8  # voxels per axis

pytestmark = pytest.mark.usefixtures("single_thread")


class TinyNet(nn.Module):
    """Two resolution levels and no batch statistics, so that each item's output depends on that item alone."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv3d(4, 8, 2, stride=2), nn.ReLU())
        self.up = nn.ConvTranspose3d(8, 4, 2, stride=2)
        self.dec1 = nn.Sequential(nn.Conv3d(8, 4, 3, padding=1), nn.ReLU())
        self.out = nn.Conv3d(4, K, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        return self.out(self.dec1(torch.cat([self.up(self.enc2(e1)), e1], 1)))


def _pair(seed: int = 0, dsd: bool = False) -> MutualPair:
    torch.manual_seed(seed)
    nets = [TinyNet(), TinyNet()]
    if dsd:
        taps = {"encoder_taps": ["enc1", "enc2"], "decoder_taps": ["up:input", "up"]}
        nets = [DSDNet(n, **taps, num_classes=K, in_channels=1, roi_size=(SIZE,) * 3, defer_upsampling=True) for n in nets]
    return MutualPair(*nets)


def _batch(items: int, labelled: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(items, 1, SIZE, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, K, (labelled, 1, SIZE, SIZE, SIZE), generator=generator)
    return images, labels


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_the_mutual_term_is_symmetric_and_zero_when_the_networks_agree(temperature):
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 2, K, 4, 4, 4, generator=generator)
    assert mutual_dice(first, second, temperature) == pytest.approx(mutual_dice(second, first, temperature).item())
    assert mutual_dice(first, second, temperature) > 0.01
    assert mutual_dice(first, first.clone(), temperature).item() == pytest.approx(0.0, abs=1e-6)
    # the same logits shifted per voxel give the same probabilities: agreement is on probabilities
    assert mutual_dice(first, first + 3.0, temperature).item() == pytest.approx(0.0, abs=1e-6)


def test_the_mutual_term_is_the_squared_dice_of_the_softened_foreground():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 2, K, 4, 4, 4, generator=generator)
    p, q = torch.softmax(first / 2, 1)[:, 1:], torch.softmax(second / 2, 1)[:, 1:]
    dims = (0, 2, 3, 4)
    per_class = 1 - (2 * (p * q).sum(dims) + 1e-5) / ((p * p).sum(dims) + (q * q).sum(dims) + 1e-5)
    assert mutual_dice(first, second, 2.0).item() == pytest.approx(per_class.mean().item(), rel=1e-6)


def _gradients(pair: MutualPair, loss: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    pair.zero_grad()
    images = images.clone().requires_grad_(True)
    loss(pair(images), labels).backward()
    grads = {name: torch.cat([p.grad.flatten() for p in getattr(pair, name).parameters()]) for name in ("net1", "net2")}
    grads["images"] = images.grad
    return grads


def test_each_network_gets_gradient_from_both_of_its_terms():
    pair = _pair()
    images, labels = _batch(items=4, labelled=2)
    supervised_only = _gradients(pair, MutualDistillationLoss(DSDLoss.from_ablation("Basic"), weight=0.0), images, labels)
    mutual_only = _gradients(pair, MutualDistillationLoss(lambda outputs, target: 0.0 * outputs.sum()), images, labels)
    both = _gradients(pair, MutualDistillationLoss(DSDLoss.from_ablation("Basic"), weight=4.0), images, labels)
    for name in ("net1", "net2"):
        assert supervised_only[name].abs().sum() > 0 and mutual_only[name].abs().sum() > 0
        torch.testing.assert_close(both[name], supervised_only[name] + mutual_only[name], rtol=1e-4, atol=1e-7)
    # the labels reach only the labelled items; the mutual term reaches every item, the unlabelled ones too
    assert supervised_only["images"][2:].abs().sum() == 0 and supervised_only["images"][:2].abs().sum() > 0
    assert mutual_only["images"][2:].abs().sum() > 0


def test_each_network_is_supervised_on_the_labelled_items_alone_with_dsd_heads():
    pair = _pair(dsd=True).train()
    images, labels = _batch(items=3, labelled=2)
    loss = MutualDistillationLoss(DSDLoss.from_ablation("DSD"))
    loss(pair(images), labels)
    for name in ("net1", "net2"):
        alone = DSDLoss.from_ablation("DSD")
        alone(getattr(pair, name)(images[:2]), labels)
        for term, value in alone.latest_terms.items():
            assert loss.latest_terms[f"{name}_{term}"].item() == pytest.approx(value.item(), rel=1e-5), term
    assert list(loss.latest_terms) == list(dmd_term_names())
    expected = loss.latest_terms["net1_total"] + loss.latest_terms["net2_total"] + 4.0 * loss.latest_terms["mutual_dice"]
    assert loss.latest_terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_in_eval_mode_the_pair_is_its_first_network():
    pair = _pair().eval()
    images, _ = _batch(items=2, labelled=0)
    torch.testing.assert_close(pair(images), pair.net1(images))


def test_more_labels_than_items_is_refused():
    pair = _pair()
    images, labels = _batch(items=2, labelled=3)
    with pytest.raises(ValueError, match="3 labels for a batch of 2 items"):
        MutualDistillationLoss(DSDLoss())(pair(images), labels)


@pytest.mark.parametrize("epoch, length, expected", [(0, 0, 1.0), (0, 10, math.exp(-5)), (5, 10, math.exp(-1.25)), (20, 10, 1.0)])
def test_sigmoid_rampup(epoch, length, expected):
    assert sigmoid_rampup(epoch, length) == pytest.approx(expected)


def _loaders(seed: int = 2) -> tuple[list[dict], list[dict]]:
    images, labels = _batch(items=6, labelled=3, seed=seed)
    labelled = [{"image": images[i : i + 1], "label": labels[i : i + 1]} for i in range(3)]
    unlabelled = [{"image": images[i : i + 1]} for i in range(3, 5)]  # fewer than the labelled: cycled
    return labelled, unlabelled


def _optimizer(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(module.parameters(), lr=0.01, weight_decay=1e-5)


def test_with_lambda_zero_the_pair_trains_as_two_independent_supervised_runs():
    labelled, unlabelled = _loaders()
    pair = _pair(seed=3)
    alone = [copy.deepcopy(pair.net1), copy.deepcopy(pair.net2)]
    SemiSupervisedTrainer(
        unlabelled_data_loader=unlabelled,
        max_epochs=2,
        train_data_loader=labelled,
        network=pair,
        optimizer=_optimizer(pair),
        loss_function=MutualDistillationLoss(DSDLoss.from_ablation("Basic"), weight=0.0),
        device=torch.device("cpu"),
        decollate=False,
    ).run()
    for trained_in_pair, network in zip((pair.net1, pair.net2), alone):
        SupervisedTrainer(
            max_epochs=2,
            train_data_loader=labelled,
            network=network,
            optimizer=_optimizer(network),
            loss_function=DSDLoss.from_ablation("Basic"),
            device=torch.device("cpu"),
            decollate=False,
        ).run()
        for (name, expected), actual in zip(network.named_parameters(), trained_in_pair.parameters()):
            torch.testing.assert_close(actual, expected, msg=name)


def test_the_trainer_adds_an_unlabelled_batch_to_every_labelled_one_and_ramps_lambda_up():
    labelled, unlabelled = _loaders()
    pair = _pair()
    loss = MutualDistillationLoss(DSDLoss.from_ablation("Basic"), weight=4.0, rampup_epochs=4)
    trainer = SemiSupervisedTrainer(
        unlabelled_data_loader=unlabelled,
        max_epochs=3,
        train_data_loader=labelled,
        network=pair,
        optimizer=_optimizer(pair),
        loss_function=loss,
        device=torch.device("cpu"),
        decollate=False,
    )
    seen = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda engine: seen.append((engine.state.output["image"].shape[0], loss.latest_terms["mutual_weight"].item())),
    )
    trainer.run()
    weights = [4.0 * sigmoid_rampup(epoch, 4) for epoch in range(3) for _ in labelled]
    assert seen == [(2, pytest.approx(w)) for w in weights]
