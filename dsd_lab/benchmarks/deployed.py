"""What a trained run deploys: its network as the bundle's inference.json builds it, the parameter count, the size of
``model.pt`` on disk, and the sliding-window inference time per volume.

The network, the pre-processing, the data list and the sliding-window inferer are those of the bundle's
``inference.json`` (with override files such as ``student_dynunet.json``), so that the time is that of a user's
inference command, without reading and writing files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dsd_lab.bundles import INFERENCE_CONFIG, bundle_config

__all__ = ["deployed_facts", "inference_parser", "preprocessed_volumes", "seconds_per_volume"]


def inference_parser(bundle_dir: str | os.PathLike, config_files: Sequence[str], overrides: Mapping[str, Any]):
    """The bundle's inference config with ``config_files`` merged after it and the run's overrides set.

    Overrides of ids that inference does not define (training settings such as ``max_epochs``) are left out.

    Args:
        bundle_dir: the bundle root.
        config_files: override files of the bundle's ``configs/`` folder, e.g. ``["student_dynunet.json"]``.
        overrides: the run's config ids and values.

    Returns:
        An unparsed ``monai.bundle.ConfigParser``.
    """
    parser = bundle_config(bundle_dir, [INFERENCE_CONFIG, *config_files])
    parser["bundle_root"] = str(bundle_dir)
    for config_id, value in overrides.items():
        if config_id.split("#")[0] in parser:
            parser[config_id] = value
    return parser


def preprocessed_volumes(parser, cases: int) -> list[torch.Tensor]:
    """The first ``cases`` images of the inference data list, pre-processed as inference does, as ``(1, C, ...)``.

    Raises:
        ValueError: the data list is empty.
    """
    datalist = parser.get_parsed_content("datalist")[:cases]
    if not datalist:
        raise ValueError(f"The inference data list of {parser['dataset_dir']} holds no image to time.")
    preprocessing = parser.get_parsed_content("preprocessing")
    return [torch.as_tensor(preprocessing(dict(item))["image"])[None] for item in datalist]


@torch.no_grad()
def seconds_per_volume(
    network: torch.nn.Module, inferer: Any, volumes: Sequence[torch.Tensor], device: torch.device, repeats: int = 3
) -> float:
    """Sliding-window inference time per volume: the worst, over ``repeats`` passes, of a pass's mean.

    One untimed volume first takes the first-call costs.

    Args:
        network: the deployed network.
        inferer: the bundle's inferer, e.g. MONAI's ``SlidingWindowInferer``.
        volumes: pre-processed ``(1, C, ...)`` volumes.
        device: where to run.
        repeats: timed passes over all volumes.
    """
    network = network.to(device).eval()

    def run(volume: torch.Tensor) -> None:
        inferer(volume.to(device), network)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run(volumes[0])
    worst = 0.0
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        for volume in volumes:
            run(volume)
        worst = max(worst, (time.perf_counter() - start) / len(volumes))
    return worst


def deployed_facts(
    bundle_dir: str | os.PathLike,
    config_files: Sequence[str],
    overrides: Mapping[str, Any],
    checkpoint: str | os.PathLike,
    volumes: Sequence[torch.Tensor] | None = None,
    repeats: int = 3,
) -> dict[str, float]:
    """Parameters, size on disk and inference time per volume of a run's ``model.pt``.

    Args:
        bundle_dir: the bundle root.
        config_files: override files merged after inference.json, as the run deploys.
        overrides: the run's config ids and values.
        checkpoint: the run's ``model.pt``.
        volumes: pre-processed volumes to time (:func:`preprocessed_volumes`); ``None`` times nothing.
        repeats: timed passes (:func:`seconds_per_volume`).

    Returns:
        ``{"parameters", "size_mb", "cpu_s_per_volume"}``, and ``"gpu_s_per_volume"`` where CUDA is available;
        no times without ``volumes``.
    """
    parser = inference_parser(bundle_dir, config_files, overrides)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True), strict=True)
    facts: dict[str, float] = {
        "parameters": sum(p.numel() for p in network.parameters()),
        "size_mb": round(Path(checkpoint).stat().st_size / 2**20, 2),
    }
    if volumes:
        inferer = parser.get_parsed_content("inferer")
        devices = {"cpu": torch.device("cpu")}
        if torch.cuda.is_available():
            devices["gpu"] = torch.device("cuda", 0)
        for name, device in devices.items():
            facts[f"{name}_s_per_volume"] = round(seconds_per_volume(network, inferer, volumes, device, repeats), 4)
    return facts
