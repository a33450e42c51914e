"""Scoring the auxiliary heads: every head's full-size logits, and their Dice against the label."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from monai.inferers import SlidingWindowInferer
from monai.networks.utils import one_hot

from custom.head_scores import HeadDice, head_metric_names
from custom.networks import DSDNet
from tests.custom.test_networks import TINY_DECODER_TAPS, TINY_ENCODER_TAPS, TinyUNet

K = 3

pytestmark = pytest.mark.usefixtures("single_thread")


def test_head_outputs_are_the_training_heads_at_input_size():
    torch.manual_seed(0)
    net = DSDNet(TinyUNet(), TINY_ENCODER_TAPS, TINY_DECODER_TAPS, num_classes=K, in_channels=1, roi_size=(8, 8, 8))
    x = torch.randn(2, 1, 8, 8, 8)
    net.train()
    training = net(x)
    heads = net.head_outputs(x)
    assert list(heads) == TINY_ENCODER_TAPS + TINY_DECODER_TAPS
    for expected, logits in zip(training["encoder"] + training["decoder"], heads.values()):
        torch.testing.assert_close(logits, expected)
    net.eval()
    assert all(logits.shape == (2, K, 8, 8, 8) for logits in net.head_outputs(x).values())


def test_metric_names_follow_the_paper_and_suit_mlflow():
    net = DSDNet(TinyUNet(), TINY_ENCODER_TAPS, TINY_DECODER_TAPS, num_classes=K, in_channels=1, roi_size=(8, 8, 8))
    assert head_metric_names(net) == [
        "val_head_dice/E1_enc1",
        "val_head_dice/E2_enc2",
        "val_head_dice/E3_enc3",
        "val_head_dice/D1_dec2_2",
        "val_head_dice/D2_up2_input",
    ]


class _Oracle(nn.Module):
    """Two heads that read the label from the image: one copies it, one sees background only.

    The taps are named against the alphabet, so that a dictionary put in sorted order would swap them."""

    encoder_taps, decoder_taps = ["copy"], ["blind"]

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def head_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        copy = 10.0 * one_hot(x.round().long(), K)
        blind = torch.zeros_like(copy)
        blind[:, 0] = 1.0
        return {"copy": copy, "blind": blind}


@pytest.mark.parametrize("label_channels", [1, K])
def test_each_head_is_scored_against_the_label_through_the_validation_inferer(label_channels):
    label = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    label[0, :3], label[0, 5:, 5:] = 1, 2
    metric = HeadDice(_Oracle(), SlidingWindowInferer(roi_size=(4, 4, 4), overlap=0.5), num_classes=K)

    def as_given(labels: torch.Tensor) -> torch.Tensor:
        return labels if label_channels == 1 else one_hot(labels[None], K)[0]

    metric.update(([label.float()], [as_given(label)]))
    empty = torch.zeros_like(label)
    metric.update(([empty.float()], [as_given(empty)]))  # no foreground: no Dice, not counted
    assert metric.compute() == {"val_head_dice/E1_copy": 1.0, "val_head_dice/D1_blind": 0.0}
    metric.reset()
    assert all(math.isnan(value) for value in metric.compute().values())
