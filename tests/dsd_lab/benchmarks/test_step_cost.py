"""The benchmark's command-line contract (figures themselves are measured, never asserted)."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from dsd_lab.benchmarks import step_cost
from dsd_lab.benchmarks.host import copy_bandwidth
from dsd_lab.benchmarks.step_cost import RATIOS, Setup, TrainingStep, _build, default_amp_dtype
from dsd_lab.benchmarks.step_cost import benchmark as main

TINY = {"backbone": "unetr_tiny", "size": 16, "batch": 1, "classes": 3}


def test_bench_prints_and_writes_every_figure(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("dsd_lab.benchmarks.host.copy_bandwidth", lambda device: copy_bandwidth(device, megabytes=8))
    out = tmp_path / "bench.json"
    results = main(**TINY, steps=1, json=str(out))
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == results
    (run,) = results["runs"]
    for key in RATIOS + ("predicted_step_ratio_dsd_bytes", "predicted_step_ratio_dsd_bytes_operators"):
        assert run[key] > 0 and results["median"][key] == results["worst"][key] == run[key]
        assert f"{key}:" in printed
    for variant in ("basic", "ds", "dsd"):
        assert run[f"step_s_{variant}"] > 0 and run[f"memory_bytes_{variant}"] > 0
        assert run[f"step_page_faults_{variant}"] >= 0 and run[f"step_system_s_{variant}"] >= 0
    assert "step_system_s_dsd" in printed and "step_page_faults_basic" in printed
    assert run["cpu"] and run["threads"] >= 1 and run["copy_bandwidth_gbps"] > 0 and run["operator_latency_us"] > 0
    counts = results["model"]["counts"]
    assert counts["host_dsd"]["bytes"] > counts["host_basic"]["bytes"] > 0
    assert counts["gpu_dsd"]["operators"] > counts["gpu_basic"]["operators"]
    assert {"H100 SXM", "H200 SXM"} <= set(results["model"]["gpu"])
    assert "(a prediction, bf16)" in printed


def test_repeats_print_every_run_with_median_and_worst(monkeypatch, capsys):
    ratios = iter([1.2, 1.0, 1.1])

    def fake_run(setup, device, steps):
        value = next(ratios)
        return {"cpu": "x", "threads": 2, "copy_bandwidth_gbps": 9.0, "operator_latency_us": 5.0, "step_s_basic": 1.0, "step_s_dsd": value,
                "memory_bytes_basic": 1, **{key: value for key in RATIOS}}

    monkeypatch.setattr(step_cost, "_run_in_subprocess", fake_run)
    results = main(**TINY, repeat=3, model=False)
    assert len(results["runs"]) == 3
    assert results["median"]["step_ratio_dsd"] == 1.1 and results["worst"]["step_ratio_dsd"] == 1.2
    printed = capsys.readouterr().out
    assert "run 1" in printed and "run 3" in printed
    assert "step_ratio_dsd:   1.200   1.000   1.100    1.100    1.200" in printed


def test_step_ratio_pairs_each_round_and_reverses_the_order(monkeypatch):
    # after the warm-up step, Basic takes 1, 2, 4 s and DSD 1.1, 2.4, 4.4 s: a machine slowing down
    scripted = {"basic": [9.0, 1.0, 2.0, 4.0], "ds": [9.0, 1.0, 2.0, 4.0], "dsd": [9.0, 1.1, 2.4, 4.4]}
    calls = []

    class ScriptedStep:
        def __init__(self, variant, setup, device):
            self.variant, self.times = variant, iter(scripted[variant])
            self.net = SimpleNamespace(backbone=None)

        def train_step(self):
            calls.append(self.variant)
            return next(self.times)

        def eval_forward(self, module):
            return 1.0

    # page faults and system seconds read before and after each timed step, in the order of the steps above:
    # Basic's steps take 10, 30 and 20 faults and 1, 3 and 2 s, the others none
    basic_steps = iter([(10, 1.0), (30, 3.0), (20, 2.0)])
    readings = []
    for variant in ["basic", "ds", "dsd", "dsd", "ds", "basic", "basic", "ds", "dsd"]:
        faults, seconds = next(basic_steps) if variant == "basic" else (0, 0.0)
        readings += [(100, 5.0), (100 + faults, 5.0 + seconds)]
    readings = iter(readings)
    monkeypatch.setattr(step_cost, "TrainingStep", ScriptedStep)
    monkeypatch.setattr(step_cost, "_kernel_work", lambda: next(readings))
    result = step_cost.measure_times(Setup(**TINY), torch.device("cpu"), steps=3)
    assert calls[3:] == ["basic", "ds", "dsd", "dsd", "ds", "basic", "basic", "ds", "dsd"]
    assert result["step_times_s"]["dsd"] == [1.1, 2.4, 4.4]
    assert result["step_ratio_dsd"] == pytest.approx(1.1)  # median of 1.1, 1.2, 1.1
    assert result["step_ratio_dsd_of_medians"] == pytest.approx(1.2)  # 2.4 / 2.0
    assert result["step_ratio_ds"] == pytest.approx(1.0)
    assert result["step_page_faults_basic"] == 20 and result["step_system_s_basic"] == 2.0  # medians
    assert result["step_page_faults_dsd"] == 0 and result["step_system_s_dsd"] == 0.0


@pytest.mark.parametrize("options, message", [({"repeat": 0}, "--repeat"), ({"amp_dtype": "float8"}, "amp_dtype")])
def test_bad_options_fail_clearly(options, message):
    with pytest.raises(ValueError, match=message):
        main(**TINY, **options)


def _one_step_gradient(setup: Setup) -> tuple[TrainingStep, torch.Tensor]:
    torch.manual_seed(0)  # the same initial weights for every precision
    step = TrainingStep("dsd", setup, torch.device("cpu"))
    step.run_step()
    return step, torch.cat([p.grad.flatten() for p in step.net.parameters() if p.grad is not None])


# 32³, not 16³: at 16³ UNETR's decoder5 convolves 2³ feature maps with 3³ kernels, where PyTorch 2.13's
# oneDNN computes bfloat16 weight gradients from uninitialised memory on the CPU (NaN or far off, run by run)
@pytest.mark.parametrize("amp_dtype, scaled", [("float16", True), ("bfloat16", False)])
def test_amp_steps_as_the_bundles_train(amp_dtype, scaled):
    setup = Setup(**{**TINY, "size": 32})
    step, gradient = _one_step_gradient(replace(setup, amp_dtype=amp_dtype))
    assert (step.scaler is not None) == scaled  # float16 trains with a GradScaler, bfloat16 without
    assert all(torch.isfinite(p).all() for p in step.net.parameters())
    assert all(torch.isfinite(v) for v in step.loss.latest_terms.values())
    _, float32_gradient = _one_step_gradient(setup)
    # the GradScaler's step leaves float16's gradient unscaled, so both compare with float32's as they are
    assert torch.nn.functional.cosine_similarity(gradient, float32_gradient, dim=0) > 0.99
    assert default_amp_dtype(torch.device("cpu")) == "bfloat16"


@pytest.mark.parametrize("reference", [False, True])
def test_variants_are_built_as_the_bundles_build_them_or_as_the_reference(reference):
    setup = Setup("unetr_tiny", size=16, classes=3, reference=reference)
    net, loss = _build("dsd", setup, torch.device("cpu"))
    assert net.defer_upsampling is not reference
    assert (loss.eta, loss.alpha1, loss.alpha2) == (1.0, 1.0, 1.0)
    basic, _ = _build("basic", setup, torch.device("cpu"))
    assert not hasattr(basic, "heads")  # the plain backbone
