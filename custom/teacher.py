"""A frozen teacher for teacher -> student distillation: built from its own bundle config, loaded with checks, run
beside the student by :class:`TeacherStudentNet`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from custom.networks import PRED_KEY, run_with_taps, tapped_module

__all__ = [
    "STUDENT_FEATURES_KEY",
    "STUDENT_RUN_FILES",
    "TEACHER_FEATURES_KEY",
    "TEACHER_PRED_KEY",
    "TeacherStudentNet",
    "first_state_mismatch",
    "load_teacher",
    "teacher_config",
]

#: Keys of the dictionary returned by :class:`TeacherStudentNet` in training mode, beside ``"pred"`` (the student's).
TEACHER_PRED_KEY, STUDENT_FEATURES_KEY, TEACHER_FEATURES_KEY = "teacher_pred", "student_features", "teacher_features"
#: The files that a bundle's training writes into its ``ckpt_dir``; a teacher checkpoint there would be overwritten.
STUDENT_RUN_FILES = ("model.pt", "model_final.pt", "resume.pt")


def teacher_config(
    bundle_root: str | os.PathLike, config_files: Sequence[str], overrides: Mapping[str, Any] | None = None
):
    """The teacher's own bundle config: the files it was trained with, merged in order, and the values it was trained
    with beyond their defaults.

    Args:
        bundle_root: the bundle root; file names are looked up in its ``configs/`` folder.
        config_files: names such as ``["train.json", "backbone_dynunet.json"]``, or paths of configs elsewhere.
        overrides: config ids and values set after merging, e.g. ``{"feature_size": 16}``.

    Returns:
        An unparsed ``monai.bundle.ConfigParser``; ``get_parsed_content("network_def")`` builds the teacher network.

    Raises:
        FileNotFoundError: a config file does not exist; the message names it.
    """
    from monai.bundle import ConfigParser

    configs = Path(bundle_root) / "configs"
    paths = [configs / name for name in config_files]  # an absolute name replaces the folder
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"teacher_configs: {', '.join(missing)} does not exist. Give the config files the teacher was trained "
            f"with as names in {configs} or as paths, e.g. --teacher_configs \"['train.json']\"."
        )
    parser = ConfigParser()
    parser.read_config([str(path) for path in paths])
    parser["bundle_root"] = str(bundle_root)
    for config_id, value in (overrides or {}).items():
        parser[config_id] = value
    return parser


def first_state_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, Any]) -> tuple[str, str, int] | None:
    """The first key in which a checkpoint does not fit a network, in the network's order.

    Args:
        expected: the network's ``state_dict()``.
        found: the checkpoint's state dict.

    Returns:
        ``None`` when every key is present with the network's shape and there is no other key; otherwise
        ``(key, what is wrong with it, number of differing keys)``.
    """
    problems: list[tuple[str, str]] = []
    for key, value in expected.items():
        if key not in found:
            problems.append((key, "missing from the file"))
        elif not isinstance(found[key], torch.Tensor):
            problems.append((key, f"a {type(found[key]).__name__} in the file, not a tensor"))
        elif found[key].shape != value.shape:
            problems.append((key, f"shape {list(found[key].shape)} in the file, {list(value.shape)} in the network"))
    problems += [(key, "in the file, not in the network") for key in found if key not in expected]
    return (*problems[0], len(problems)) if problems else None


def load_teacher(
    network: nn.Module, checkpoint: str | os.PathLike, student_ckpt_dir: str | os.PathLike | None = None
) -> nn.Module:
    """Load a trained teacher from its ``model.pt`` and freeze it: eval mode, no parameter requires a gradient.

    Every check runs before anything is trained or cached, and names the file.

    Args:
        network: the teacher network, as it was trained.
        checkpoint: the ``model.pt`` of its training run (the plain network's state dict).
        student_ckpt_dir: the student run's ``ckpt_dir``; a checkpoint there that the run would overwrite is refused.

    Returns:
        ``network``, loaded and frozen.

    Raises:
        FileNotFoundError: there is no ``checkpoint``.
        ValueError: the student run would overwrite the checkpoint, the file is no state dict, or it does not fit
            ``network`` (the message names the first mismatching key).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher_ckpt {path} does not exist. Give --teacher_ckpt the model.pt of a trained teacher run (a "
            "training writes it to its --ckpt_dir; the default teacher_ckpt is models/teacher/model.pt)."
        )
    if student_ckpt_dir is not None and path.resolve() in {
        (Path(student_ckpt_dir) / n).resolve() for n in STUDENT_RUN_FILES
    }:
        raise ValueError(
            f"teacher_ckpt {path} is in the student's ckpt_dir, where the student's training would overwrite it. "
            "Copy it elsewhere (e.g. models/teacher/model.pt) or give the student run another --ckpt_dir."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"teacher_ckpt {path} could not be read as a PyTorch checkpoint: {error}") from error
    if not isinstance(state, Mapping):
        raise ValueError(f"teacher_ckpt {path} holds a {type(state).__name__}, not a model.pt state dict.")
    mismatch = first_state_mismatch(network.state_dict(), state)
    if mismatch is not None:
        key, problem, count = mismatch
        raise ValueError(
            f"teacher_ckpt {path} does not fit the teacher network {type(network).__name__}: first mismatching key "
            f"'{key}' ({problem}; {count} key(s) differ). Build the teacher as it was trained: its config files in "
            "--teacher_configs, its other values (e.g. feature_size) in --teacher_overrides."
        )
    network.load_state_dict(state)
    return network.eval().requires_grad_(False)


class TeacherStudentNet(nn.Module):
    """A student trained beside a frozen teacher: the training network of teacher -> student distillation.

    In training mode the forward pass runs the teacher without gradients and returns
    ``{"pred": student logits, "teacher_pred": teacher logits, "student_features": {pair: map},
    "teacher_features": {pair: map}}``, the feature maps read by module name (:func:`~custom.networks.run_with_taps`)
    for each named pair of taps. In eval mode it is exactly ``student(x)``.

    The teacher is held outside the module tree: ``parameters()`` and ``state_dict()`` are the student's, so no
    optimizer, checkpoint or resume file built from this module ever holds the teacher. It follows the module's
    device and dtype moves (``.to()``), and stays in eval mode whatever mode the module is set to.

    Args:
        student: the network being trained.
        teacher: the trained teacher, frozen (see :func:`load_teacher`).
        student_taps: pair name -> student module name, e.g. ``{"low": "downsamples.0", "high": "bottleneck"}``.
        teacher_taps: pair name -> teacher module name, the same pair names.
        in_channels: image channels; with ``roi_size``, one probe pass checks that both networks run on a patch,
            reach their taps and predict the same number of classes.
        roi_size: the training patch size for the probe pass; ``None`` skips it.

    Raises:
        ValueError: the two tap mappings name different pairs, or the probe finds the networks incompatible.
        KeyError: a tap names no submodule; the message names the module and lists close matches.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        student_taps: Mapping[str, str],
        teacher_taps: Mapping[str, str],
        in_channels: int | None = None,
        roi_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if list(student_taps) != list(teacher_taps):
            raise ValueError(
                f"student_taps {dict(student_taps)} and teacher_taps {dict(teacher_taps)} must name the same pairs, "
                "in the same order."
            )
        for taps, network, role in ((student_taps, student, "student"), (teacher_taps, teacher, "teacher")):
            for tap in taps.values():
                tapped_module(network, tap, f"EMKD {role} tap")
        self.student = student
        object.__setattr__(self, "teacher", teacher.eval())  # outside the module tree: never trained or saved
        self.student_taps, self.teacher_taps = dict(student_taps), dict(teacher_taps)
        if roi_size is not None and in_channels is not None:
            self._probe(in_channels, roi_size)

    @torch.no_grad()
    def _probe(self, in_channels: int, roi_size: Sequence[int]) -> None:
        parameter = next(self.student.parameters(), None)
        x = torch.zeros(1, in_channels, *roi_size, device=parameter.device if parameter is not None else None)
        modes = {module: module.training for module in self.student.modules()}
        self.student.eval()  # keeps normalisation running statistics untouched
        try:
            student_pred, _ = run_with_taps(self.student, x, list(self.student_taps.values()), "EMKD student")
        finally:
            for module, training in modes.items():
                module.training = training
        teacher_pred, _ = run_with_taps(self.teacher.to(x.device), x, list(self.teacher_taps.values()), "EMKD teacher")
        if teacher_pred.shape != student_pred.shape:
            raise ValueError(
                f"The teacher predicts {tuple(teacher_pred.shape)} and the student {tuple(student_pred.shape)} for a "
                f"patch of {tuple(roi_size)}: they must predict the same classes at the same size."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, Any]:
        if not self.training:
            return self.student(x)
        with torch.no_grad():
            teacher_pred, teacher_maps = run_with_taps(
                self.teacher, x, list(self.teacher_taps.values()), "EMKD teacher"
            )
        student_pred, student_maps = run_with_taps(self.student, x, list(self.student_taps.values()), "EMKD student")
        return {
            PRED_KEY: student_pred,
            TEACHER_PRED_KEY: teacher_pred,
            STUDENT_FEATURES_KEY: {pair: student_maps[tap] for pair, tap in self.student_taps.items()},
            TEACHER_FEATURES_KEY: {pair: teacher_maps[tap] for pair, tap in self.teacher_taps.items()},
        }

    def train(self, mode: bool = True) -> TeacherStudentNet:
        super().train(mode)
        self.teacher.eval()
        return self

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any) -> TeacherStudentNet:
        # .to(), .cuda(), .half() and the like reach modules through _apply; carry the unregistered teacher along
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def extra_repr(self) -> str:
        teacher = type(self.teacher).__name__
        return f"teacher={teacher} (frozen), student_taps={self.student_taps}, teacher_taps={self.teacher_taps}"
