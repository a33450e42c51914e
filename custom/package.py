"""Zip a bundle into a self-contained MONAI Model Zoo package, with the ``custom`` code its configs use.

Usage::

    python -m custom.package bundles/dsd_unetr_mmwhs OUT_DIR

writes ``OUT_DIR/dsd_unetr_mmwhs.zip``, which unzips to ``dsd_unetr_mmwhs/`` holding the bundle's
configs, docs and licence, and ``dsd_unetr_mmwhs/custom/`` with the modules of this package that the
configs reach. Run from the unzipped bundle root, ``python -m monai.bundle ...`` imports ``custom``
from there, so the bundle needs only the packages of its ``required_packages_version``.
Training outputs (``models/``, ``eval/``) are left out.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import fire

__all__ = ["MAX_FILE_BYTES", "bundle_files", "custom_modules", "main", "package_bundle"]

#: The Model Zoo keeps files above this size out of a bundle's repository (they go to ``large_files.yml``).
MAX_FILE_BYTES = 25 * 1024 * 1024
#: Bundle folders that hold outputs of runs, not parts of the bundle.
EXCLUDED_DIRS = ("models", "eval")

_PACKAGE_DIR = Path(__file__).resolve().parent
_REFERENCE = re.compile(r"\bcustom\.(\w+)")


def custom_modules(texts: list[str]) -> list[str]:
    """Names of the ``custom`` submodules that the texts reference, with everything they import in turn.

    Args:
        texts: config or source texts that name ``custom.<module>``.

    Returns:
        Sorted module names, e.g. ``["data", "losses", "networks"]``.

    Raises:
        FileNotFoundError: a referenced module does not exist in this package.
    """
    pending = {name for text in texts for name in _REFERENCE.findall(text)}
    found: set[str] = set()
    while pending:
        name = pending.pop()
        if name in found:
            continue
        source = _PACKAGE_DIR / f"{name}.py"
        if not source.is_file():
            raise FileNotFoundError(f"The bundle references custom.{name}, but {source} does not exist.")
        found.add(name)
        pending |= set(_REFERENCE.findall(source.read_text())) - found
    return sorted(found)


def bundle_files(bundle_dir: Path) -> dict[str, Path]:
    """Archive name -> source file of everything the package holds, under ``<bundle name>/``.

    Args:
        bundle_dir: the bundle folder, holding ``configs/``.
    """
    bundle_dir = Path(bundle_dir).resolve()
    files = {}
    for path in sorted(bundle_dir.rglob("*")):
        relative = path.relative_to(bundle_dir)
        # __pycache__ is skipped at any depth, run outputs only at the top
        if path.is_file() and relative.parts[0] not in EXCLUDED_DIRS and "__pycache__" not in relative.parts:
            files[f"{bundle_dir.name}/{relative.as_posix()}"] = path
    configs = [p.read_text() for p in sorted((bundle_dir / "configs").glob("*.json"))]
    for name in ["__init__", *custom_modules(configs)]:
        files[f"{bundle_dir.name}/custom/{name}.py"] = _PACKAGE_DIR / f"{name}.py"
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


def main(bundle_dir: str, out_dir: str) -> str:
    """Package ``bundle_dir`` into ``out_dir`` and print the path of the zip."""
    archive = package_bundle(bundle_dir, out_dir)
    print(archive)
    return str(archive)


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda _: None)
