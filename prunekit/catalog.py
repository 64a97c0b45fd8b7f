"""The survey's curated paper lists as structured, queryable data, linked to the methods implemented here.

Two source lists (plain text, kept beside the repository in ``../shared/catalog/``) are parsed once by
``python -m prunekit.catalog build DIR`` into ``prunekit/data/catalog.json``, which ships with the package:

- ``survey-repository-list.txt``: the tables of the survey's own repository. Each row has a number, title,
  venue, type codes (L layer, F filter, C channel, N neuron, H head, B block, M matrix, E embedding,
  W weight, P pioneer), algorithm name, code, application and year. The extraction lost the section
  headings; the tables follow the table of contents in order, so :data:`SURVEY_LAYOUT` names the section
  of each table and the parser refuses a file whose number of tables does not match it.
- ``awesome-pruning-list.md``: a second list, markdown tables by venue and year with U (unstructured) /
  S (structured) types and A (author) / O (third-party) code.

Every table row becomes one :class:`Paper` (a paper listed twice stays twice: once per row), so the
catalog's size is exactly the number of rows of the two lists. Links to prunekit methods are computed
when the catalog is loaded, from the live method registry (``Method.paper``) plus the algorithm names in
:data:`ALGORITHM_LINKS`, so a newly registered method links to its paper without rebuilding the JSON.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from prunekit.errors import ConfigError, DataError

__all__ = [
    "AWESOME_FILE",
    "Paper",
    "SURVEY_FILE",
    "build",
    "link_methods",
    "load",
    "main",
    "papers_for_method",
    "parse_awesome_list",
    "parse_survey_list",
    "query",
    "write_json",
]

SURVEY_FILE = "survey-repository-list.txt"
AWESOME_FILE = "awesome-pruning-list.md"

TYPE_CODES: dict[str, str] = {
    "L": "layer",
    "F": "filter",
    "C": "channel",
    "N": "neuron",
    "H": "head",
    "B": "block",
    "M": "matrix",
    "E": "embedding",
    "W": "weight",
    "P": "pioneer work",
}
STRUCTURED_CODES = frozenset("LFCNHBE")

# (section, subsection, number of tables), in the order of the survey list's tables.
SURVEY_LAYOUT: tuple[tuple[str, str, int], ...] = (
    ("before", "pruning before training", 5),
    ("during", "pruning during training", 6),
    ("after", "CNNs", 3),
    ("after", "vision transformers", 3),
    ("after", "BERT-style transformers", 4),
    ("after", "large language models", 1),
    ("after", "diffusion models", 1),
    ("after", "vision-language models", 3),
    ("after", "post-training pruning", 4),
    ("early", "pruning in early training", 1),
    ("dynamic", "run-time (dynamic) pruning", 1),
    ("learning", "continual learning", 1),
    ("learning", "contrastive learning", 1),
    ("learning", "federated learning", 1),
    ("application", "computer vision", 1),
    ("application", "natural language processing", 1),
    ("application", "audio signal processing", 1),
    ("combination", "pruning and quantisation", 1),
    ("combination", "pruning and tensor decomposition", 1),
    ("survey", "surveys", 6),
    ("other", "other works", 1),
)
WHEN_SECTIONS = ("before", "during", "after", "early", "dynamic")
SECTIONS = (*WHEN_SECTIONS, "learning", "application", "combination", "survey", "other", "toolbox", "")

# Algorithm names in the lists that name a prunekit method (beyond the titles in Method.paper).
ALGORITHM_LINKS: dict[str, tuple[str, ...]] = {
    "snip": ("snip",),
    "grasp": ("grasp",),
    "synflow": ("synflow",),
    "rigl": ("rigl",),
    "set": ("set",),
    "obd": ("hessian-channel",),
    "pfec": ("l1-channel",),
    "fpgm": ("fpgm-channel",),
    "sfp": ("sfp",),
    "depgraph": ("l2-channel", "embedding"),
    "sparsegpt": ("sparsegpt",),
    "wanda": ("wanda",),
    "llm-pruner": ("llm-pruner",),
    "shortgpt": ("layer",),
    "lamp": ("lamp", "lamp-channel"),
}
# Titles in the lists whose method is implemented here under another paper's name.
TITLE_LINKS: dict[str, tuple[str, ...]] = {
    "deep compression": ("magnitude",),  # Han et al. 2016 builds on the magnitude pruning of Han et al. 2015
    "sparsegpt": ("sparsegpt",),
    "a simple and effective pruning approach for large language models": ("wanda",),
    "llm pruner": ("llm-pruner",),
}


@dataclass
class Paper:
    """One row of a source list."""

    id: str
    source: str  # "survey" or "awesome"
    # before | during | after | early | dynamic | learning | application | combination | survey | other | toolbox
    section: str
    subsection: str
    title: str
    venue: str
    year: int | None
    year_text: str
    types: list[str]  # survey type codes (L F C N H B M E W P); U -> W; S stays S (structured, unspecified)
    type_text: str
    algorithm: str
    code: str
    code_available: bool
    application: str
    url: str = ""
    code_url: str = ""
    methods: list[str] = field(default_factory=list)  # linked prunekit methods (filled at load time)

    @property
    def structured(self) -> bool | None:
        """Whether the survey's type codes mark the paper structured (None when it has no codes)."""
        if not self.types:
            return None
        return any(t in STRUCTURED_CODES or t == "S" for t in self.types)


# ---- parsing --------------------------------------------------------------------------------------

_ROW_START = re.compile(r"^(\d+) \| ")
_HEADER = re.compile(r"^No\. \|")


def _year(text: str) -> int | None:
    m = re.search(r"(19|20)\d\d", text)
    return int(m.group(0)) if m else None


def _type_codes(text: str) -> list[str]:
    text = text.strip()
    if re.fullmatch(r"\d+:\d+", text):  # "N:M" written as a type: weight pruning with an N:M pattern
        return ["W"]
    if text == "N:M":
        return ["W"]
    return [c for c in text if c in TYPE_CODES]


def _code_available(code: str) -> bool:
    c = code.strip()
    return bool(c) and c not in ("-", "(soon...)") and "soon" not in c.lower()


def _cell_count(row: str) -> int:
    if not row.rstrip().endswith("|"):
        return len([c for c in row.split(" | ")])
    return len(row.rstrip().rstrip("|").split(" | "))


def parse_survey_list(text: str) -> list[Paper]:
    """Rows of ``survey-repository-list.txt`` (see the module docstring). Raises
    :class:`~prunekit.errors.DataError` when the file's tables do not match :data:`SURVEY_LAYOUT`."""
    lines = text.splitlines()
    tables: list[tuple[list[str], list[str]]] = []  # (header cells, row texts)
    current: list[str] | None = None
    for line in lines:
        if _HEADER.match(line):
            header = [c.strip() for c in line.split("|") if c.strip()]
            tables.append((header, []))
            current = tables[-1][1]
            continue
        if current is None or line.startswith("---"):
            continue
        if _ROW_START.match(line):
            current.append(line)
        elif current and line.strip() and _cell_count(current[-1]) < len(tables[-1][0]):
            current[-1] = current[-1] + " " + line  # a row wrapped over two lines
    expected = sum(n for _, _, n in SURVEY_LAYOUT)
    if len(tables) != expected:
        raise DataError(
            f"{SURVEY_FILE}: found {len(tables)} tables, the layout expects {expected}; update SURVEY_LAYOUT"
        )
    sections = [(s, sub) for s, sub, n in SURVEY_LAYOUT for _ in range(n)]
    papers: list[Paper] = []
    for t_index, ((header, rows), (section, subsection)) in enumerate(zip(tables, sections)):
        for row in rows:
            cells = [c.strip() for c in row.split(" | ")]
            if cells and cells[-1].endswith("|"):
                cells[-1] = cells[-1].rstrip("|").strip()
            while cells and cells[-1] == "":
                cells.pop()
            if len(cells) != len(header):
                raise DataError(
                    f"{SURVEY_FILE}: table {t_index + 1} row {row[:60]!r} has {len(cells)} cells, "
                    f"header has {len(header)}"
                )
            d = dict(zip(header, cells))
            type_text = d.get("Type", "")
            algorithm = d.get("Algorithm Name", "-")
            papers.append(
                Paper(
                    id=f"survey-{len(papers) + 1:03d}",
                    source="survey",
                    section=section,
                    subsection=subsection,
                    title=d["Title"].rstrip(")").strip()
                    if d["Title"].count(")") > d["Title"].count("(")
                    else d["Title"],
                    venue=d["Venue"],
                    year=_year(d["Year"]),
                    year_text=d["Year"],
                    types=_type_codes(type_text),
                    type_text=type_text,
                    algorithm="" if algorithm == "-" else algorithm,
                    code="" if d["Code"] == "-" else d["Code"],
                    code_available=_code_available(d["Code"]),
                    application="" if d["APP"] == "-" else d["APP"],
                )
            )
    return papers


_MD_LINK = re.compile(r"\[([^\]]*)\]\(([^)]*)\)")
_AWESOME_SECTIONS = {
    "conference": "",
    "journal": "",
    "survery papers": "survey",
    "survey papers": "survey",
    "other": "other",
    "pruning software/toolbox": "toolbox",
}


def _md_text(cell: str) -> tuple[str, str]:
    """Plain text and first link of a markdown cell."""
    m = _MD_LINK.search(cell)
    url = m.group(2) if m else ""
    plain = _MD_LINK.sub(lambda mm: mm.group(1), cell)
    plain = plain.replace("`", "").replace("**", "").strip()
    return plain, url


def parse_awesome_list(text: str) -> list[Paper]:
    """Rows of ``awesome-pruning-list.md``: every markdown table row whose first cell is a year."""
    papers: list[Paper] = []
    heading = ""
    header: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip().lower()
            continue
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].lower() == "year":
            header = [c.lower() for c in cells]
            continue
        if not cells or not re.fullmatch(r"`\d{4}`", cells[0]):
            continue
        d = dict(zip(header, cells))
        title, url = _md_text(d.get("title", ""))
        venue, _ = _md_text(d.get("venue", d.get("journal", "")))
        type_text = d.get("type", "").replace("`", "").strip()
        code, code_url = _md_text(d.get("code", ""))
        types = []
        if "U" in type_text:
            types.append("W")
        if "S" in type_text:
            types.append("S")
        section = _AWESOME_SECTIONS.get(heading, "")
        papers.append(
            Paper(
                id=f"awesome-{len(papers) + 1:03d}",
                source="awesome",
                section=section,
                subsection=heading,
                title=title,
                venue=venue,
                year=_year(cells[0]),
                year_text=cells[0].strip("`"),
                types=types,
                type_text=type_text,
                algorithm="",
                code=code,
                code_available=bool(code_url) or _code_available(code),
                application="",
                url=url,
                code_url=code_url,
            )
        )
    return papers


def build(source_dir: str | Path) -> list[Paper]:
    """Parse both lists in ``source_dir``. Raises :class:`~prunekit.errors.DataError` when one is missing (or
    does not parse)."""
    d = Path(source_dir)
    for name in (SURVEY_FILE, AWESOME_FILE):
        if not (d / name).is_file():
            raise DataError(f"{d / name} not found: pass the folder that holds {SURVEY_FILE} and {AWESOME_FILE}")
    return parse_survey_list((d / SURVEY_FILE).read_text(encoding="utf-8")) + parse_awesome_list(
        (d / AWESOME_FILE).read_text(encoding="utf-8", errors="replace")
    )


def write_json(papers: Sequence[Paper], path: str | Path) -> Path:
    """Write ``papers`` (without their linked methods) and the count per source list to ``path`` as JSON;
    returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in papers:
        row = asdict(p)
        row.pop("methods")
        rows.append(row)
    counts = {
        "survey": sum(p.source == "survey" for p in papers),
        "awesome": sum(p.source == "awesome" for p in papers),
    }
    text = json.dumps({"counts": counts, "papers": rows}, indent=1, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


# ---- loading, linking, querying -------------------------------------------------------------------


def _norm(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", title.lower()).strip()


def link_methods(papers: Iterable[Paper]) -> None:
    """Fill ``Paper.methods`` from the registered methods' paper titles and :data:`ALGORITHM_LINKS`."""
    from prunekit.methods.base import METHODS  # filled by prunekit/__init__ (every method registers there)

    by_title: list[tuple[str, str]] = []
    registered = set(METHODS.names())
    for e in METHODS.entries():
        paper = _norm(getattr(e.obj, "paper", "") or "")
        if len(paper) >= 8:
            by_title.append((paper, e.name))
    for p in papers:
        title = _norm(p.title)
        found = {name for paper, name in by_title if title.startswith(paper) or paper.startswith(title)}
        found |= {m for m in ALGORITHM_LINKS.get(p.algorithm.lower(), ()) if m in registered}
        found |= {m for key, ms in TITLE_LINKS.items() if title.startswith(key) for m in ms if m in registered}
        p.methods = sorted(found)


def load(path: str | Path | None = None) -> list[Paper]:
    """The packaged catalog (or the JSON at ``path``), linked to the methods registered now. Raises
    :class:`~prunekit.errors.DataError` when the packaged catalog is missing."""
    if path is None:
        ref = resources.files("prunekit") / "data" / "catalog.json"
        if not ref.is_file():
            raise DataError("prunekit/data/catalog.json is missing: run `python -m prunekit.catalog build DIR`")
        text = ref.read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    papers = [Paper(**row) for row in json.loads(text)["papers"]]
    link_methods(papers)
    return papers


def query(
    papers: Iterable[Paper],
    *,
    type: str | None = None,
    when: str | None = None,
    year: int | None = None,
    since: int | None = None,
    venue: str | None = None,
    text: str | None = None,
    implemented: bool | None = None,
    code: bool | None = None,
    source: str | None = None,
) -> list[Paper]:
    """Filter papers. ``type``: type codes, all must match (``"WF"``); ``S``/``U`` mean any structured /
    weight pruning. ``when``: a section (before, during, after, early, dynamic, learning, application,
    combination, survey, other, toolbox). ``year``: exactly; ``since``: that year or later."""
    if when is not None and when not in SECTIONS:
        raise ConfigError(f"--when must be one of {', '.join(s for s in SECTIONS if s)}, got {when!r}")
    out = []
    for p in papers:
        if type:
            ok = True
            for code_ in type.upper():
                if code_ == "S":
                    ok &= bool(p.structured)
                elif code_ == "U":
                    ok &= "W" in p.types
                else:
                    ok &= code_ in p.types
            if not ok:
                continue
        if when is not None and p.section != when:
            continue
        if year is not None and p.year != year:
            continue
        if since is not None and (p.year is None or p.year < since):
            continue
        if venue and venue.lower() not in p.venue.lower():
            continue
        if text and text.lower() not in f"{p.title} {p.algorithm} {p.application}".lower():
            continue
        if implemented is not None and bool(p.methods) != implemented:
            continue
        if code is not None and p.code_available != code:
            continue
        if source is not None and p.source != source:
            continue
        out.append(p)
    return out


def papers_for_method(name: str, papers: Iterable[Paper] | None = None) -> list[Paper]:
    """Catalog rows linked to the prunekit method ``name``."""
    return [p for p in (papers if papers is not None else load()) if name in p.methods]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m prunekit.catalog build DIR [--out PATH]``: regenerate the packaged JSON."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "build" or len(args) < 2:
        print("usage: python -m prunekit.catalog build DIR [--out PATH]", file=sys.stderr)
        return 2
    out = Path(args[args.index("--out") + 1]) if "--out" in args else Path(__file__).parent / "data" / "catalog.json"
    papers = build(args[1])
    write_json(papers, out)
    n_s = sum(p.source == "survey" for p in papers)
    print(f"wrote {out}: {len(papers)} rows ({n_s} from {SURVEY_FILE}, {len(papers) - n_s} from {AWESOME_FILE})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
