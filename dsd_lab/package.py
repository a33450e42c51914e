"""Zip a bundle into a self-contained MONAI Model Zoo package, with the whole runtime package ``custom``.

Usage::

    dsd-package bundles/dsd_unetr_mmwhs OUT_DIR

writes ``OUT_DIR/dsd_unetr_mmwhs.zip``, which unzips to ``dsd_unetr_mmwhs/`` holding the bundle's configs, docs
and licence, and ``dsd_unetr_mmwhs/custom/``: the runtime package as it is, every module of it. The runtime holds
exactly what the bundles' configs use and never imports the lab, so nothing has to be picked out of it. Run from
the unzipped bundle root, ``python -m monai.bundle ...`` imports ``custom`` from there, so the bundle needs only the
packages of its ``required_packages_version``. Training outputs (``models/``, ``eval/``) are left out.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import custom
from dsd_lab.cli import run_command

__all__ = ["MAX_FILE_BYTES", "bundle_files", "main", "package_bundle", "runtime_files"]

#: The Model Zoo keeps files above this size out of a bundle's repository (they go to ``large_files.yml``).
MAX_FILE_BYTES = 25 * 1024 * 1024
#: Bundle folders that hold outputs of runs, not parts of the bundle.
EXCLUDED_DIRS = ("models", "eval")

RUNTIME_DIR = Path(custom.__file__).resolve().parent


def _package_files(root: Path, prefix: str, skip_top: tuple[str, ...] = ()) -> dict[str, Path]:
    """Archive name -> file for every file under ``root``, without ``__pycache__`` and the top folders ``skip_top``."""
    files = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and relative.parts[0] not in skip_top and "__pycache__" not in relative.parts:
            files[f"{prefix}/{relative.as_posix()}"] = path
    return files


def runtime_files(bundle_name: str) -> dict[str, Path]:
    """Archive name -> source file of the runtime package, under ``<bundle name>/custom/``."""
    return _package_files(RUNTIME_DIR, f"{bundle_name}/custom")


def bundle_files(bundle_dir: Path) -> dict[str, Path]:
    """Archive name -> source file of everything the package holds, under ``<bundle name>/``.

    Args:
        bundle_dir: the bundle folder, holding ``configs/``.
    """
    bundle_dir = Path(bundle_dir).resolve()
    files = _package_files(bundle_dir, bundle_dir.name, skip_top=EXCLUDED_DIRS)
    files.update(runtime_files(bundle_dir.name))
    return files


def package_bundle(bundle_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``OUT_DIR/<bundle name>.zip``; see the module docstring.

    Args:
        bundle_dir: the bundle folder.
        out_dir: where the zip goes; created if missing.

    Returns:
        The path of the zip.

    Raises:
        FileNotFoundError: ``bundle_dir`` has no ``configs/metadata.json``.
        ValueError: a file is larger than :data:`MAX_FILE_BYTES`, or the bundle ships its own ``custom/``.
    """
    bundle_dir = Path(bundle_dir).resolve()
    if not (bundle_dir / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{bundle_dir} is not a bundle: it has no configs/metadata.json.")
    if (bundle_dir / "custom").exists():
        raise ValueError(f"{bundle_dir / 'custom'} exists; the package writes its own custom/ folder.")
    files = bundle_files(bundle_dir)
    sizes = {name: path.stat().st_size for name, path in files.items()}
    too_large = [f"{name} ({size} bytes)" for name, size in sizes.items() if size > MAX_FILE_BYTES]
    if too_large:
        raise ValueError(f"Files over {MAX_FILE_BYTES} bytes cannot go into a bundle package: {too_large}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{bundle_dir.name}.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, path in files.items():
            zf.write(path, name)
    return archive


def _package_command(bundle_dir: str, out_dir: str) -> str:
    """Package ``bundle_dir`` into ``out_dir`` and print the path of the zip."""
    archive = package_bundle(bundle_dir, out_dir)
    print(archive)
    return str(archive)


def main(argv: list[str] | None = None) -> None:
    """``dsd-package BUNDLE_DIR OUT_DIR``."""
    run_command(_package_command, argv, name="dsd-package")


if __name__ == "__main__":
    main()
