"""The benchmark's command-line contract (figures themselves are measured, never asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from dsd_lab.benchmarks.step_cost import Setup, _build
from dsd_lab.benchmarks.step_cost import benchmark as main


def test_bench_prints_and_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = main(backbone="unetr_tiny", size=16, batch=1, classes=3, steps=1, json=str(out))
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == results
    for key in ("step_ratio_ds", "step_ratio_dsd", "memory_ratio_ds", "memory_ratio_dsd", "eval_ratio"):
        assert results[key] > 0
        assert f"{key}: {results[key]:.4g}" in printed
    for variant in ("basic", "ds", "dsd"):
        assert results[f"step_s_{variant}"] > 0 and results[f"memory_bytes_{variant}"] > 0


@pytest.mark.parametrize("reference", [False, True])
def test_variants_are_built_as_the_bundles_build_them_or_as_the_reference(reference):
    setup = Setup("unetr_tiny", size=16, classes=3, reference=reference)
    net, loss = _build("dsd", setup, torch.device("cpu"))
    assert net.defer_upsampling is not reference
    assert (loss.eta, loss.alpha1, loss.alpha2) == (1.0, 1.0, 1.0)
    basic, _ = _build("basic", setup, torch.device("cpu"))
    assert not hasattr(basic, "heads")  # the plain backbone
