"""Compare two contrast-suite reports (``prunekit report ... --out DIR`` writes ``DIR/tables.md``) cell by cell.

Accuracy and achieved sparsity are deterministic for a fixed seed and data (latency is not: it follows the
machine's load), so any change in them comes from the code. Prints, per suite and method, how many of the
(setting, target) cells changed and by how much, and writes the same as markdown with ``--out``.

    python benchmarks/contrasts_diff.py docs/results/contrasts/tables.md /tmp/new/tables.md --out diff.md
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path


def parse(path: Path) -> dict[tuple[str, str, str, str], dict[str, str]]:
    """The "all runs" rows of a report: (suite, setting, method, target) -> column -> cell."""
    out: dict[tuple[str, str, str, str], dict[str, str]] = {}
    suite, cols = "", None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            suite, cols = line[3:].strip(), None
        elif line.startswith("| setting | method | target"):
            cols = [c.strip() for c in line.strip().strip("|").split("|")]
        elif cols and line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == len(cols):
                row = dict(zip(cols, cells))
                out[(suite, row["setting"], row["method"], row["target"])] = row
    return out


def compare(old: Path, new: Path) -> list[str]:
    a, b = parse(old), parse(new)
    lines = [
        f"{len(a)} cells in {old}, {len(b)} in {new}; {len(set(a) - set(b))} only in the first, "
        f"{len(set(b) - set(a))} only in the second",
        "",
        "| suite | method | cells | accuracy changed | max abs change (points) | mean change | sparsity changed |",
        "|---|---|---|---|---|---|---|",
    ]
    by: dict[tuple[str, str], list[tuple[float, bool]]] = defaultdict(list)
    for k in sorted(set(a) & set(b)):
        d = float(b[k]["accuracy %"]) - float(a[k]["accuracy %"])
        by[(k[0], k[2])].append((d, a[k]["sparsity %"] != b[k]["sparsity %"]))
    for (suite, method), rows in sorted(by.items()):
        ds = [d for d, _ in rows]
        lines.append(
            f"| {suite} | {method} | {len(rows)} | {sum(abs(d) > 0.05 for d in ds)} | "
            f"{max(abs(d) for d in ds):.1f} | {sum(ds) / len(ds):+.2f} | {sum(s for _, s in rows)} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    lines = compare(args.old, args.new)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
