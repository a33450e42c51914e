from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from custom.errors import DataError, collecting_problems
from custom.msd import (
    HIPPOCAMPUS_SPLIT,
    load_msd_datalist,
    msd_cases,
    paper_split,
    paper_split_datalists,
    split_sizes,
)


def _save(data: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0])), path)


def _write_task(root: Path, cases: int, channels: int = 4, shuffled: bool = True) -> Path:
    """A tiny MSD Task01 folder: only the headers matter for the code under test."""
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    names = [f"BRATS_{i:03d}.nii.gz" for i in range(1, cases + 1)]
    for name in names:
        _save(np.zeros((4, 5, 3, channels), np.float32), root / "imagesTr" / name)
        _save(np.zeros((4, 5, 3), np.uint8), root / "labelsTr" / name)
        (root / "imagesTr" / f"._{name}").write_bytes(b"\x00\x05\x16\x07 not an image")
    if shuffled:
        names = [names[i] for i in np.random.default_rng(7).permutation(len(names))]
    training = [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in names]
    (root / "dataset.json").write_text(json.dumps({"name": "BRATS", "training": training, "test": []}))
    return root


@pytest.mark.parametrize(
    "num_cases, sizes",
    [(484, (388, 72, 24)), (100, (80, 15, 5)), (20, (16, 3, 1)), (8, (6, 1, 1)), (4, (2, 1, 1)), (3, (1, 1, 1))],
)
def test_split_sizes_follow_the_paper_proportionally(num_cases, sizes):
    assert split_sizes(num_cases) == sizes


def test_split_sizes_need_three_cases():
    with pytest.raises(ValueError, match="at least 3"):
        split_sizes(2)


def test_paper_split_tests_on_the_last_sorted_cases_and_shuffles_the_rest():
    names = [f"BRATS_{i:03d}.nii.gz" for i in range(1, 485)]
    cases = [{"image": f"/d/imagesTr/{name}", "label": f"/d/labelsTr/{name}"} for name in names]
    unsorted = [cases[i] for i in np.random.default_rng(1).permutation(len(cases))]
    split = paper_split(unsorted, seed=0)
    assert split["test"] == cases[-24:]
    assert [len(split[k]) for k in ("training", "validation")] == [388, 72]
    names = [c["image"] for c in split["training"] + split["validation"]]
    assert sorted(names) == [c["image"] for c in cases[:460]]
    assert paper_split(cases, seed=0) == split  # depends on the seed, not on the input order
    other = paper_split(cases, seed=1)
    assert other["test"] == split["test"] and other["validation"] != split["validation"]


def test_numbers_sort_as_numbers():
    cases = [{"image": f"case_{i}.nii.gz"} for i in (9, 10, 100, 2, 1)]
    assert [c["image"] for c in paper_split(cases)["test"]] == ["case_100.nii.gz"]


def test_load_reads_dataset_json_skips_junk_and_checks_headers(tmp_path):
    root = _write_task(tmp_path / "Task01_BrainTumour", cases=3)
    description = json.loads((root / "dataset.json").read_text())
    junk = {"image": "./imagesTr/._BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}
    description["training"].append(junk)
    (root / "dataset.json").write_text(json.dumps(description))
    cases = load_msd_datalist(root, num_channels=4)
    assert len(cases) == 3 and not any("._" in c["image"] for c in cases)
    assert all(Path(c["image"]).is_absolute() and Path(c["image"]).is_file() for c in cases)
    assert load_msd_datalist(root / "dataset.json") == cases  # the JSON file itself works too


def _break_missing(root: Path) -> tuple[type, str]:
    (root / "labelsTr" / "BRATS_002.nii.gz").unlink()
    return FileNotFoundError, "labelsTr/BRATS_002.nii.gz"


def _break_channels(root: Path) -> tuple[type, str]:
    _save(np.zeros((4, 5, 3, 3), np.float32), root / "imagesTr" / "BRATS_003.nii.gz")
    return ValueError, "imagesTr/BRATS_003.nii.gz"


def _break_no_channel_axis(root: Path) -> tuple[type, str]:
    _save(np.zeros((4, 5, 3), np.float32), root / "imagesTr" / "BRATS_001.nii.gz")
    return ValueError, "imagesTr/BRATS_001.nii.gz"


def _break_label_shape(root: Path) -> tuple[type, str]:
    _save(np.zeros((4, 5, 2), np.uint8), root / "labelsTr" / "BRATS_002.nii.gz")
    return ValueError, "labelsTr/BRATS_002.nii.gz"


def _break_dataset_json(root: Path) -> tuple[type, str]:
    (root / "dataset.json").unlink()
    return FileNotFoundError, "dataset.json"


def _break_not_an_image(root: Path) -> tuple[type, str]:
    (root / "imagesTr" / "BRATS_001.nii.gz").write_bytes(b"truncated download")
    return ValueError, "imagesTr/BRATS_001.nii.gz"


@pytest.mark.parametrize(
    "break_task",
    [
        _break_missing,
        _break_channels,
        _break_no_channel_axis,
        _break_label_shape,
        _break_dataset_json,
        _break_not_an_image,
    ],
)
def test_bad_dataset_errors_name_the_file(tmp_path, break_task):
    root = _write_task(tmp_path / "task", cases=3)
    error, name = break_task(root)
    with pytest.raises(error, match=name):
        load_msd_datalist(root, num_channels=4)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_msd_datalist(tmp_path / "nowhere")


def test_split_file_is_written_with_its_seed_and_reused(tmp_path):
    root = _write_task(tmp_path / "task", cases=8)
    split_file = tmp_path / "out" / "datalist.json"
    split = paper_split_datalists(root, split_file, seed=3, num_channels=4)
    written = split_file.read_text()
    content = json.loads(written)
    assert content["seed"] == 3 and written.endswith("}\n")
    assert [len(content[k]) for k in ("training", "validation", "test")] == [6, 1, 1]
    # An MSD-style datalist, paths relative to the dataset folder, as MONAI users read them.
    for key in ("training", "validation", "test"):
        assert load_decathlon_datalist(split_file, data_list_key=key, base_dir=root) == split[key]

    # Reordering dataset.json changes nothing; the file is read back, not rewritten.
    description = json.loads((root / "dataset.json").read_text())
    description["training"].reverse()
    (root / "dataset.json").write_text(json.dumps(description))
    assert paper_split_datalists(root, split_file, seed=3) == split
    assert split_file.read_text() == written


def test_an_edited_split_with_the_same_seed_and_cases_is_used_as_is(tmp_path):
    root = _write_task(tmp_path / "task", cases=8)
    split_file = tmp_path / "datalist.json"
    paper_split_datalists(root, split_file)
    content = json.loads(split_file.read_text())
    content["validation"].append(content["training"].pop())
    split_file.write_text(json.dumps(content))
    split = paper_split_datalists(root, split_file)
    assert [len(split[k]) for k in ("training", "validation", "test")] == [5, 2, 1]


def _other_seed(content: dict) -> str:
    content["seed"] = 5
    return "seed 5"


def _missing_case(content: dict) -> str:
    del content["training"][0]
    return "not in it"


def _unknown_case(content: dict) -> str:
    content["test"].append({"image": "imagesTr/BRATS_999.nii.gz", "label": "labelsTr/BRATS_999.nii.gz"})
    return "BRATS_999"


def _duplicate_case(content: dict) -> str:
    content["validation"].append(content["test"][0])
    return "listed twice"


def _no_seed(content: dict) -> str:
    del content["seed"]
    return "seed"


@pytest.mark.parametrize("edit", [_other_seed, _missing_case, _unknown_case, _duplicate_case, _no_seed])
def test_a_different_existing_split_is_refused_and_kept(tmp_path, edit):
    root = _write_task(tmp_path / "task", cases=6)
    split_file = tmp_path / "datalist.json"
    paper_split_datalists(root, split_file)
    content = json.loads(split_file.read_text())
    expected = edit(content)
    split_file.write_text(json.dumps(content))
    before = split_file.read_bytes()
    with pytest.raises(ValueError, match=expected) as raised:
        paper_split_datalists(root, split_file)
    assert str(split_file) in str(raised.value)
    assert split_file.read_bytes() == before


def test_nothing_is_written_when_the_dataset_is_bad(tmp_path):
    root = _write_task(tmp_path / "task", cases=4, channels=3)
    split_file = tmp_path / "datalist.json"
    with pytest.raises(ValueError, match="channel"):
        paper_split_datalists(root, split_file, num_channels=4)
    assert not split_file.exists()


@pytest.mark.parametrize("num_cases, sizes", [(260, (170, 30, 60)), (26, (17, 3, 6)), (7, (4, 1, 2))])
def test_hippocampus_split_sizes_follow_the_authors_rule(num_cases, sizes):
    assert split_sizes(num_cases, HIPPOCAMPUS_SPLIT) == sizes


def test_a_single_channel_task_refuses_a_4d_image_naming_its_channels(tmp_path):
    root = _write_task(tmp_path / "task", cases=3, channels=2)
    expected = r"BRATS_001.nii.gz: this volume has 2 channels; BRATS has 1 \(shape \(4, 5, 3, 2\)"
    with pytest.raises(ValueError, match=expected):
        load_msd_datalist(root, num_channels=1)


def test_the_written_split_describes_its_rule(tmp_path):
    root = _write_task(tmp_path / "task", cases=7)
    paper_split_datalists(root, tmp_path / "datalist.json", rule=HIPPOCAMPUS_SPLIT)
    description = json.loads((tmp_path / "datalist.json").read_text())["description"]
    assert description.startswith("The DSD authors' MSD Task04 split: the last 2 of 7 cases")
    assert "170 / 30 / 60 for the full 260" in description


def _no_training_key(description: dict) -> str:
    del description["training"]
    return "has no 'training' key"


def _training_not_a_list(description: dict) -> str:
    description["training"] = {"image": "./imagesTr/BRATS_001.nii.gz"}
    return "its 'training' is a JSON dict, not a list of cases"


def _entry_without_label(description: dict) -> str:
    del description["training"][1]["label"]
    return "entry 1 of its 'training' list has no 'label' key"


def _entry_not_an_object(description: dict) -> str:
    description["training"][2] = "./imagesTr/BRATS_001.nii.gz"
    return "entry 2 of its 'training' list is a JSON str"


def _label_not_a_path(description: dict) -> str:
    description["training"][0]["label"] = 7
    return "entry 0 of its 'training' list has a 'label' that is not a path"


@pytest.mark.parametrize(
    "edit", [_no_training_key, _training_not_a_list, _entry_without_label, _entry_not_an_object, _label_not_a_path]
)
def test_a_wrong_dataset_json_names_the_key_at_fault(tmp_path, edit):
    root = _write_task(tmp_path / "task", cases=3)
    description = json.loads((root / "dataset.json").read_text())
    expected = edit(description)
    (root / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(DataError, match=re.escape(f"{root / 'dataset.json'}: {expected}")):
        load_msd_datalist(root, num_channels=4)


def test_the_dataset_check_collects_every_fault_of_a_task(tmp_path):
    root = _write_task(tmp_path / "task", cases=4)
    description = json.loads((root / "dataset.json").read_text())
    twice = dict(description["training"][0])
    description["training"].append(twice)
    description["test"] = ["./imagesTr/BRATS_004.nii.gz", {"label": "./labelsTr/BRATS_004.nii.gz"}]
    (root / "dataset.json").write_text(json.dumps(description))
    (root / "labelsTr" / "BRATS_002.nii.gz").unlink()
    _save(np.zeros((4, 5, 3, 3), np.float32), root / "imagesTr" / "BRATS_003.nii.gz")
    with collecting_problems() as problems:
        cases = msd_cases(root, num_channels=4)
    assert sorted((str(Path(p.file).relative_to(root)), p.fault) for p in problems) == sorted([
        (twice["image"][2:], "duplicate"),
        ("labelsTr/BRATS_002.nii.gz", "missing file"),
        ("imagesTr/BRATS_003.nii.gz", "channels"),
        ("dataset.json", "listing"),  # the test entry without an image
    ])  # fmt: skip
    # Read in full all the same: BRATS_001, BRATS_003 (its other faults are worth finding) and BRATS_004, then
    # the test image; BRATS_002 has no label to read.
    assert sorted(Path(c["image"]).name for c in cases) == ["BRATS_001.nii.gz", "BRATS_003.nii.gz"] + [
        "BRATS_004.nii.gz"
    ] * 2
