"""Teacher -> student distillation study (EMKD): a DSD teacher, the compact student trained with EMKD, the same student
trained alone, compared in one table.

Usage::

    dsd-emkd BUNDLE_DIR --dataset_dir DATA [--fold 0] [--work_dir emkd_runs] [--configs backbone_dynunet.json]
        [--timing_cases 3] [--timing_repeats 3] [--tracking mlflow] [--any_config_id value ...]

Three runs, each trained and evaluated through the bundle's configs in its own run folder (see
:mod:`dsd_lab.experiments.runs`; finished runs are skipped, interrupted ones resume):

- ``WORK_DIR/DSD/fold_<k>``: the teacher, ``train.json`` (plus ``--configs``) with the DSD loss; the same run folder
  as ``dsd-cv`` and ``dsd-ablation`` use, so a teacher they trained is reused;
- ``WORK_DIR/EMKD/fold_<k>``: the student of ``configs/strategy_emkd.json`` distilled from that teacher's ``model.pt``;
- ``WORK_DIR/Student/fold_<k>``: the same student, ``configs/student_dynunet.json``, trained alone (the Basic row:
  its own Dice-CE loss only).

(``WORK_DIR/<row>`` for a bundle with a fixed split.) The table, ``WORK_DIR/emkd[_fold<k>].csv`` and ``.md``, gives
each deployed model's parameters, the size of its ``model.pt``, its sliding-window inference time per volume on the
CPU (and on a GPU where one is available; the worst of ``timing_repeats`` passes over the first ``timing_cases``
images of the bundle's inference data list), and Dice and HD95 per class, mean ± std over the evaluated cases.
Any other ``--config_id value`` goes to every run, e.g. ``--student_filters [16,32,64,128,256]`` or
``--emkd_rad_weight 0``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dsd_lab.benchmarks.deployed import deployed_facts, inference_parser, preprocessed_volumes
from dsd_lab.bundles import TRAIN_CONFIG, bundle_has_folds
from dsd_lab.cli import run_command
from dsd_lab.experiments.runs import run_experiment
from dsd_lab.experiments.study import as_list, experiment_overrides, study_run_dir, write_study_table
from dsd_lab.experiments.tracking import tracking_settings

__all__ = ["MODELS", "STRATEGY_CONFIG", "STUDENT_CONFIG", "distillation_study", "main"]

logger = logging.getLogger(__name__)

STRATEGY_CONFIG = "strategy_emkd.json"
STUDENT_CONFIG = "student_dynunet.json"
#: Table row -> (run folder name, ablation row or ``None``): the teacher, the distilled student, the student alone.
MODELS: dict[str, tuple[str, str | None]] = {
    "Teacher (DSD)": ("DSD", "DSD"),
    "Student + EMKD": ("EMKD", None),
    "Student alone": ("Student", "Basic"),
}


def _column_names(facts: dict[str, float]) -> dict[str, Any]:
    names = {
        "parameters": "parameters",
        "size_mb": "model.pt (MB)",
        "cpu_s_per_volume": "CPU s/volume",
        "gpu_s_per_volume": "GPU s/volume",
    }
    return {names[key]: value for key, value in facts.items()}


def distillation_study(
    bundle_dir: str,
    dataset_dir: str,
    fold: int = 0,
    work_dir: str | None = None,
    configs: Any = (),
    timing_cases: int = 3,
    timing_repeats: int = 3,
    tracking: str | None = None,
    **overrides: Any,
) -> str:
    """Train and evaluate the teacher, the student with EMKD and the student alone, then write the table.

    Args:
        bundle_dir: the bundle root.
        dataset_dir: the dataset, as the bundle's ``--dataset_dir``.
        fold: the cross-validation fold; ignored by bundles with a fixed split.
        work_dir: where the runs and the table go; ``emkd_<bundle name>`` by default.
        configs: config files of the teacher merged after train.json, e.g. ``backbone_dynunet.json``.
        timing_cases: images of the inference data list that are timed; 0 times nothing.
        timing_repeats: timed passes over them; the worst pass is reported.
        tracking: ``"mlflow"`` logs every training run to ``WORK_DIR/mlruns.db``.
        overrides: any other config id and value, passed to every run (and to the teacher's network config).

    Returns:
        The Markdown table, also printed.

    Raises:
        ValueError: ``--ablation`` or a ``--teacher_*`` setting among the overrides: the study sets them itself.
    """
    reserved = sorted({"ablation", "teacher_ckpt", "teacher_configs", "teacher_overrides"} & set(overrides))
    if reserved:
        raise ValueError(f"--{', --'.join(reserved)}: the study sets these itself; choose the teacher with --configs.")
    bundle = Path(bundle_dir)
    run_fold = int(fold) if bundle_has_folds(bundle) else None
    work = Path(work_dir or f"emkd_{bundle.resolve().name}")
    teacher_configs = as_list(configs)
    teacher_dir = study_run_dir(work, MODELS["Teacher (DSD)"][0], run_fold)
    distill_settings = {
        "teacher_ckpt": str((teacher_dir / "models" / "model.pt").resolve()),
        "teacher_configs": [TRAIN_CONFIG, *teacher_configs],
        "teacher_overrides": dict(overrides),
    }
    plans = {  # row -> (run settings, config files of training, of inference)
        "Teacher (DSD)": (overrides, teacher_configs, teacher_configs),
        "Student + EMKD": ({**overrides, **distill_settings}, [STRATEGY_CONFIG], [STUDENT_CONFIG]),
        "Student alone": (overrides, [STUDENT_CONFIG], [STUDENT_CONFIG]),
    }
    results, runs = {}, {}
    for position, (name, (settings, train_files, _)) in enumerate(plans.items(), 1):
        row, ablation = MODELS[name]
        run_dir = study_run_dir(work, row, run_fold)
        logger.info("EMKD study: %s (%d of %d) in %s", name, position, len(plans), run_dir)
        run_overrides = experiment_overrides(dataset_dir, ablation, run_fold, **settings)
        run_tracking = tracking_settings(tracking, bundle, work, run_dir.relative_to(work).as_posix())
        results[name] = run_experiment(bundle, run_dir, run_overrides, train_files, tracking=run_tracking)
        runs[name] = (run_dir, run_overrides)

    volumes = None
    if timing_cases > 0:
        teacher_overrides = runs["Teacher (DSD)"][1]
        volumes = preprocessed_volumes(inference_parser(bundle, teacher_configs, teacher_overrides), int(timing_cases))
    facts = {
        name: _column_names(
            deployed_facts(
                bundle, plans[name][2], run_overrides, run_dir / "models" / "model.pt", volumes, timing_repeats
            )
        )
        for name, (run_dir, run_overrides) in runs.items()
    }
    timed = f"; times: worst of {timing_repeats} passes over {len(volumes)} volume(s)" if volumes else ""
    title = f"Teacher -> student distillation on {bundle.resolve().name}"
    return write_study_table(results, work, "emkd", run_fold, title, name_column="model", settings=facts, detail=timed)


def main(argv: list[str] | None = None) -> None:
    """``dsd-emkd``: :func:`distillation_study` from the command line."""
    run_command(distillation_study, argv, name="dsd-emkd")


if __name__ == "__main__":
    main()
