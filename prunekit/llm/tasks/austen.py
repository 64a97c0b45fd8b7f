"""Data of prunekit's offline lm-eval tasks, built deterministically from a locally installed Austen novel.

The task configs next to this file (``austen_lastword.yaml``, ``austen_cloze.yaml``) name
``custom_dataset: !function austen.lastword`` / ``austen.cloze``; lm-eval calls these functions, which build
the items from the novel (``prunekit.datasets.load_text``: the Debian package ``r-cran-janeaustenr``), write
them once to a JSON-lines file under prunekit's cache and return them as a ``datasets.DatasetDict`` with one
``test`` split. The same text always gives the same file (no randomness beyond a fixed seed); the file name
carries the build version, the item count and the SHA-256 of the source text, and a record next to it the
SHA-256 of the items.

The default novel is *Persuasion*: prunekit's benchmarks calibrate on *Emma* and fine-tune on the other
four novels, so the tasks read text that neither saw.

* ``lastword``: LAMBADA-style (Paperno et al. 2016) last-word prediction. A passage of 100-220 words
  ends with a sentence whose final word is removed; the model must produce that word. As in LAMBADA's
  construction the word must be guessable from the broader passage: it is a content word (not a stop word,
  3+ letters) that already occurs earlier in the passage.
* ``cloze``: multiple-choice sentence cloze in the style of the Story Cloze Test (Mostafazadeh et al. 2016):
  two consecutive sentences as context and four candidate next sentences, the true one and three sentences of
  similar length drawn from at least 200 sentences away in the same novel.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any

__all__ = [
    "BUILD_VERSION",
    "DEFAULT_TEXT",
    "SIZES",
    "build_cloze",
    "build_lastword",
    "cloze",
    "data_file",
    "data_record",
    "lastword",
]

BUILD_VERSION = 1
DEFAULT_TEXT = "persuasion"
SIZES = {"lastword": 200, "cloze": 200}
_SEEDS = {"lastword": 16_001, "cloze": 16_002}
_ABBREVIATIONS = {"Mr", "Mrs", "Dr", "St", "Esq", "Capt", "Col", "Sir", "Messrs", "Rev", "No"}
_STOP = set(
    "the and that with have this from they were been their there which would could what when whom will your "
    "into them then than more some such only very much must shall should upon said being other these those "
    "while where after before about again also here just like most over well ever never even every still "
    "though through himself herself itself myself yourself themselves nothing something anything all any "
    "are but can did does for had has her hers him his how its may not now one our out own she too was who "
    "why yet you off nor let many how".split()
)
_SPLIT = re.compile(r"(?<=[.!?])([\"']*)\s+(?=[\"']*[A-Z])")
_HEADING = re.compile(r"^(chapter|volume|vol\.|end of)\b", re.IGNORECASE)
_LAST_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]+)([^A-Za-z0-9\s]*)$", re.DOTALL)


def _paragraphs(text: str) -> list[str]:
    """Paragraphs (blank-line separated) with whitespace collapsed and the italics underscores removed;
    chapter headings and lines without a sentence end are dropped."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        p = re.sub(r"\s+", " ", block.replace("_", "")).strip()
        if p and not _HEADING.match(p) and re.search(r"[.!?][\"']*$", p):
            out.append(p)
    return out


def _sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph: split after ``.``, ``!`` or ``?`` (closing quotes kept) before a capital,
    except after abbreviations such as Mr. or Esq."""
    parts: list[str] = []
    start = 0
    for m in _SPLIT.finditer(paragraph):
        head = paragraph[start : m.start()]
        last = head.rsplit(" ", 1)[-1].rstrip(".")
        if last in _ABBREVIATIONS or (len(last) == 1 and last.isupper()):
            continue
        parts.append((head + m.group(1)).strip())
        start = m.end()
    parts.append(paragraph[start:].strip())
    return [s for s in parts if s]


def _sentence_stream(text: str) -> list[tuple[int, str]]:
    """(paragraph index, sentence) over the whole text, in order."""
    return [(i, s) for i, p in enumerate(_paragraphs(text)) for s in _sentences(p)]


def build_lastword(text: str, n: int = SIZES["lastword"], seed: int = _SEEDS["lastword"]) -> list[dict[str, Any]]:
    """LAMBADA-style items ``{"context", "target", "position"}``: ``context + " " + target`` is the passage
    (its final punctuation dropped)."""
    stream = [s for _, s in _sentence_stream(text)]
    items = []
    for i in range(1, len(stream)):
        m = _LAST_WORD.match(stream[i])
        if m is None or len(stream[i].split()) < 8:
            continue
        word = m.group(2)
        if len(word) < 3 or word.lower() in _STOP:
            continue
        passage = [stream[i]]
        j = i - 1
        while j >= 0 and len(passage) < 10 and sum(len(s.split()) for s in passage) < 100:
            passage.insert(0, stream[j])
            j -= 1
        words = sum(len(s.split()) for s in passage)
        if not 100 <= words <= 220:
            continue
        context = " ".join(passage[:-1] + [m.group(1)])
        if not re.search(rf"\b{re.escape(word)}\b", context):
            continue
        items.append({"context": context, "target": word, "position": i})
    if len(items) < n:
        raise ValueError(f"the text yields {len(items)} last-word items, fewer than the {n} asked for")
    chosen = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[k] for k in chosen]


def build_cloze(text: str, n: int = SIZES["cloze"], seed: int = _SEEDS["cloze"]) -> list[dict[str, Any]]:
    """Sentence-cloze items ``{"context", "choices", "label", "position"}``: the true third sentence of three
    consecutive ones in a paragraph among four choices."""
    stream = _sentence_stream(text)
    lengths = [len(s.split()) for _, s in stream]
    candidates = [
        i
        for i in range(2, len(stream))
        if stream[i][0] == stream[i - 1][0] == stream[i - 2][0]
        and 8 <= lengths[i] <= 40
        and sum(lengths[i - 2 : i]) >= 12
    ]
    if len(candidates) < n:
        raise ValueError(f"the text yields {len(candidates)} cloze items, fewer than the {n} asked for")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(candidates, n))
    items = []
    for i in chosen:
        pool = [
            k
            for k in range(len(stream))
            if abs(k - i) >= 200 and abs(lengths[k] - lengths[i]) <= max(2, lengths[i] // 4)
        ]
        distractors = [stream[k][1] for k in rng.sample(pool, 3)]
        choices = [stream[i][1], *distractors]
        order = list(range(4))
        rng.shuffle(order)
        items.append(
            {
                "context": f"{stream[i - 2][1]} {stream[i - 1][1]}",
                "choices": [choices[k] for k in order],
                "label": order.index(0),
                "position": i,
            }
        )
    return items


_BUILDERS = {"lastword": build_lastword, "cloze": build_cloze}


def _cache_root() -> Path:
    from prunekit.llm.models import cache_dir

    return Path(cache_dir()) / "lm_eval"


def data_file(kind: str, text_name: str = DEFAULT_TEXT, n: int | None = None) -> Path:
    """The JSON-lines file of task ``kind`` (``lastword`` or ``cloze``) built from ``text_name``; built on
    first use, then reused while the source text is unchanged."""
    from prunekit.datasets import load_text

    n = SIZES[kind] if n is None else n
    text = load_text(text_name)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    path = _cache_root() / f"austen_{kind}-v{BUILD_VERSION}-{text_name}-{n}-{digest[:12]}.jsonl"
    if not path.exists():
        items = _BUILDERS[kind](text, n)
        payload = "".join(json.dumps(item, sort_keys=True) + "\n" for item in items)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(payload)
        record = {
            "task": f"austen_{kind}",
            "build_version": BUILD_VERSION,
            "text": text_name,
            "text_sha256": digest,
            "items": n,
            "items_sha256": hashlib.sha256(payload.encode("utf-8")).hexdigest(),
        }
        path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(path)
    return path


def data_record(kind: str, text_name: str = DEFAULT_TEXT, n: int | None = None) -> dict[str, Any]:
    """The provenance record of a task's data file (text, its SHA-256, item count, items' SHA-256)."""
    path = data_file(kind, text_name, n)
    return {**json.loads(path.with_suffix(".json").read_text()), "file": str(path)}


def _dataset(kind: str, **kwargs: Any) -> Any:
    import datasets

    text_name = kwargs.get("text", DEFAULT_TEXT)
    n = kwargs.get("items")
    path = data_file(kind, text_name, n)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def lastword(**kwargs: Any) -> Any:
    """lm-eval ``custom_dataset`` of ``austen_lastword`` (``metadata`` may set ``text`` and ``items``)."""
    return _dataset("lastword", **kwargs)


def cloze(**kwargs: Any) -> Any:
    """lm-eval ``custom_dataset`` of ``austen_cloze`` (``metadata`` may set ``text`` and ``items``)."""
    return _dataset("cloze", **kwargs)
