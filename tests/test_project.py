"""Project-level promises: the README's commands, CI, packaging and config formatting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(ROOT.glob("bundles/*/configs/*.json"))


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md must open with a bash block of commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_demo_and_test_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("dsd-demo")
    assert commands[1].endswith("python -m pytest")
    assert all(c.startswith("python -m pip install -e ") for c in commands)


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_commands()[1] in ci_lines


def test_parallel_test_workers_share_the_cores_between_them():
    from tests.conftest import threads_per_worker, xdist_workers

    if xdist_workers() == 1:
        pytest.skip("the suite runs in one process (-n 0)")
    threads = threads_per_worker()
    # the commands a test spawns read OMP_NUM_THREADS; the worker's own tensors use torch's setting
    assert os.environ["OMP_NUM_THREADS"] == str(threads)
    assert torch.get_num_threads() == threads


def test_torch_requirement_is_bounded():
    # An open-ended torch pulls a multi-GB build on machines that have a local CPU build.
    requirement = next(d for d in _dependencies() if d.startswith("torch"))
    assert "<" in requirement


def _dependencies() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


@pytest.mark.parametrize("config_file", CONFIG_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_config_json_is_pretty_printed_with_four_spaces(config_file):
    text = config_file.read_text()
    assert text == json.dumps(json.loads(text), indent=4) + "\n"


def test_every_console_command_is_a_main_of_the_lab():
    tomllib = pytest.importorskip("tomllib")
    import importlib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"dsd-demo", "dsd-cv", "dsd-ablation", "dsd-report", "dsd-figures", "dsd-bench"} <= set(scripts)
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert name.startswith("dsd-") and module.startswith("dsd_lab.") and function == "main", name
        assert callable(getattr(importlib.import_module(module), function)), name


def test_package_import_is_lazy():
    # Package import must stay lazy so that small CLIs do not load every module.
    result = subprocess.run(
        [sys.executable, "-c", "import sys, custom; print('custom.networks' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "False"
