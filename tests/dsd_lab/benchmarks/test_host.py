"""Host facts for a memory-bound kernel: processor name and a stream-like copy bandwidth."""

from __future__ import annotations

import torch

from dsd_lab.benchmarks.host import copy_bandwidth, host_facts, operator_latency, processor_name


def test_processor_name_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Example CPU 9000 @ 3.0GHz\n")
    assert processor_name(cpuinfo) == "Example CPU 9000 @ 3.0GHz"
    assert processor_name(tmp_path / "missing")  # falls back to what the platform module knows


def test_copy_bandwidth_and_host_facts(monkeypatch):
    assert copy_bandwidth(torch.device("cpu"), megabytes=4, repeats=2) > 1e8
    assert 0 < operator_latency(torch.device("cpu"), repeats=3) < 1.0
    monkeypatch.setattr("dsd_lab.benchmarks.host.copy_bandwidth", lambda device: 12.5e9)
    monkeypatch.setattr("dsd_lab.benchmarks.host.operator_latency", lambda device: 4e-6)
    facts = host_facts(torch.device("cpu"))
    assert facts["operator_latency_us"] == 4.0
    assert facts["copy_bandwidth_gbps"] == 12.5 and facts["threads"] == torch.get_num_threads() and facts["cpu"]
