"""custom.loss_terms: the loss terms as floats for the log handlers, copied once per training step."""

from __future__ import annotations

import torch

from custom.definitions import TERM_NAMES
from custom.loss_terms import HostLossTerms
from custom.losses import DSDLoss


def _terms(offset: float) -> dict[str, torch.Tensor]:
    """One term per name; float32 and float64 mixed, as the loss may give them."""
    dtypes = [torch.float32] + [torch.float64] * (len(TERM_NAMES) - 1)
    return {name: torch.tensor(offset + i, dtype=dtype) for i, (name, dtype) in enumerate(zip(TERM_NAMES, dtypes))}


def test_terms_are_floats_named_with_the_prefix():
    loss = DSDLoss()
    loss.latest_terms = _terms(0.5)
    values = HostLossTerms(loss, prefix="train_loss/")(None)
    assert values == {f"train_loss/{name}": 0.5 + i for i, name in enumerate(TERM_NAMES)}
    assert all(type(v) is float for v in values.values())


def test_one_copy_per_step_serves_every_handler(monkeypatch):
    loss = DSDLoss()
    terms = HostLossTerms(loss)
    copies = []
    stack = torch.stack
    monkeypatch.setattr(torch, "stack", lambda *a, **k: copies.append(1) or stack(*a, **k))
    loss.latest_terms = _terms(0.0)
    first = terms(None)
    assert terms(None) is first  # the second handler of the same step
    loss.latest_terms = _terms(1.0)  # the next step
    assert terms(None)[TERM_NAMES[0]] == 1.0
    assert len(copies) == 2


def test_no_terms_before_the_first_step():
    assert HostLossTerms(DSDLoss())(None) == {}
