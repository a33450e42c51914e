"""custom.files: one atomic write for checkpoints and JSON records, and the natural order of case files."""

from __future__ import annotations

import json

import pytest

from custom.files import atomic_write, atomic_write_json, natural_key, remove_stale_temps


def test_json_is_written_whole_with_four_spaces_and_a_final_newline(tmp_path):
    path = tmp_path / "deeper" / "record.json"
    atomic_write_json(path, {"trained": True, "folds": [0, 1]})
    assert path.read_text() == json.dumps({"trained": True, "folds": [0, 1]}, indent=4) + "\n"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "record.json"
    atomic_write_json(path, {"epoch": 1})

    def fail_halfway(f):
        f.write(b'{"epoch": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail_halfway)
    assert json.loads(path.read_text()) == {"epoch": 1}
    assert list(tmp_path.iterdir()) == [path]


def test_stale_temporary_files_of_one_target_are_removed(tmp_path):
    stale, other = tmp_path / ".record.json.x1.tmp", tmp_path / ".other.json.x1.tmp"
    for file in (stale, other):
        file.write_bytes(b"left by a kill")
    assert remove_stale_temps(tmp_path / "record.json") == [stale]
    assert sorted(tmp_path.iterdir()) == [other]


def test_natural_key_orders_numbers_as_numbers():
    names = ["case_10", "case_9", "case_100", "case_1"]
    assert sorted(names, key=natural_key) == ["case_1", "case_9", "case_10", "case_100"]
