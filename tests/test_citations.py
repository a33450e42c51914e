"""Every bundle cites the paper as the one source, ``CITATION.bib``, gives it: same BibTeX, same authors."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import HIPPOCAMPUS_BUNDLE, ROOT

BUNDLES = sorted(p.parent.parent for p in ROOT.glob("bundles/*/configs/metadata.json"))
ENTRIES = dict(
    (match.group(2), match.group(1))
    for match in re.finditer(r"(@\w+\{(\w+),\n.*?\n\})", (ROOT / "CITATION.bib").read_text(), re.S)
)
ISBI, JOURNAL = "banerjee2024dsd", "banerjee2025volumetric"


def _field(key: str, name: str) -> str:
    return re.search(rf"^\s*{name}\s*=\s*\{{(.*)\}},?$", ENTRIES[key], re.M).group(1)


def _reference_line(key: str) -> str:
    """The start of a ``metadata.json`` reference: ``Family, G., Family, G. Title.``, from the BibTeX entry."""
    authors = [name.split(", ") for name in _field(key, "author").split(" and ")]
    initials = ", ".join(f"{family}, {given[0]}." for family, given in authors)
    return f"{initials} {_field(key, 'title')}."


def _cited(bundle) -> list[str]:
    return [ISBI, JOURNAL] if bundle == HIPPOCAMPUS_BUNDLE else [ISBI]


def test_the_source_names_the_papers_authors_and_identifiers():
    assert _field(ISBI, "author") == "Banerjee, Soumyanil and Dong, Ming and Glide-Hurst, Carri"
    assert _field(ISBI, "doi") == "10.1109/ISBI56570.2024.10635393"
    assert _field(JOURNAL, "eprint") == "2306.03271v3"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_bundle_readme_and_metadata_cite_as_the_source(bundle):
    readme = (bundle / "docs" / "README.md").read_text()
    citation_block = readme.split("## Citation\n```\n", 1)[1].split("```", 1)[0]
    assert citation_block == "\n".join(ENTRIES[key] for key in _cited(bundle)) + "\n"
    references = json.loads((bundle / "configs" / "metadata.json").read_text())["references"]
    for position, key in enumerate(_cited(bundle)):
        assert references[position].startswith(_reference_line(key)), references[position]
    assert _field(ISBI, "doi") in references[0]


def test_no_file_names_the_wrong_author():
    texts = [path.read_text() for path in [ROOT / "README.md", *ROOT.glob("bundles/*/docs/README.md")]]
    texts += [path.read_text() for path in ROOT.glob("bundles/*/configs/metadata.json")]
    assert [text for text in texts if "Shi, W" in text or "and Shi" in text] == []
    assert ENTRIES[ISBI] in (ROOT / "README.md").read_text() and ENTRIES[JOURNAL] in (ROOT / "README.md").read_text()
