"""Parameter overhead of the DSD heads, for each bundle and backbone.

Usage::

    dsd-params [--bundles_dir bundles]

Every ``bundles/*/configs/train.json`` gives one row for its own network and one for each
``configs/backbone_*.json`` merged after it, exactly as a training run merges them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from dsd_lab.bundles import BUNDLES_DIR
from dsd_lab.cli import run_command

__all__ = ["ParamRow", "bundle_configs", "count_parameters", "format_table", "head_parameter_table", "main"]


@dataclass(frozen=True)
class ParamRow:
    """Parameter counts of one backbone of one bundle.

    Attributes:
        bundle: bundle folder name.
        backbone: class name of the bundle's ``network_def``.
        config: the backbone override file, or ``train.json`` for the bundle's own network.
        backbone_params: parameters of the deployed backbone.
        head_params: parameters of the training-only DSD heads (a shared head counted once).
    """

    bundle: str
    backbone: str
    config: str
    backbone_params: int
    head_params: int

    @property
    def overhead_percent(self) -> float:
        """Head parameters as a percentage of backbone parameters."""
        return 100.0 * self.head_params / self.backbone_params


def bundle_configs(bundles_dir: str | os.PathLike) -> Iterator[tuple[str, list[Path]]]:
    """The config files of every bundle and backbone, in the order a training run merges them.

    Args:
        bundles_dir: folder holding the bundles.

    Yields:
        ``(bundle name, [train.json] or [train.json, backbone_<name>.json])``, sorted by bundle, then by file.
    """
    for train in sorted(Path(bundles_dir).glob("*/configs/train.json")):
        yield train.parent.parent.name, [train]
        for override in sorted(train.parent.glob("backbone_*.json")):
            yield train.parent.parent.name, [train, override]


def count_parameters(config_files: Sequence[str | os.PathLike]) -> tuple[str, int, int]:
    """Build a bundle's ``dsd_network`` at its real ROI size and count backbone and head parameters.

    The probe pass that sizes the heads runs on PyTorch's ``meta`` device, which computes shapes
    without arithmetic, so full-size backbones at full ROI size cost well under a second each; a
    backbone whose forward pass cannot run there is probed on the CPU instead.

    Args:
        config_files: bundle config files, merged in order; they must define ``network_def`` and
            ``dsd_network`` (a :class:`~custom.networks.DSDNet` wrapping ``@network_def``).

    Returns:
        ``(backbone class name, backbone parameters, head parameters)``.
    """
    try:
        return _count(config_files, torch.device("meta"))
    except (RuntimeError, NotImplementedError):
        return _count(config_files, torch.device("cpu"))


def _count(config_files: Sequence[str | os.PathLike], device: torch.device) -> tuple[str, int, int]:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    backbone: nn.Module = parser.get_parsed_content("network_def").to(device)
    # "dsd_network" references "@network_def", which the parser resolves to the instance moved above
    wrapper = parser.get_parsed_content("dsd_network")
    if wrapper.backbone is not backbone:
        raise ValueError(f"'dsd_network' of {config_files} does not wrap '@network_def'.")
    return type(backbone).__name__, _n_params(backbone), _n_params(wrapper.heads)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def format_table(rows: Sequence[ParamRow]) -> str:
    """Markdown table of the rows: bundle, backbone, config, parameter counts and overhead."""
    lines = [
        "| bundle | backbone | config | backbone params | DSD head params | overhead |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.bundle} | {r.backbone} | {r.config} | {r.backbone_params:,} | {r.head_params:,} "
            f"| +{r.overhead_percent:.3f} % |"
        )
    return "\n".join(lines)


def head_parameter_table(bundles_dir: str | None = None) -> list[ParamRow]:
    """Print the parameter overhead table of every bundle and backbone override.

    Args:
        bundles_dir: folder holding the bundles; defaults to this repository's ``bundles``.

    Returns:
        One row per bundle and backbone, also printed as a table.

    Raises:
        FileNotFoundError: no ``*/configs/train.json`` under ``bundles_dir``.
    """
    root = Path(bundles_dir) if bundles_dir is not None else BUNDLES_DIR
    rows = []
    for bundle, files in bundle_configs(root):
        name, backbone_params, head_params = count_parameters(files)
        rows.append(ParamRow(bundle, name, files[-1].name, backbone_params, head_params))
    if not rows:
        raise FileNotFoundError(f"No bundle with configs/train.json under {root}.")
    print(format_table(rows))
    return rows


def main(argv: list[str] | None = None) -> None:
    """``dsd-params``: :func:`head_parameter_table` from the command line."""
    run_command(head_parameter_table, argv, name="dsd-params")


if __name__ == "__main__":
    main()
