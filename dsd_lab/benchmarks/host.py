"""The facts of a host that bound a memory-bound kernel: its processor, its threads and its memory bandwidth."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

__all__ = ["copy_bandwidth", "host_facts", "processor_name"]


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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_facts(device: torch.device) -> dict[str, str | int | float]:
    """The processor (and GPU), the intra-op threads and the copy bandwidth in GB/s, measured now."""
    facts: dict[str, str | int | float] = {"cpu": processor_name(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    facts["copy_bandwidth_gbps"] = copy_bandwidth(device) / 1e9
    return facts
