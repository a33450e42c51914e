"""The README's main job, ``dsd-demo``, at its smallest size."""

from __future__ import annotations

import pytest

from custom.definitions import MMWHS_CLASS_NAMES
from dsd_lab.demo import demo as main


def test_demo_cross_validates_compares_with_basic_and_draws_figures(tmp_path, capsys):
    image = pytest.importorskip("matplotlib.image")
    table = main(work_dir=str(tmp_path), cases=5, epochs=1, folds="0,1")
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [*MMWHS_CLASS_NAMES[1:], "mean"]
    for row in rows:
        dice = float(row.split(" | ")[1].split(" ± ")[0])
        assert 0.0 <= dice <= 1.0
    printed = capsys.readouterr().out
    assert table in printed

    (run,) = tmp_path.glob("run-*")
    assert (run / "DSD" / "cv_summary.csv").is_file() and (run / "DSD" / "fold_1" / "results.json").is_file()
    ablation = (run / "ablation_fold0.md").read_text()
    assert [line.split(" | ")[0] for line in ablation.splitlines()[2:]] == ["| Basic", "| DSD"]
    assert ablation in printed
    figures = sorted((run / "figures").glob("*.png"))
    assert len(figures) == 2 and all(str(figure) in printed for figure in figures)
    assert all(image.imread(figure).shape[1] > 400 for figure in figures)

    data_files = sorted((tmp_path / "data").iterdir())
    main(work_dir=str(tmp_path), cases=5, epochs=1, folds=0)
    assert sorted((tmp_path / "data").iterdir()) == data_files  # the data is reused, not rewritten
    runs = sorted(tmp_path.glob("run-*"))
    assert len(runs) == 2 and run in runs
    assert (run / "DSD" / "fold_0" / "models" / "model.pt").is_file()
