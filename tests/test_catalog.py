"""The catalog holds every paper row of the two source lists and links prunekit's methods to their papers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prunekit import catalog

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "catalog"
needs_source = pytest.mark.skipif(
    not (SOURCE / catalog.SURVEY_FILE).is_file(),
    reason="../shared/catalog (the source lists) is not beside this checkout",
)


def _independent_counts() -> tuple[int, int]:
    """Rows counted straight from the files: numbered rows of the survey list, year rows of the markdown list."""
    survey = sum(1 for line in (SOURCE / catalog.SURVEY_FILE).read_text().splitlines() if re.match(r"^\d\d \| ", line))
    awesome = sum(
        1
        for line in (SOURCE / catalog.AWESOME_FILE).read_text(errors="replace").splitlines()
        if re.match(r"^\|\s*`(19|20)\d\d`", line)
    )
    return survey, awesome


@needs_source
def test_catalog_holds_every_row_of_both_lists():
    survey, awesome = _independent_counts()
    built = catalog.build(SOURCE)
    assert sum(p.source == "survey" for p in built) == survey
    assert sum(p.source == "awesome" for p in built) == awesome
    assert len(built) == survey + awesome == 297


@needs_source
def test_packaged_json_is_up_to_date_with_the_lists():
    packaged = catalog.load()
    built = catalog.build(SOURCE)
    assert [(p.id, p.title, p.year, p.types, p.section) for p in packaged] == [
        (p.id, p.title, p.year, p.types, p.section) for p in built
    ]


def test_rows_are_parsed_into_typed_fields():
    papers = catalog.load()
    snip = [p for p in papers if p.source == "survey" and p.title.startswith("SNIP")]
    assert len(snip) == 1
    s = snip[0]
    assert (s.venue, s.year, s.types, s.section, s.algorithm) == ("ICLR", 2019, ["W", "P"], "before", "SNIP")
    assert s.code_available and s.application == "Image Classification" and "snip" in s.methods
    nm = next(p for p in papers if p.title.startswith("Accelerated Sparse Neural Training"))
    assert nm.section == "after" and nm.subsection == "post-training pruning" and nm.algorithm == "AdaPrune"


def test_query_filters_like_the_cli():
    papers = catalog.load()
    rows = catalog.query(papers, type="W", when="before", year=2023)
    assert [p.algorithm for p in rows] == ["RReg", "", "", "NTK-SAP"]
    assert all(p.structured for p in catalog.query(papers, type="S"))
    assert {p.section for p in catalog.query(papers, when="dynamic")} == {"dynamic"}
    with pytest.raises(catalog.ConfigError):
        catalog.query(papers, when="sometime")


def test_implemented_methods_link_to_their_papers():
    papers = catalog.load()
    linked = {m for p in papers for m in p.methods}
    assert {
        "snip",
        "l1-channel",
        "fpgm-channel",
        "taylor-channel",
        "imp",
        "sfp",
        "slimming",
        "early-bird",
        "lamp",
        "l2-channel",
        "hessian-channel",
        "magnitude",
    } <= linked
    assert any("Lottery Ticket Hypothesis" in p.title for p in catalog.papers_for_method("imp", papers))
