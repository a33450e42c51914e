"""``dsd-figures``: the segmentation comparison and the training curves from the command line.

Usage::

    dsd-figures segmentation --image ct_train_1001_image.nii.gz --label ct_train_1001_label.nii.gz \\
        --predictions "{'Basic': 'basic/predictions/ct_train_1001_image_seg.nii.gz', 'DSD': 'dsd/...'}" \\
        --out fig.png [--dataset mmwhs|brats] [--slice_index K] [--channel C] [--window "[-175,250]"]
    dsd-figures curves LOG_DIR --out curves.png [--iterations_per_epoch N] [--smoothing 0.6]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dsd_lab.cli import run_command
from dsd_lab.figures.curves import training_curves
from dsd_lab.figures.segmentation import dataset_label_names, segmentation_figure

__all__ = ["main"]


def _segmentation_cli(
    image: str,
    label: str,
    predictions: Mapping[str, str],
    out: str,
    dataset: str = "mmwhs",
    slice_index: int | None = None,
    channel: int = 0,
    window: Sequence[float] | None = None,
) -> None:
    """Write a segmentation comparison PNG (see ``segmentation_figure``); ``--dataset`` picks the label names."""
    if isinstance(predictions, str):
        raise ValueError(
            f"--predictions must be a mapping of model name to file, e.g. \"{{'Basic': 'a.nii.gz', 'DSD': "
            f"'b.nii.gz'}}\"; got the string {predictions!r}."
        )
    path, index = segmentation_figure(
        image, label, predictions, out, dataset_label_names(dataset), slice_index, channel, window
    )
    print(f"Wrote {path} (axial slice {index})")


def _curves_cli(log_dir: str, out: str, iterations_per_epoch: int | None = None, smoothing: float = 0.6) -> None:
    """Write a training-curves PNG from a run's TensorBoard folder (see ``training_curves``)."""
    print(f"Wrote {training_curves(log_dir, out, iterations_per_epoch, smoothing)}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: ``segmentation`` and ``curves`` sub-commands.

    Args:
        argv: the arguments; ``None`` reads ``sys.argv``.
    """
    run_command({"segmentation": _segmentation_cli, "curves": _curves_cli}, argv, name="dsd-figures")


if __name__ == "__main__":
    main()
