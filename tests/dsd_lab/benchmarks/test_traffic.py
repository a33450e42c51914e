"""The bytes-moved model: what each kind of operator reads and writes, and the ratios the counts predict."""

from __future__ import annotations

import os

import pytest
import torch

import custom.blockwise_loss as blockwise_loss
import custom.native as native
from dsd_lab.benchmarks import traffic as traffic_model
from dsd_lab.benchmarks.traffic import Gpu, Traffic, TrafficCounter, gpu_step_seconds, host_ratio

N = 1000
FLOAT = 4


def _counted(step) -> Traffic:
    with TrafficCounter() as counter:
        step()
    return counter.traffic


@pytest.mark.parametrize(
    "name, step, expected",
    [
        ("add reads two, writes one", lambda x, y, i: x + y, 3 * N * FLOAT),
        ("in-place add reads its target", lambda x, y, i: x.add_(y), 3 * N * FLOAT),
        ("fill only writes", lambda x, y, i: x.fill_(1.0), N * FLOAT),
        ("copy reads its source, writes its target", lambda x, y, i: x.copy_(y), 2 * N * FLOAT),
        ("views are free", lambda x, y, i: x.view(10, 100).t()[:5], 0),
        ("a broadcast operand counts once", lambda x, y, i: x + y[:1].expand(N), (2 * N + 1) * FLOAT),
        ("a gather reads what it writes and its index", lambda x, y, i: x.index_select(0, i), 10 * (2 * FLOAT + 8)),
        ("out= is written, not read", lambda x, y, i: torch.mul(x, y, out=torch.empty(N)), 3 * N * FLOAT),
        ("a scatter moves its source", lambda x, y, i: x.index_copy_(0, i, y[:10]), 10 * (2 * FLOAT + 8)),
    ],
)
def test_bytes_of_each_kind_of_operator(name, step, expected):
    x, y, index = torch.ones(N), torch.ones(N), torch.arange(10)
    traffic = _counted(lambda: step(x, y, index))
    assert traffic.bytes == expected, name
    assert len(traffic.operators) == (expected > 0)


@pytest.mark.parametrize("inplace", [False, True])
def test_matmul_flops(inplace):
    a, b, c = torch.ones(4, 5), torch.ones(5, 6), torch.zeros(4, 6)
    traffic = _counted(lambda: c.addmm_(a, b) if inplace else torch.mm(a, b))
    assert traffic.flops == 2 * 4 * 5 * 6
    assert traffic.bytes == (20 + 30 + 24 + 24 * inplace) * FLOAT


def test_predicted_ratios():
    basic, dsd = Traffic([(0, 100)]), Traffic([(0, 100), (0, 50)])
    assert host_ratio(basic, dsd, bandwidth=10.0, basic_step_s=50.0) == pytest.approx(1.1)
    # one extra operator at 5 s of latency adds 5 s to the 50 s step
    assert host_ratio(basic, dsd, bandwidth=10.0, basic_step_s=50.0, latency_s=5.0) == pytest.approx(1.2)
    gpu = Gpu("test", bandwidth=100.0, bf16_flops=1000.0, launch_s=0.1)
    # each operator takes the longest of its compute, its memory traffic and one launch
    assert gpu_step_seconds(Traffic([(5000, 100), (10, 300), (1, 1)]), gpu) == pytest.approx(5.0 + 3.0 + 0.1)


def test_fused_kernel_calls_count_as_one_operator_each_with_their_tensors():
    kernels = native.native_kernels(torch.float32, torch.device("cpu"))
    if kernels is None:
        pytest.skip("the native kernels do not build here (no C compiler)")
    heads, classes, voxels = 3, 4, 300
    logits, labels = torch.randn(heads, classes, voxels), torch.randint(0, classes, (voxels,))
    kl_grad = torch.empty(2, classes, voxels)
    outputs = (torch.zeros(1), torch.zeros(1, classes), torch.zeros(1, classes), torch.zeros(classes), torch.zeros(1))
    coefficients = torch.zeros(heads, classes)
    with TrafficCounter() as counter, traffic_model._native_kernels_counted(counter.traffic):
        kernels.block_forward(logits, labels, [2], [2], 3.0, True, kl_grad, outputs)
        kernels.dice_gradient(logits, labels, coefficients, coefficients, 0.1)
    logit_bytes, label_bytes = heads * classes * voxels * FLOAT, voxels * 8
    assert counter.traffic.operators == [
        (0, logit_bytes + label_bytes + 2 * classes * voxels * FLOAT),
        (0, 2 * logit_bytes + label_bytes),
    ]
    assert native.NativeKernels.block_forward.__name__ == "block_forward"  # the counting is undone


def test_the_gpu_count_runs_the_loss_without_the_cpu_kernels(monkeypatch):
    monkeypatch.delenv(native.SWITCH, raising=False)
    cpu_settings = blockwise_loss.BLOCK_ELEMENTS["cpu"], blockwise_loss.PRODUCT_RUN_VOXELS["cpu"]
    with traffic_model.blockwise_loss_as_on("cuda"):
        assert native.native_kernels(torch.float32, torch.device("cpu")) is None
        inputs, grad, out = torch.ones(2, 1 << 16), torch.ones(3, 1 << 16), torch.zeros(3, 2)
        with TrafficCounter() as counter:
            blockwise_loss._add_products(out, grad, inputs, 1.0)  # one product, as a GPU's BLAS takes it
        assert len(counter.traffic.operators) == 1
    assert native.SWITCH not in os.environ
    assert (blockwise_loss.BLOCK_ELEMENTS["cpu"], blockwise_loss.PRODUCT_RUN_VOXELS["cpu"]) == cpu_settings
