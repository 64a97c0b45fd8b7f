"""How the package is laid out: files, lines, public names, import circles, docstring coverage.

Writes ``docs/results/house/<label>.json`` (and prints it) so a layout change can state its before and after
with one command::

    python benchmarks/house.py --label after

- files / lines: ``prunekit/**/*.py`` (lines as ``wc -l`` counts them), and the files over 600 lines;
- public names: per public module (no part of its dotted path starts with ``_``), the names it defines and
  exposes: those of its ``__all__`` when it declares one (re-exports count where they are defined), else its
  module-level names not starting with ``_``; and ``len(prunekit.__all__)``;
- import circles: strongly connected components of more than one module in the module import graph
  (``grimp``, every import, also those inside functions), with their sizes;
- docstring coverage: public functions and classes (module level, and public methods of public classes)
  that have a docstring;
- private imports: ``from a import _b`` across modules of the package.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "prunekit"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _public_module(name: str) -> bool:
    return not any(p.startswith("_") for p in name.split(".")[1:] if p != "__init__" and p != "__main__")


def _defined_names(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append((node.name, node))
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    names.append((t.id, node))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append((node.target.id, node))
    return names


def _declared_all(tree: ast.Module) -> list[str] | None:
    """The module's ``__all__`` when it is a literal list or tuple of strings, else None."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            try:
                return [str(v) for v in ast.literal_eval(node.value)]
            except ValueError:
                return None
    return None


def _documentable(tree: ast.Module):
    """Public functions and classes at module level, and public methods of public classes."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            yield node
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                        yield sub


def _cycles() -> list[list[str]]:
    import grimp

    sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph("prunekit", include_external_packages=False, exclude_type_checking_imports=True)
    mods = sorted(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & set(mods) for m in mods}
    # Tarjan's strongly connected components
    index, low, on, stack, comps, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for m in mods:
        if m not in index:
            visit(m)
    return sorted(comps, key=len, reverse=True)


def measure() -> dict:
    mods = _modules()
    lines = {name: len(path.read_text().splitlines()) for name, path in mods.items()}
    public_names = 0
    modules_with_all = 0
    documented = total_doc = 0
    undocumented: list[str] = []
    private_imports: list[str] = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        if _public_module(name):
            declared = _declared_all(tree)
            defined = [n for n, _ in _defined_names(tree) if not n.startswith("_") and n != "__all__"]
            # names this module defines and exposes (re-exports are counted where they are defined)
            public_names += len([n for n in defined if n in declared]) if declared is not None else len(defined)
            modules_with_all += declared is not None
            for node in _documentable(tree):
                total_doc += 1
                if ast.get_docstring(node):
                    documented += 1
                else:
                    undocumented.append(f"{name}.{node.name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("prunekit")
                or (isinstance(node, ast.ImportFrom) and node.level)
            ):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private_imports.append(f"{name}: {node.module or '.' * node.level}.{alias.name}")
    sys.path.insert(0, str(ROOT))
    import prunekit

    cycles = _cycles()
    return {
        "files": len(mods),
        "lines": sum(lines.values()),
        "files_over_600_lines": {n: c for n, c in sorted(lines.items(), key=lambda kv: -kv[1]) if c > 600},
        "largest_file_lines": max(lines.values()),
        "public_modules": sum(1 for n in mods if _public_module(n)),
        "private_modules": sum(1 for n in mods if not _public_module(n)),
        "public_names": public_names,
        "modules_declaring_all": modules_with_all,
        "all_names": len(prunekit.__all__),
        "all_sorted": list(prunekit.__all__) == sorted(prunekit.__all__),
        "import_circles": len(cycles),
        "circle_sizes": [len(c) for c in cycles],
        "circles": cycles,
        "docstring_coverage": round(documented / max(total_doc, 1), 3),
        "documented": documented,
        "documentable": total_doc,
        "private_imports_across_modules": len(private_imports),
        "private_imports": private_imports,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="now", help="file name under docs/results/house/ (default: now)")
    args = ap.parse_args()
    data = measure()
    out = ROOT / "docs" / "results" / "house" / f"{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    brief = {k: v for k, v in data.items() if k not in ("circles", "private_imports")}
    print(json.dumps(brief, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
