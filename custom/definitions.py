"""What the project names, in one torch-free home: each dataset's label codes and class names, the ablation rows
and the loss terms.

The runtime's readers, transforms and losses and the lab's tables and figures all read these; nothing here imports
MONAI or PyTorch, so that light command-line tools (figures) can use them without paying for those imports.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ABLATIONS",
    "ABLATION_NAMES",
    "BRATS_CLASS_NAMES",
    "BRATS_LABEL_CODES",
    "BRATS_LABEL_NAMES",
    "BRATS_MODALITIES",
    "BRATS_REGIONS",
    "DISPLAY_NAMES",
    "DMD_NETWORKS",
    "DMD_ROWS",
    "HEAD_DICE_PREFIX",
    "HIPPOCAMPUS_CLASS_NAMES",
    "HIPPOCAMPUS_LABEL_CODES",
    "MMWHS_BACKGROUND_CODES",
    "MMWHS_CLASS_NAMES",
    "MMWHS_LABEL_CODES",
    "MSD_DATASET_FILE",
    "TERM_NAMES",
    "ablation_weights",
    "canonical_ablation",
    "emkd_term_names",
    "dmd_term_names",
]

#: MM-WHS label code -> class index.
MMWHS_LABEL_CODES: dict[int, int] = {205: 1, 420: 2, 500: 3, 550: 4, 600: 5, 820: 6, 850: 7}
#: Codes mapped to background; 421 is a stray code found in a few of the released label files.
MMWHS_BACKGROUND_CODES: tuple[int, ...] = (0, 421)
#: Class names indexed by class index.
MMWHS_CLASS_NAMES: tuple[str, ...] = (
    "background",
    "lv_myocardium",
    "la_blood_cavity",
    "lv_blood_cavity",
    "ra_blood_cavity",
    "rv_blood_cavity",
    "ascending_aorta",
    "pulmonary_artery",
)

#: The description file at the root of every MSD task folder.
MSD_DATASET_FILE = "dataset.json"

#: Input channels of MSD Task01 (BraTS), in file order.
BRATS_MODALITIES: tuple[str, ...] = ("FLAIR", "T1w", "t1gd", "T2w")
#: MSD Task01 label names by label value. These are MSD's codes, not BraTS 2018's (1, 2, 4).
BRATS_LABEL_NAMES: tuple[str, ...] = ("background", "edema", "non-enhancing tumour", "enhancing tumour")
#: MSD Task01 label names by label value as they head metric files and logs (:data:`BRATS_LABEL_NAMES` for figures).
BRATS_CLASS_NAMES: tuple[str, ...] = ("background", "edema", "non_enhancing_tumour", "enhancing_tumour")
#: MSD Task01 label value -> class index; the codes are already consecutive, the map only validates them.
BRATS_LABEL_CODES: dict[int, int] = {1: 1, 2: 2, 3: 3}
#: The evaluated tumour regions as sets of MSD labels: whole tumour, tumour core, enhancing tumour.
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}

#: MSD Task04 (hippocampus) label value -> class index; the codes are already consecutive, the map only validates them.
HIPPOCAMPUS_LABEL_CODES: dict[int, int] = {1: 1, 2: 2}
#: MSD Task04 class names by label value: the hippocampus head (anterior) and body with tail (posterior).
HIPPOCAMPUS_CLASS_NAMES: tuple[str, ...] = ("background", "anterior", "posterior")

#: Display names of the foreground label codes as stored in each dataset's label and prediction files, for figures.
DISPLAY_NAMES: dict[str, dict[int, str]] = {
    "mmwhs": {
        205: "LV myocardium",
        420: "LA blood cavity",
        500: "LV blood cavity",
        550: "RA blood cavity",
        600: "RV blood cavity",
        820: "ascending aorta",
        850: "pulmonary artery",
    },
    "brats": {code: BRATS_LABEL_NAMES[code] for code in BRATS_LABEL_CODES},
    "hippocampus": {code: HIPPOCAMPUS_CLASS_NAMES[code] for code in HIPPOCAMPUS_LABEL_CODES},
}

#: Loss weights of the paper's ablation rows (Table 1): plain backbone, deep supervision,
#: self-distillation of decoders only, of encoders only, and both.
ABLATIONS: dict[str, dict[str, float]] = {
    "basic": {"eta": 0.0, "alpha1": 0.0, "alpha2": 0.0},
    "ds": {"eta": 1.0, "alpha1": 0.0, "alpha2": 0.0},
    "sdd": {"eta": 1.0, "alpha1": 0.0, "alpha2": 1.0},
    "sde": {"eta": 1.0, "alpha1": 1.0, "alpha2": 0.0},
    "dsd": {"eta": 1.0, "alpha1": 1.0, "alpha2": 1.0},
}
#: The rows' names as the paper writes them, in its order.
ABLATION_NAMES: tuple[str, ...] = ("Basic", "DS", "SDD", "SDE", "DSD")

#: Names of the terms of the DSD loss, as :class:`custom.losses.DSDLoss` keeps them and the bundles log them; the last,
#: deep supervision of the encoder heads (``eta_encoder``), goes beyond the paper and is 0 unless asked for.
TERM_NAMES: tuple[str, ...] = (
    "total",
    "main_dice_ce",
    "deep_supervision",
    "kl_encoder",
    "kl_decoder",
    "encoder_supervision",
)

#: Validation metrics of the auxiliary heads (``--score_heads true``) are named ``<prefix>/<head>``, e.g.
#: ``val_head_dice/E1_encoder1``.
HEAD_DICE_PREFIX = "val_head_dice"

#: The two networks of Deep Mutual Distillation, as :class:`custom.dmd.MutualPair` names them; net1 is deployed.
DMD_NETWORKS: tuple[str, str] = ("net1", "net2")
#: Rows of the semi-supervised study: name -> (the supervised loss's ablation row, whether two networks distil mutually).
DMD_ROWS: dict[str, tuple[str, bool]] = {
    "Basic": ("Basic", False),
    "DSD": ("DSD", False),
    "DMD": ("Basic", True),
    "DMD+DSD": ("DSD", True),
}


def ablation_weights(name: str) -> dict[str, float]:
    """Loss weights ``{"eta", "alpha1", "alpha2"}`` of one ablation row, case-insensitive.

    Args:
        name: one of Basic, DS, SDD, SDE, DSD.

    Raises:
        ValueError: an unknown ablation name.
    """
    key = name.lower()
    if key not in ABLATIONS:
        raise ValueError(f"Unknown ablation '{name}'; choose one of {[k.upper() for k in ABLATIONS]}.")
    return dict(ABLATIONS[key])


def canonical_ablation(name: str) -> str:
    """The paper's spelling of an ablation row name given in any case (``"dsd"`` -> ``"DSD"``).

    Raises:
        ValueError: an unknown ablation name.
    """
    ablation_weights(name)
    return next(canonical for canonical in ABLATION_NAMES if canonical.lower() == name.lower())


def emkd_term_names(pairs: Sequence[str]) -> tuple[str, ...]:
    """Names of the terms of the EMKD loss (:class:`custom.emkd.EMKDLoss`), as it keeps them and the bundles log them.

    The student's segmentation term keeps the DSD loss's name, so that curves of both strategies line up.

    Args:
        pairs: the names of the matched feature pairs, e.g. ``("low", "high")``.

    Returns:
        ``("total", "main_dice_ce", "pmd", "imd_<pair>"..., "rad_<pair>"...)``.
    """
    return ("total", TERM_NAMES[1], "pmd", *(f"imd_{pair}" for pair in pairs), *(f"rad_{pair}" for pair in pairs))
def dmd_term_names(supervised_terms: tuple[str, ...] = TERM_NAMES) -> tuple[str, ...]:
    """Names of the terms of :class:`custom.dmd.MutualDistillationLoss`, as the bundles log them.

    The total, the unweighted mutual Dice, its current weight, then each network's supervised terms prefixed with
    the network's name (``net1_main_dice_ce``, ...).

    Args:
        supervised_terms: the term names of the supervised loss of one network, DSD's by default.
    """
    own = tuple(f"{network}_{term}" for network in DMD_NETWORKS for term in supervised_terms)
    return ("total", "mutual_dice", "mutual_weight", *own)
