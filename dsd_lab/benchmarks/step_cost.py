"""Cost of DSD over the plain backbone: training-step time, peak memory and eval-mode forward time.

Usage::

    dsd-bench [--backbone unetr] [--size 96] [--batch 2] [--classes 8] [--device cpu|cuda]
                           [--amp] [--steps 5] [--reference] [--json OUT]

Training variants, as in the paper's ablation: ``basic`` (the bare backbone with DiceCE), ``ds`` (deep
supervision of the decoder heads) and ``dsd`` (deep supervision and both distillations), built as the
bundles build them: heads with deferred upsampling and the blockwise loss. ``--reference`` measures
instead full-resolution heads and the term-by-term eq. 4, the straightforward implementation. Step times
are medians over ``steps`` steps taken in turn by every variant in one process, so that drift of the
machine affects all variants alike. Peak memory is CUDA's max allocated on a GPU; on the CPU each
variant runs in its own subprocess and reports how far its peak resident set grew over the process's
resident set before the model was built (parameters, gradients, optimiser state and activations).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from custom.losses import DSDLoss
from custom.networks import DSDNet
from dsd_lab.cli import run_command

__all__ = ["BACKBONES", "VARIANTS", "Setup", "benchmark", "main", "measure_memory", "measure_times"]

VARIANTS = ("basic", "ds", "dsd")


def _unetr(
    in_channels: int, classes: int, size: int, feature_size: int = 16, hidden_size: int = 768
) -> tuple[nn.Module, list[str], list[str]]:
    from monai.networks.nets import UNETR

    net = UNETR(
        in_channels,
        classes,
        img_size=size,
        feature_size=feature_size,
        hidden_size=hidden_size,
        mlp_dim=4 * hidden_size,
        num_heads=12 if hidden_size % 12 == 0 else 4,
        proj_type="perceptron",
    )
    return net, ["encoder1", "encoder2", "encoder3", "encoder4"], ["decoder3", "decoder4", "decoder5", "decoder5:input"]


#: Backbone factories: ``(in_channels, classes, size) -> (backbone, encoder_taps, decoder_taps)``.
#: ``unetr`` is the paper's UNETR at feature size 16; ``unetr_tiny`` is for quick checks.
BACKBONES: dict[str, Callable[[int, int, int], tuple[nn.Module, list[str], list[str]]]] = {
    "unetr": _unetr,
    "unetr_tiny": partial(_unetr, feature_size=8, hidden_size=96),
}


@dataclass(frozen=True)
class Setup:
    """The workload every variant is measured on.

    Attributes:
        backbone: one of :data:`BACKBONES`.
        size: edge of the cubic input patch.
        batch: batch size.
        classes: number of classes.
        amp: bf16 autocast.
        reference: full-resolution heads and the term-by-term loss instead of the bundles' blockwise one.
    """

    backbone: str = "unetr"
    size: int = 96
    batch: int = 2
    classes: int = 8
    amp: bool = False
    reference: bool = False


def _build(variant: str, setup: Setup, device: torch.device) -> tuple[nn.Module, nn.Module]:
    net, encoder_taps, decoder_taps = BACKBONES[setup.backbone](1, setup.classes, setup.size)
    loss = DSDLoss.from_ablation(variant)
    if variant != "basic":  # as the bundles do, build only the heads the loss reads
        encoder_taps = encoder_taps if loss.uses_encoder_heads else []
        decoder_taps = decoder_taps if loss.uses_decoder_heads else []
        net = DSDNet(
            net,
            encoder_taps,
            decoder_taps,
            num_classes=setup.classes,
            in_channels=1,
            roi_size=(setup.size,) * 3,
            defer_upsampling=not setup.reference,
        )
    return net.to(device), loss


class _Step:
    """One variant's model, optimiser and data, stepping on demand."""

    def __init__(self, variant: str, setup: Setup, device: torch.device):
        self.net, self.loss = _build(variant, setup, device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(0)
        shape = (setup.batch, 1, *(setup.size,) * 3)
        self.image = torch.randn(shape, generator=generator).to(device)
        self.label = torch.randint(0, setup.classes, shape, generator=generator).to(device)
        self.device = device
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if setup.amp else nullcontext()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self) -> float:
        self.net.train()
        self._sync()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            value = self.loss(self.net(self.image), self.label)
        value.backward()
        self.optimizer.step()
        self._sync()
        return time.perf_counter() - start

    @torch.no_grad()
    def eval_forward(self, module: nn.Module) -> float:
        module.eval()
        self._sync()
        start = time.perf_counter()
        with self.autocast:
            module(self.image)
        self._sync()
        return time.perf_counter() - start


def measure_times(setup: Setup, device: torch.device, steps: int) -> dict[str, float]:
    """Median training-step time of each variant and eval-mode forward time of DSD vs its bare backbone."""
    runners = {v: _Step(v, setup, device) for v in VARIANTS}
    for runner in runners.values():  # warm-up: allocator, autotuning, first-call overheads
        runner.train_step()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(steps):
        for variant, runner in runners.items():
            times[variant].append(runner.train_step())
    dsd = runners["dsd"]
    evals: dict[str, list[float]] = {"eval_dsd": [], "eval_bare": []}
    for module, key in ((dsd.net, "eval_dsd"), (dsd.net.backbone, "eval_bare")):
        dsd.eval_forward(module)
    for _ in range(steps):
        for module, key in ((dsd.net, "eval_dsd"), (dsd.net.backbone, "eval_bare")):
            evals[key].append(dsd.eval_forward(module))
    result = {f"step_s_{v}": statistics.median(t) for v, t in times.items()}
    result.update({f"{k}_s": statistics.median(t) for k, t in evals.items()})
    return result


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(field)


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) and return the current RSS as the baseline.

    Without the reset, the peak would include transients of imports and start-up, which for a
    small model exceed its whole training footprint.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_bytes("VmRSS")
    except OSError:
        # No reset available: the lifetime peak is the best baseline there is.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss_bytes() -> int:
    try:
        return _status_bytes("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _memory_of_variant(variant: str, setup: dict[str, Any], steps: int) -> int:
    """Peak training memory of one variant in this process (run it in a fresh subprocess on the CPU)."""
    device = torch.device("cpu")
    before = _reset_peak_rss()
    runner = _Step(variant, Setup(**setup), device)
    for _ in range(steps):
        runner.train_step()
    return _peak_rss_bytes() - before


def measure_memory(setup: Setup, device: torch.device, steps: int = 2) -> dict[str, int]:
    """Peak training memory in bytes of each variant: CUDA max allocated, or peak RSS growth in a subprocess."""
    result = {}
    for variant in VARIANTS:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            runner = _Step(variant, setup, device)
            for _ in range(steps):
                runner.train_step()
            result[f"memory_bytes_{variant}"] = torch.cuda.max_memory_allocated(device) - base
            del runner
        else:
            code = (
                "import json, sys; from dsd_lab.benchmarks.step_cost import _memory_of_variant; "
                f"print(json.dumps(_memory_of_variant({variant!r}, {asdict(setup)!r}, {steps})))"
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            result[f"memory_bytes_{variant}"] = int(out.strip().splitlines()[-1])
    return result


def benchmark(
    backbone: str = "unetr",
    size: int = 96,
    batch: int = 2,
    classes: int = 8,
    device: str = "cpu",
    amp: bool = False,
    steps: int = 5,
    reference: bool = False,
    json_path: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the benchmark, print every figure and the ratios, optionally write them as JSON.

    Args:
        backbone: one of :data:`BACKBONES`.
        size: edge of the cubic input patch.
        batch: batch size.
        classes: number of classes.
        device: ``cpu`` or ``cuda``.
        amp: bf16 autocast.
        steps: timed steps per variant (after one warm-up step).
        reference: full-resolution heads and the term-by-term loss instead of the bundles' blockwise one.
        json_path: also write the results to this JSON file (``--json`` on the command line).

    Returns:
        Every figure, with the keys ``step_ratio_ds``, ``step_ratio_dsd``, ``memory_ratio_ds``,
        ``memory_ratio_dsd`` and ``eval_ratio`` among them.
    """
    json_path = kwargs.pop("json", json_path)
    if kwargs:
        raise TypeError(f"Unknown options: {sorted(kwargs)}")
    if backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone '{backbone}'; choose one of {sorted(BACKBONES)}.")
    torch_device = torch.device(device)
    setup = Setup(backbone, size, batch, classes, amp, reference)
    results: dict[str, Any] = {
        **asdict(setup),
        "device": torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    results.update(measure_times(setup, torch_device, steps))
    results.update(measure_memory(setup, torch_device))
    for variant in ("ds", "dsd"):
        results[f"step_ratio_{variant}"] = results[f"step_s_{variant}"] / results["step_s_basic"]
        results[f"memory_ratio_{variant}"] = results[f"memory_bytes_{variant}"] / results["memory_bytes_basic"]
    results["eval_ratio"] = results["eval_dsd_s"] / results["eval_bare_s"]
    for key, value in results.items():
        print(f"{key:>22}: {value:.4g}" if isinstance(value, float) else f"{key:>22}: {value}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


def main(argv: list[str] | None = None) -> None:
    """``dsd-bench``: :func:`benchmark` from the command line."""
    run_command(benchmark, argv, name="dsd-bench")


if __name__ == "__main__":
    main()
