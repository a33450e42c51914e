"""The rules of the house (docs/ARCHITECTURE.md): two rooms, one job per module, bundles that share what they share."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest

from tests.helpers import ROOT

RUNTIME, LAB = "custom", "dsd_lab"
BUNDLES = sorted(p.parent.parent for p in ROOT.glob("bundles/*/configs/metadata.json"))

#: Config ids whose values are each bundle's own, by file, with the reason; an id covers the ids below it.
#: Every other id of a config file that two bundles both ship must have the same value in both.
OWN_VALUES: dict[str, dict[str, str]] = {
    "train.json": {
        "dataset_dir": "each dataset's default location",
        "datalist": "MM-WHS is split into folds, MSD tasks by the paper's fixed split",
        "dataset_cases": "every case as dsd-check-data reads it: an MM-WHS folder, or an MSD task's dataset.json",
        "fold": "cross-validation exists for MM-WHS only",
        "num_folds": "cross-validation exists for MM-WHS only",
        "datalist_file": "the recorded fixed split of MSD tasks",
        "split_seed": "the recorded fixed split of MSD tasks",
        "in_channels": "modalities of the dataset",
        "num_classes": "labels of the dataset",
        "regions": "BraTS is evaluated on nested tumour regions",
        "num_samples": "the authors' crops per volume, 8 for the small Task04 volumes",
        "roi_size": "the paper's patch size per dataset",
        "pixdim": "MM-WHS is resampled; MSD tasks keep their grid",
        "hu_window": "CT only",
        "feature_size": "the paper's UNETR size per dataset",
        "lr_step_epochs": "the paper's schedule per dataset",
        "max_epochs": "the paper's schedule per dataset",
        "cache_rate": "whether the dataset fits in memory",
        "train#deterministic_transforms": "reading, label codes and intensity scaling per modality",
        "train#random_transforms": "the authors' augmentation for Task04 (flips p = 0.5, background crops)",
        "validate#key_metric": "per-class Dice, or region Dice for BraTS",
        "validate#additional_metrics": "per-class HD95, or region HD95 for BraTS",
        "validate#postprocessing": "region channels for BraTS",
    },
    "evaluate.json": {
        "report_classes": "the dataset's classes or regions",
        "label_classes": "BraTS also reports its labels beside its regions",
        "evaluate_data": "validation fold for MM-WHS, a split of the fixed split for MSD tasks",
        "evaluate_split": "a split of the fixed split for MSD tasks",
        "validate#original_label_transforms": "the dataset's label codes",
        "validate#postprocessing": "label codes written back, or region channels",
        "validate#key_metric": "region Dice for BraTS",
        "validate#additional_metrics": "region and label HD95 for BraTS; the others turn off training's head scores",
        "validate#handlers": "the metrics each dataset reports",
    },
    "inference.json": {
        "dataset_dir": "each dataset's default location",
        "datalist": "an MM-WHS folder, or an MSD task's test list",
        "datalist_key": "the list of a datalist file that holds new images",
        "dataset_file": "MSD tasks are described by dataset.json",
        "num_workers": "loader workers per dataset size",
        "dataloader#num_workers": "loader workers per dataset size",
        "in_channels": "modalities of the dataset",
        "num_classes": "labels of the dataset",
        "label_codes": "label codes written to the output files",
        "roi_size": "the paper's patch size per dataset",
        "pixdim": "MM-WHS is resampled; MSD tasks keep their grid",
        "hu_window": "CT only",
        "feature_size": "the paper's UNETR size per dataset",
        "preprocessing#transforms": "reading and intensity scaling per modality",
        "postprocessing#transforms": "label codes written back",
    },
    "metadata.json": {
        "version": "each bundle's own release history",
        "changelog": "each bundle's own release history",
        "name": "the bundle's own description",
        "task": "the bundle's own description",
        "description": "the bundle's own description",
        "data_source": "the bundle's own description",
        "image_classes": "the bundle's own description",
        "label_classes": "the bundle's own description",
        "pred_classes": "the bundle's own description",
        "eval_metrics": "the bundle's own results",
        "references": "the dataset's own references",
        "network_data_format": "the dataset's inputs and classes",
    },
    "mlflow.json": {
        "configs#trainer#experiment_param": "the data split's own parameters: the fold, or the fixed split's seed",
    },
    "backbone_dynunet.json": {
        "dynunet_filters": "the bottleneck's width per dataset",
    },
    "strategy_dmd.json": {
        "dataset_unlabelled": "each dataset's own unlabelled set: MM-WHS ct_test/, the test list of an MSD dataset.json",
    },
    "backbone_swinunetr.json": {
        "roi_size": "SwinUNETR's 1/32 bottleneck needs 64³ patches to keep more than one voxel for instance norm",
    },
}


# --- two rooms ----------------------------------------------------------------------------------------------------


def _modules(package: str) -> dict[str, Path]:
    """Dotted module name -> source file of every module of a package of this repository."""
    modules = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


PROJECT_MODULES = {**_modules(RUNTIME), **_modules(LAB)}


def _imports(path: Path) -> set[str]:
    """The project modules that a source file imports, at any level (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in PROJECT_MODULES:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_the_runtime_never_imports_the_lab():
    offenders = {m: sorted(i for i in _imports(p) if i.split(".")[0] == LAB) for m, p in _modules(RUNTIME).items()}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_no_import_cycles():
    graph = {module: _imports(path) - {module} for module, path in PROJECT_MODULES.items()}
    # a package's __init__ is imported with each of its modules; only explicit imports make edges here
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in stack:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in done:
                visit(target, [*stack, target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert cycles == []


def test_the_runtime_holds_exactly_what_the_bundle_configs_use():
    # metadata.json describes a bundle (its changelog names old modules); the other configs run
    texts = [path.read_text() for path in ROOT.glob("bundles/*/configs/*.json") if path.name != "metadata.json"]
    pending = {f"{RUNTIME}.{name}" for text in texts for name in re.findall(rf"\b{RUNTIME}\.(\w+)", text)}
    used: set[str] = set()
    while pending:
        module = pending.pop()
        assert module in PROJECT_MODULES, f"a bundle config names {module}, which does not exist"
        used.add(module)
        pending |= {m for m in _imports(PROJECT_MODULES[module]) if m.startswith(RUNTIME)} - used
    assert set(_modules(RUNTIME)) - {RUNTIME} - used == set()


def test_light_commands_start_without_torch():
    code = "import sys, dsd_lab.figures.cli; print(sorted({'torch', 'monai'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_tests_import_their_helpers_one_way():
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("*.py")
        if re.search(r"^\s*(from|import) helpers\b", path.read_text(), re.M)
    ]
    assert offenders == []


# --- configs that name their parts ------------------------------------------------------------------------------

CONFIG_FILES = sorted(ROOT.glob("bundles/*/configs/*.json"))
_CONFIG_ID = re.compile(r"[A-Za-z_]\w*(?:#[\w:]+)+")


def _strings_and_keys(obj):
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key
            yield from _strings_and_keys(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _strings_and_keys(item)
    elif isinstance(obj, str):
        yield obj


@pytest.mark.parametrize("config_file", CONFIG_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_no_config_refers_to_a_list_position(config_file):
    ids = [i for text in _strings_and_keys(json.loads(config_file.read_text())) for i in _CONFIG_ID.findall(text)]
    assert [i for i in ids if any(part.isdigit() for part in i.split("#")[1:])] == []


@pytest.mark.parametrize("config_file", CONFIG_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_configs_read_nothing_outside_their_bundle(config_file):
    others = {bundle.name for bundle in BUNDLES} - {config_file.parent.parent.name}
    strings = list(_strings_and_keys(json.loads(config_file.read_text())))
    assert [s for s in strings if "../" in s or "..\\" in s or "bundles/" in s or any(o in s for o in others)] == []


def _flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Config id -> value, through nested dictionaries; a list is one value."""
    flat = {}
    for key, value in config.items():
        config_id = f"{prefix}#{key}" if prefix else key
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, config_id))
        else:
            flat[config_id] = value
    return flat


def _own(file_name: str, config_id: str) -> bool:
    return any(config_id == own or config_id.startswith(own + "#") for own in OWN_VALUES.get(file_name, {}))


@pytest.mark.parametrize("pair", list(combinations(BUNDLES, 2)), ids=lambda p: f"{p[0].name}-{p[1].name}")
def test_bundles_share_their_common_configuration(pair):
    first, second = pair
    shared = sorted({p.name for p in (first / "configs").iterdir()} & {p.name for p in (second / "configs").iterdir()})
    assert "train.json" in shared
    for name in shared:
        a, b = (bundle / "configs" / name for bundle in pair)
        if a.suffix != ".json":
            assert a.read_bytes() == b.read_bytes(), f"{name} differs between {first.name} and {second.name}"
            continue
        flat_a, flat_b = _flatten(json.loads(a.read_text())), _flatten(json.loads(b.read_text()))
        differing = [
            config_id
            for config_id in sorted(set(flat_a) | set(flat_b))
            if flat_a.get(config_id, "(absent)") != flat_b.get(config_id, "(absent)") and not _own(name, config_id)
        ]
        assert differing == [], f"{name}: {first.name} and {second.name} differ in ids not listed in OWN_VALUES"
        if name not in OWN_VALUES:
            assert a.read_bytes() == b.read_bytes(), f"{name} differs between {first.name} and {second.name}"


@pytest.mark.parametrize("name", ["LICENSE"])
def test_bundles_ship_identical_shared_files(name):
    contents = {bundle.name: (bundle / name).read_bytes() for bundle in BUNDLES}
    assert len(set(contents.values())) == 1, f"{name} differs between bundles"
