"""``dsd-package``: a bundle zip that runs on its own, outside this repository."""

from __future__ import annotations

import ast
import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dsd_lab.data.synthetic_mmwhs import make_mmwhs
from dsd_lab.package import MAX_FILE_BYTES, package_bundle
from tests.helpers import BRATS_BUNDLE, HIPPOCAMPUS_BUNDLE, MMWHS_BUNDLE, ROOT, TINY_UNETR, cli_overrides, run_console

BUNDLES = [MMWHS_BUNDLE, BRATS_BUNDLE, HIPPOCAMPUS_BUNDLE]
RUNTIME = ROOT / "custom"
#: What a bundle may import besides its own ``custom`` package and the standard library: MONAI and its
#: base requirements, and the import names of the packages in ``required_packages_version``.
BASE_IMPORTS = {"monai", "torch", "numpy", "custom"}
IMPORT_NAMES = {"pytorch-ignite": "ignite"}


def test_refuses_files_over_the_zoo_limit(tmp_path):
    bundle = tmp_path / "big_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text("{}\n")
    with open(bundle / "configs" / "weights.bin", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ValueError, match="weights.bin"):
        package_bundle(bundle, tmp_path / "out")
    assert not (tmp_path / "out" / "big_bundle.zip").exists()


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_package_holds_the_bundle_and_the_custom_code_it_needs(bundle, tmp_path):
    result = run_console("dsd-package", str(bundle), str(tmp_path), cwd=ROOT)
    archive = tmp_path / f"{bundle.name}.zip"
    assert result.stdout.strip() == str(archive)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        names = {info.filename for info in infos}
        sources = {name: zf.read(name).decode() for name in names if name.endswith(".py")}
    assert {name.split("/")[0] for name in names} == {bundle.name}
    assert all(info.file_size <= MAX_FILE_BYTES for info in infos)
    expected = {f"{bundle.name}/configs/{p.name}" for p in (bundle / "configs").iterdir()}
    expected |= {f"{bundle.name}/LICENSE", f"{bundle.name}/docs/README.md"}
    assert expected <= names
    sources_of_runtime = [*RUNTIME.rglob("*.py"), *RUNTIME.rglob("*.c")]  # the C file: the loss's CPU kernels
    runtime = {f"{bundle.name}/custom/{p.relative_to(RUNTIME).as_posix()}" for p in sources_of_runtime}
    assert {name for name in names if "/custom/" in name} == runtime  # the runtime whole, and nothing else of ours
    assert not any("dsd_lab" in name for name in names)
    assert not any(part in ("models", "eval") for name in names for part in name.split("/")[1:2])
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    allowed = BASE_IMPORTS | {IMPORT_NAMES.get(p, p) for p in metadata["required_packages_version"]}
    for name, source in sources.items():
        outside = _top_level_imports(source) - allowed - set(sys.stdlib_module_names)
        assert not outside, f"{name} imports {outside}, which required_packages_version does not list"


def _top_level_imports(source: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def _isolated(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -S ARGS``: installed packages are importable, but not this repository's editable install.

    ``-S`` skips the ``.pth`` files of site-packages, among them the editable install's import hook;
    site-packages itself comes back through ``PYTHONPATH``.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_unzipped_package_trains_evaluates_and_infers_outside_the_repository(tmp_path):
    archive = package_bundle(MMWHS_BUNDLE, tmp_path / "dist")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "unzipped")
    bundle = tmp_path / "unzipped" / "dsd_unetr_mmwhs"
    data = tmp_path / "data"
    make_mmwhs(data, cases=3, seed=5)

    outside = _isolated("-c", "import custom", cwd=tmp_path)
    assert outside.returncode != 0 and "No module named 'custom'" in outside.stderr
    inside = _isolated("-c", "import custom; print(custom.__file__)", cwd=bundle)
    assert Path(inside.stdout.strip()).resolve() == (bundle / "custom" / "__init__.py").resolve()

    tiny = cli_overrides(data, num_folds=3, max_epochs=1, val_interval=1)
    commands = [
        ["training", "--meta_file", "configs/metadata.json", "--config_file", "configs/train.json", *tiny],
        ["evaluating", "--config_file", "['configs/train.json','configs/evaluate.json']", *tiny],
        ["--config_file", "configs/inference.json", *_inference_overrides(data)],
    ]
    for command in commands:
        result = _isolated("-m", "monai.bundle", "run", *command, cwd=bundle)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (bundle / "models" / "model.pt").is_file()
    assert (bundle / "eval" / "val_mean_dice_raw.csv").is_file()
    assert len(list((bundle / "eval" / "inference").glob("*_seg.nii.gz"))) == 3


def _inference_overrides(data: Path) -> list[str]:
    keys = ("roi_size", "feature_size", "hidden_size", "mlp_dim", "num_heads")
    values = {key: TINY_UNETR[key] for key in keys}
    values["dataset_dir"] = str(data)
    return [arg for key, value in values.items() for arg in (f"--{key}", json.dumps(value))]
