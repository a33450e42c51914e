"""The README's main job, ``dsd-demo``, at its smallest size."""

from __future__ import annotations

import pytest

from custom.definitions import MMWHS_CLASS_NAMES
from dsd_lab.demo import demo as main
from tests.helpers import TINY_UNETR

#: The demo's network at the tests' tiny size; its other settings (class-balanced crops, schedule, head scores) stay.
TINY = {key: TINY_UNETR[key] for key in ("roi_size", "num_samples")}


def test_demo_cross_validates_compares_with_basic_and_draws_figures(tmp_path, capsys):
    image = pytest.importorskip("matplotlib.image")
    table = main(work_dir=str(tmp_path), cases=5, epochs=1, folds="0,1", **TINY)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [*MMWHS_CLASS_NAMES[1:], "mean"]
    for row in rows:
        dice = float(row.split(" | ")[1].split(" ± ")[0])
        assert 0.0 <= dice <= 1.0
    printed = capsys.readouterr()
    assert table in printed.out
    for stage in ("[1/3] DSD cross-validation", "[2/3] Basic", "[3/3] Figures", "Demo finished in"):
        assert stage in printed.out
    assert " - INFO - " not in printed.out + printed.err  # the bundles' logs go to each run's log.txt

    (run,) = tmp_path.glob("run-*")
    assert (run / "DSD" / "cv_summary.csv").is_file() and (run / "DSD" / "fold_1" / "results.json").is_file()
    assert "Epoch[1] Complete" in (run / "DSD" / "fold_1" / "log.txt").read_text()
    ablation = (run / "ablation_fold0.md").read_text()
    assert [line.split(" | ")[0] for line in ablation.splitlines()[2:]] == ["| Basic", "| DSD"]
    assert ablation in printed.out
    figures = sorted((run / "figures").glob("*.png"))
    assert len(figures) == 2 and all(str(figure) in printed.out for figure in figures)
    assert all(image.imread(figure).shape[1] > 400 for figure in figures)
    assert image.imread(run / "figures" / "fold0_DSD_curves.png").shape[1] == 2400  # with the heads' panel

    data_files = sorted((tmp_path / "data").iterdir())
    main(work_dir=str(tmp_path), cases=5, epochs=1, folds=0, score_heads=False, **TINY)
    assert sorted((tmp_path / "data").iterdir()) == data_files  # the data is reused, not rewritten
    runs = sorted(tmp_path.glob("run-*"))
    assert len(runs) == 2 and run in runs
    assert (run / "DSD" / "fold_0" / "models" / "model.pt").is_file()
