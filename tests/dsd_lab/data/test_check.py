"""``dsd-check-data``: every fault of a dataset found in one run, a summary of a clean one, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dsd_lab.data.check import check_dataset, main
from dsd_lab.data.synthetic_msd import make_brats, make_hippocampus
from tests.helpers import BRATS_BUNDLE, DATA_FAULTS, HIPPOCAMPUS_BUNDLE, MMWHS_BUNDLE, break_mmwhs_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for folder in folders for p in folder.rglob("*")}


def _table_rows(printed: str) -> set[tuple[str, str]]:
    """(file, fault) of each row of the printed table of problems."""
    rows = set()
    for line in printed.splitlines():
        file, _, rest = line.partition("  ")
        fault = rest.strip().split("  ")[0]
        if file.endswith(".nii.gz"):
            rows.add((file, fault))
    return rows


def test_every_fault_is_found_in_one_run_and_nothing_is_written(tmp_path, mmwhs_fault_source, capsys):
    data_dir = break_mmwhs_dataset(mmwhs_fault_source, tmp_path / "data", DATA_FAULTS)
    before = _snapshot(data_dir, MMWHS_BUNDLE)
    with pytest.raises(SystemExit) as exited:
        main([str(MMWHS_BUNDLE), "--dataset_dir", str(data_dir), "--progress", "false"])
    assert exited.value.code == 1
    printed = capsys.readouterr().out
    assert _table_rows(printed) == {(fault.file, fault.fault) for fault in DATA_FAULTS}
    assert "this volume has 2 channels; MM-WHS CT has 1" in printed
    assert "codes 123 (8 voxels)" in printed and "the dataset's median is" in printed
    assert printed.strip().splitlines()[-1].startswith("11 problem(s) and 2 warning(s) in ")
    assert _snapshot(data_dir, MMWHS_BUNDLE) == before


def test_a_clean_dataset_gets_a_summary_and_exit_code_0(mmwhs_fault_source, capsys):
    main([str(MMWHS_BUNDLE), "--dataset_dir", str(mmwhs_fault_source), "--progress", "false"])
    printed = capsys.readouterr().out
    assert printed.startswith("12 cases (12 labelled) in ")
    assert "spacing (mm)" in printed and "intensity" in printed
    assert printed.strip().endswith("dsd_unetr_mmwhs: the dataset can be used, no problems found.")
    label_table = printed.split("label code")[1].splitlines()[1:]
    codes = [line.split()[0] for line in label_table if line.strip()[:1].isdigit()]
    assert codes == ["0", "205", "420", "421", "500", "550", "600", "820", "850"]  # every code of the bundle


def _break_brats(data_dir: Path) -> set[tuple[str, str]]:
    description = json.loads((data_dir / "dataset.json").read_text())
    first, second = description["training"][:2]
    description["training"][0] = {"image": first["image"]}  # its label key dropped
    (data_dir / "dataset.json").write_text(json.dumps(description))
    image = (data_dir / second["image"]).resolve()
    nifti = nib.load(image)
    nib.save(nib.Nifti1Image(np.asarray(nifti.dataobj)[..., 0], nifti.affine), image)  # one channel of four
    return {("dataset.json", "listing"), (str(image.relative_to(data_dir)), "channels")}


@pytest.mark.parametrize(
    "bundle, make, break_dataset",
    [
        pytest.param(BRATS_BUNDLE, make_brats, None, id="brats"),
        pytest.param(HIPPOCAMPUS_BUNDLE, make_hippocampus, None, id="hippocampus"),
        pytest.param(BRATS_BUNDLE, make_brats, _break_brats, id="brats-faults"),
    ],
)
def test_msd_bundles_are_checked_by_their_own_reader(tmp_path, bundle, make, break_dataset):
    data_dir = tmp_path / "task"
    make(data_dir, cases=3, test_cases=1, shape=(24, 22, 20))
    expected = break_dataset(data_dir) if break_dataset else set()
    before = _snapshot(data_dir, bundle)
    report = check_dataset(bundle, data_dir, progress=False)
    found = {(str(Path(p.file).relative_to(data_dir)), p.fault) for p in report.problems}
    assert found == expected
    assert _snapshot(data_dir, bundle) == before  # the split file is training's to write, not the check's
    if not expected:
        assert len(report.cases) == 4 and len(report.images) == 4  # training and test images, each read
        assert set(report.code_cases) >= {0.0, 1.0, 2.0}
    else:
        message = next(p.detail for p in report.problems if p.fault == "listing")
        assert message == "entry 0 of its 'training' list has no 'label' key (its keys: ['image'])"
