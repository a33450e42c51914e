"""Cost of DSD over the plain backbone: training-step time, peak memory and eval-mode forward time.

Usage::

    dsd-bench [--backbone unetr] [--size 96] [--batch 2] [--classes 8] [--device cpu|cuda]
              [--amp] [--amp_dtype bfloat16|float16] [--steps 5] [--reference] [--repeat 1]
              [--model true] [--json OUT]

Training variants, as in the paper's ablation: ``basic`` (the bare backbone with DiceCE), ``ds`` (deep
supervision of the decoder heads) and ``dsd`` (deep supervision and both distillations), built as the
bundles build them: heads with deferred upsampling and the blockwise loss. ``--reference`` measures
instead full-resolution heads and the term-by-term eq. 4, the straightforward implementation. The variants
take their steps in turn in one process, in rounds of one step each whose order reverses from one round to the
next, so that a drift of the machine falls on every variant alike. A variant's step ratio is the median over
rounds of its step time over Basic's in the same round; the ratio of the variants' median step times is reported
beside it (``step_ratio_<variant>_of_medians``). Peak memory is CUDA's max allocated on a GPU; on the CPU each
variant runs in its own subprocess and reports how far its peak resident set grew over the process's
resident set before the model was built (parameters, gradients, optimiser state and activations).

``--amp`` trains as the bundles do under AMP: autocast in ``--amp_dtype``, float16 with a
:class:`torch.amp.GradScaler` or bfloat16 without one; by default bfloat16 where the device computes it,
else float16.

``--repeat N`` takes the whole measurement N times, each in a fresh process, and prints every run's
ratios with their median and worst. Each run also measures the host facts that bound a memory-bound
kernel (:mod:`dsd_lab.benchmarks.host`). ``--model`` (on by default) adds the bytes-moved model of
:mod:`dsd_lab.benchmarks.traffic`: what a Basic and a DSD step read and write, the DSD ratio this
predicts for each run from its copy bandwidth and Basic step time, and the ratio it predicts on an
H100 and an H200.
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
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from custom.flags import as_flag
from custom.losses import DSDLoss
from custom.networks import DSDNet
from dsd_lab.benchmarks.host import host_facts
from dsd_lab.benchmarks.traffic import GPUS, blockwise_loss_as_on, count_step, gpu_step_seconds, host_ratio
from dsd_lab.cli import run_command

__all__ = [
    "AMP_DTYPES",
    "BACKBONES",
    "RATIOS",
    "VARIANTS",
    "Setup",
    "TrainingStep",
    "benchmark",
    "default_amp_dtype",
    "main",
    "measure_memory",
    "measure_run",
    "measure_times",
    "traffic_model",
]

VARIANTS = ("basic", "ds", "dsd")

#: The figures each run reports against the plain backbone; the larger, the worse.
RATIOS = ("step_ratio_ds", "step_ratio_dsd", "memory_ratio_ds", "memory_ratio_dsd", "eval_ratio")

#: ``--amp_dtype`` names, as the bundles' ``amp_dtype``.
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def default_amp_dtype(device: torch.device) -> str:
    """``bfloat16`` where the device computes it natively, else ``float16`` (which then trains with a GradScaler)."""
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
    return "bfloat16"


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
        amp_dtype: autocast dtype (a key of :data:`AMP_DTYPES`), ``None`` for full precision.
        reference: full-resolution heads and the term-by-term loss instead of the bundles' blockwise one.
    """

    backbone: str = "unetr"
    size: int = 96
    batch: int = 2
    classes: int = 8
    amp_dtype: str | None = None
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


class TrainingStep:
    """One variant's model, optimiser and data, stepping on demand as the bundles' trainer steps."""

    def __init__(self, variant: str, setup: Setup, device: torch.device, foreach: bool | None = None):
        self.net, self.loss = _build(variant, setup, device)
        # foreach: PyTorch's default, which is one kernel per operation and parameter list on CUDA
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=1e-4, foreach=foreach)
        generator = torch.Generator().manual_seed(0)
        shape = (setup.batch, 1, *(setup.size,) * 3)
        self.image = torch.randn(shape, generator=generator).to(device)
        self.label = torch.randint(0, setup.classes, shape, generator=generator).to(device)
        self.device = device
        amp = setup.amp_dtype is not None
        self.autocast = torch.autocast(device.type, dtype=AMP_DTYPES[setup.amp_dtype]) if amp else nullcontext()
        # float16 trains with a GradScaler, as MONAI's SupervisedTrainer does under AMP; bfloat16 needs none
        self.scaler = torch.amp.GradScaler(device.type) if setup.amp_dtype == "float16" else None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run_step(self) -> None:
        """One training step: forward and loss under autocast, backward, optimiser step."""
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            value = self.loss(self.net(self.image), self.label)
        if self.scaler is None:
            value.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(value).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def train_step(self) -> float:
        """Seconds of one training step."""
        self._sync()
        start = time.perf_counter()
        self.run_step()
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


def measure_times(setup: Setup, device: torch.device, steps: int) -> dict[str, Any]:
    """Training-step times and ratios of each variant, and eval-mode forward time of DSD vs its bare backbone.

    Returns:
        ``step_times_s`` (every timed step of each variant, round by round), ``step_s_<variant>`` (their
        medians), ``step_ratio_<variant>`` (the median over rounds of the variant's step over Basic's in the
        same round), ``step_ratio_<variant>_of_medians`` (the ratio of the medians), ``eval_dsd_s``,
        ``eval_bare_s``, and the median minor page faults and system CPU seconds of a variant's step
        (``step_page_faults_<variant>``, ``step_system_s_<variant>``).
    """
    runners = {v: TrainingStep(v, setup, device) for v in VARIANTS}
    for runner in runners.values():  # warm-up: allocator, autotuning, first-call overheads
        runner.train_step()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    kernel_work: dict[str, list[tuple[int, float]]] = {v: [] for v in VARIANTS}
    for step in range(steps):
        # a reversed order every other round puts Basic and DSD first and last equally often
        for variant in VARIANTS if step % 2 == 0 else VARIANTS[::-1]:
            before = _kernel_work()
            times[variant].append(runners[variant].train_step())
            after = _kernel_work()
            kernel_work[variant].append((after[0] - before[0], after[1] - before[1]))
    dsd = runners["dsd"]
    evals: dict[str, list[float]] = {"eval_dsd": [], "eval_bare": []}
    for module, key in ((dsd.net, "eval_dsd"), (dsd.net.backbone, "eval_bare")):
        dsd.eval_forward(module)
    for _ in range(steps):
        for module, key in ((dsd.net, "eval_dsd"), (dsd.net.backbone, "eval_bare")):
            evals[key].append(dsd.eval_forward(module))
    result: dict[str, Any] = {"step_times_s": times}
    result.update({f"step_s_{v}": statistics.median(t) for v, t in times.items()})
    for variant in ("ds", "dsd"):
        paired = [t / basic for t, basic in zip(times[variant], times["basic"])]
        result[f"step_ratio_{variant}"] = statistics.median(paired)
        result[f"step_ratio_{variant}_of_medians"] = result[f"step_s_{variant}"] / result["step_s_basic"]
    result.update({f"{k}_s": statistics.median(t) for k, t in evals.items()})
    for variant, work in kernel_work.items():
        result[f"step_page_faults_{variant}"] = statistics.median(faults for faults, _ in work)
        result[f"step_system_s_{variant}"] = statistics.median(seconds for _, seconds in work)
    return result


def _kernel_work() -> tuple[int, float]:
    """This process's minor page faults and system CPU seconds so far.

    Where the allocator hands freed tensors back to the kernel, every step faults its memory in again and the
    kernel zeroes it: on a 2-core host at 96³ that was 2.8 M faults and 5-6 s of system CPU time per Basic step.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt, usage.ru_stime


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
    runner = TrainingStep(variant, Setup(**setup), device)
    for _ in range(steps):
        runner.train_step()
    return _peak_rss_bytes() - before


def _python_result(code: str) -> Any:
    """The JSON that ``code``, run in a fresh interpreter, prints on its last line."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure_memory(setup: Setup, device: torch.device, steps: int = 2) -> dict[str, int]:
    """Peak training memory in bytes of each variant: CUDA max allocated, or peak RSS growth in a subprocess."""
    result = {}
    for variant in VARIANTS:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            runner = TrainingStep(variant, setup, device)
            for _ in range(steps):
                runner.train_step()
            result[f"memory_bytes_{variant}"] = torch.cuda.max_memory_allocated(device) - base
            del runner
        else:
            result[f"memory_bytes_{variant}"] = _python_result(
                "import json; from dsd_lab.benchmarks.step_cost import _memory_of_variant; "
                f"print(json.dumps(_memory_of_variant({variant!r}, {asdict(setup)!r}, {steps})))"
            )
    return result


def measure_run(setup: Setup, device: torch.device, steps: int) -> dict[str, Any]:
    """One whole measurement: host facts, step and eval times, peak memory, and their ratios to Basic."""
    result: dict[str, Any] = host_facts(device)
    result.update(measure_times(setup, device, steps))
    result.update(measure_memory(setup, device))
    for variant in ("ds", "dsd"):
        result[f"memory_ratio_{variant}"] = result[f"memory_bytes_{variant}"] / result["memory_bytes_basic"]
    result["eval_ratio"] = result["eval_dsd_s"] / result["eval_bare_s"]
    return result


def traffic_model(setup: Setup) -> dict[str, dict[str, int]]:
    """Bytes, FLOPs and operators of one Basic and one DSD step, counted on this machine's CPU.

    ``host_*`` as the step runs here (no autocast, the CPU's blocks and fused kernels), ``gpu_*`` as it runs on a GPU
    (bfloat16 autocast, the GPU's blocks, the loss as PyTorch operators, the optimiser's one kernel per operation
    for all parameters).
    """
    cpu = torch.device("cpu")
    counts = {}
    for variant in ("basic", "dsd"):
        counts[f"host_{variant}"] = count_step(TrainingStep(variant, replace(setup, amp_dtype=None), cpu).run_step)
        gpu_step = TrainingStep(variant, replace(setup, amp_dtype="bfloat16"), cpu, foreach=True)
        with blockwise_loss_as_on("cuda"):
            counts[f"gpu_{variant}"] = count_step(gpu_step.run_step)
    return counts


def _summary(runs: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Median and worst (largest) of each ratio over the runs."""
    keys = [k for k in runs[0] if k.startswith(("step_ratio", "memory_ratio", "eval_ratio", "predicted"))]
    median = {k: statistics.median(r[k] for r in runs) for k in keys}
    worst = {k: max(r[k] for r in runs) for k in keys}
    return median, worst


def _print_results(results: dict[str, Any]) -> None:
    runs = results["runs"]
    print(f"setup: {results['setup']}, device {results['device']}, torch {results['torch']}")
    columns = [k for k in runs[0] if k.startswith(("step_ratio", "memory_ratio", "eval_ratio", "predicted"))]
    facts = ["cpu", "threads", "copy_bandwidth_gbps", "operator_latency_us", "step_s_basic", "step_s_dsd"]
    facts += [f"step_{what}_{v}" for what in ("system_s", "page_faults") for v in ("basic", "dsd")]
    for n, run in enumerate(runs, 1):
        print(f"run {n}: " + ", ".join(f"{k} {_format(run[k])}" for k in facts + ["gpu"] if k in run))
    width = max(len(c) for c in columns)
    print(f"{'':>{width}}  " + " ".join(f"{f'run {n}':>7}" for n in range(1, len(runs) + 1)) + "   median    worst")
    for column in columns:
        values = " ".join(f"{run[column]:7.3f}" for run in runs)
        print(f"{column:>{width}}: {values}  {results['median'][column]:7.3f}  {results['worst'][column]:7.3f}")
    model = results.get("model")
    if model:
        for name, counts in model["counts"].items():
            print(f"model {name}: {counts['bytes'] / 1e9:.2f} GB moved, {counts['flops'] / 1e12:.3f} TFLOP, "
                  f"{counts['operators']} operators")
        for gpu, prediction in model["gpu"].items():
            print(f"model on {gpu} (a prediction, bf16): Basic {prediction['basic_ms']:.1f} ms, "
                  f"DSD {prediction['dsd_ms']:.1f} ms, ratio {prediction['ratio']:.3f}; "
                  f"Basic at peak FLOP/s only {prediction['basic_flops_only_ms']:.1f} ms, "
                  f"ratio {prediction['ratio_flops_only']:.3f}")


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _run_in_subprocess(setup: Setup, device: str, steps: int) -> dict[str, Any]:
    return _python_result(
        "import json, torch; from dsd_lab.benchmarks.step_cost import Setup, measure_run; "
        f"print(json.dumps(measure_run(Setup(**{asdict(setup)!r}), torch.device({device!r}), {steps})))"
    )


def benchmark(
    backbone: str = "unetr",
    size: int = 96,
    batch: int = 2,
    classes: int = 8,
    device: str = "cpu",
    amp: bool = False,
    amp_dtype: str | None = None,
    steps: int = 5,
    reference: bool = False,
    repeat: int = 1,
    model: bool = True,
    json_path: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the benchmark, print every run's figures, their median and worst, optionally write them as JSON.

    Args:
        backbone: one of :data:`BACKBONES`.
        size: edge of the cubic input patch.
        batch: batch size.
        classes: number of classes.
        device: ``cpu`` or ``cuda``.
        amp: train under autocast as the bundles do (see ``amp_dtype``).
        amp_dtype: ``float16`` (with a GradScaler) or ``bfloat16`` (without); implies ``amp``. By default
            bfloat16 where the device computes it, else float16.
        steps: timed steps per variant (after one warm-up step).
        reference: full-resolution heads and the term-by-term loss instead of the bundles' blockwise one.
        repeat: whole measurements, each in a fresh process when more than one.
        model: add the bytes-moved model and its predictions.
        json_path: also write the results to this JSON file (``--json`` on the command line).

    Returns:
        ``setup``, ``device``, ``torch``, ``runs`` (each run's host facts, times, memory and the ratios of
        :data:`RATIOS`), ``median`` and ``worst`` of the ratios, and with ``model`` the ``model``.

    Raises:
        ValueError: an unknown backbone or AMP dtype, or fewer than one repeat.
        TypeError: an unknown option.
    """
    json_path = kwargs.pop("json", json_path)
    if kwargs:
        raise TypeError(f"Unknown options: {sorted(kwargs)}")
    amp, reference, model = as_flag(amp, "--amp"), as_flag(reference, "--reference"), as_flag(model, "--model")
    if backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone '{backbone}'; choose one of {sorted(BACKBONES)}.")
    if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
        raise ValueError(f"Unknown --amp_dtype '{amp_dtype}'; choose one of {sorted(AMP_DTYPES)}.")
    if repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {repeat}.")
    torch_device = torch.device(device)
    if amp or amp_dtype is not None:
        amp_dtype = amp_dtype or default_amp_dtype(torch_device)
    setup = Setup(backbone, size, batch, classes, amp_dtype, reference)
    if repeat == 1:
        runs = [measure_run(setup, torch_device, steps)]
    else:
        runs = [_run_in_subprocess(setup, device, steps) for _ in range(repeat)]
    results: dict[str, Any] = {
        "setup": asdict(setup),
        "device": torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "runs": runs,
    }
    if model:
        counts = traffic_model(setup)
        for run in runs:
            basic, dsd = counts["host_basic"], counts["host_dsd"]
            bandwidth, basic_s = run["copy_bandwidth_gbps"] * 1e9, run["step_s_basic"]
            run["predicted_step_ratio_dsd_bytes"] = host_ratio(basic, dsd, bandwidth, basic_s)
            latency = run["operator_latency_us"] * 1e-6
            run["predicted_step_ratio_dsd_bytes_operators"] = host_ratio(basic, dsd, bandwidth, basic_s, latency)
        gpu = {}
        for spec in GPUS:
            basic_s, dsd_s = (gpu_step_seconds(counts[f"gpu_{v}"], spec) for v in ("basic", "dsd"))
            flops_only_s = counts["gpu_basic"].flops / spec.bf16_flops
            gpu[spec.name] = {
                "basic_ms": 1e3 * basic_s,
                "dsd_ms": 1e3 * dsd_s,
                "ratio": dsd_s / basic_s,
                "basic_flops_only_ms": 1e3 * flops_only_s,
                "ratio_flops_only": 1 + (dsd_s - basic_s) / flops_only_s,
            }
        results["model"] = {"counts": {k: v.summary() for k, v in counts.items()}, "gpu": gpu}
    results["median"], results["worst"] = _summary(runs)
    _print_results(results)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


def main(argv: list[str] | None = None) -> None:
    """``dsd-bench``: :func:`benchmark` from the command line."""
    run_command(benchmark, argv, name="dsd-bench")


if __name__ == "__main__":
    main()
