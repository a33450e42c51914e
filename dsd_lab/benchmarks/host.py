"""The facts of a host that bound a memory-bound kernel: processor, threads, memory bandwidth, operator latency."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

__all__ = ["copy_bandwidth", "host_facts", "operator_latency", "processor_name"]


def processor_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name as the kernel reports it, else what :mod:`platform` knows."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def copy_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 7) -> float:
    """Bytes per second of a stream-like copy (``dst.copy_(src)``), reads and writes counted, median of repeats.

    The arrays are far larger than a CPU's last-level cache, so the copy runs at the speed of memory, with
    the threads PyTorch uses for its own kernels. The median, not the best, is taken: on a shared host it
    is the bandwidth the benchmark's other measurements had.

    Args:
        device: where to copy.
        megabytes: size of each of the two arrays.
        repeats: timed copies after one warm-up.
    """
    source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    times = []
    for repeat in range(repeats + 1):
        _synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        _synchronize(device)
        if repeat:  # the first copy also faults the target's pages in
            times.append(time.perf_counter() - start)
    return 2 * source.numel() * source.element_size() / statistics.median(times)


def operator_latency(device: torch.device, elements: int = 1 << 16, repeats: int = 200) -> float:
    """Seconds of one small elementwise operator, median of repeats: what every operator costs at least.

    ``elements`` is above PyTorch's grain for splitting an operator over its threads, so the operator runs
    on all of them: on a quiet host this is the dispatch and thread start-up, a few microseconds; on a host
    whose cores are shared with other processes, it is the wait for the last of the threads to be
    scheduled, up to a time slice.
    """
    source = torch.ones(elements, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        torch.add(source, 1.0, out=target)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_facts(device: torch.device) -> dict[str, str | int | float]:
    """The processor (and GPU), the intra-op threads, the copy bandwidth in GB/s and the operator latency in µs."""
    facts: dict[str, str | int | float] = {"cpu": processor_name(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    facts["copy_bandwidth_gbps"] = copy_bandwidth(device) / 1e9
    facts["operator_latency_us"] = operator_latency(device) * 1e6
    return facts
