"""The README's main job, ``python -m custom.demo``, at its smallest size."""

from __future__ import annotations

from custom.data import MMWHS_CLASS_NAMES
from custom.demo import main


def test_demo_trains_evaluates_and_prints_the_dice_table(tmp_path, capsys):
    table = main(work_dir=str(tmp_path), cases=5, epochs=1)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [*MMWHS_CLASS_NAMES[1:], "mean (foreground)"]
    for row in rows:
        dice = float(row.split(" | ")[1].split(" ± ")[0])
        assert 0.0 <= dice <= 1.0
    assert table in capsys.readouterr().out

    data_files = sorted((tmp_path / "data").iterdir())
    first_run = next(tmp_path.glob("run-*"))
    main(work_dir=str(tmp_path), cases=5, epochs=1)
    assert sorted((tmp_path / "data").iterdir()) == data_files  # the data is reused, not rewritten
    runs = sorted(tmp_path.glob("run-*"))
    assert len(runs) == 2 and first_run in runs
    assert (first_run / "models" / "model.pt").is_file()
