"""The package's layout rules: a curated public surface, no private names across modules, small files.

Import circles and layer order are checked by the import-linter contract in pyproject.toml (`.ci/run` runs
`lint-imports`); the types by mypy, lint and docstrings of the public API by ruff.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import prunekit

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "prunekit"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def test_all_is_sorted_unique_and_every_name_exists():
    names = prunekit.__all__
    assert names == sorted(names) and len(set(names)) == len(names)
    missing = [n for n in names if not hasattr(prunekit, n)]
    assert not missing


def test_readme_api_section_lists_exactly_all():
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ") and "`" in line]
    listed = [n for line in table for n in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", line.split("|")[2])]
    assert len(listed) == len(set(listed)), "a name is listed twice in the README's API section"
    assert sorted(listed) == sorted(prunekit.__all__)


def test_every_module_all_names_exist():
    for name in _modules():
        if name.endswith("__main__"):
            continue  # importing it runs the command line
        mod = importlib.import_module(name)
        for n in getattr(mod, "__all__", ()):
            assert hasattr(mod, n), f"{name}.__all__ names {n!r}, which it does not define"


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prunekit"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{name}: from {node.module} import {alias.name}")
    assert not offenders, "\n".join(offenders)


def _private_uses_in_tests() -> list[str]:
    """Where a test file reaches a private name of prunekit: ``from prunekit.x import _y``, a private module
    (``prunekit.x._y``), ``m._y`` on a name bound to a prunekit module or object, or ``setattr(m, "_y", ...)``."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text())
        bound = {"pk", "prunekit"}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prunekit"):
                if any(p.startswith("_") and not p.startswith("__") for p in node.module.split(".")):
                    found.append(f"{path.name}: from {node.module} import ...")
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.name}: from {node.module} import {alias.name}")
                    bound.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                bound.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("prunekit"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and re.fullmatch(r"_[a-zA-Z]\w*", node.attr)
                and not node.attr.endswith("__")
            ):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in bound:
                    found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("setattr") and len(node.args) >= 2:
                target, attr = node.args[0], node.args[1]
                if (
                    isinstance(attr, ast.Constant)
                    and str(attr.value).startswith("_")
                    and isinstance(target, ast.Name)
                    and target.id in bound
                ):
                    found.append(f"{path.name}:{node.lineno}: setattr({target.id}, {attr.value!r})")
    return found


def test_tests_use_public_names_only():
    """Tests exercise the public surface: a private name is an implementation detail a test must not pin."""
    assert not _private_uses_in_tests()


def test_no_file_over_600_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert not {n: c for n, c in long.items() if c > MAX_LINES}


def test_every_top_level_module_has_a_place_in_the_import_layers():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in config if c["type"] == "layers")["layers"]
    placed = {name.strip("() ") for layer in layers for name in re.split(r"[|:]", layer)}
    top = {
        p.stem if p.is_file() else p.name
        for p in PKG.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    assert top <= placed, f"not in any layer of the import contract: {sorted(top - placed)}"


MIRRORED = ("criteria", "granularity", "allocation", "schedules", "calibration", "apply", "methods", "surgery")


def test_every_module_of_the_core_and_of_surgery_has_its_test_file():
    """Tests mirror the package: prunekit/<package>/<module>.py is tested in tests/<package>/test_<module>.py."""
    tests = ROOT / "tests"
    missing = []
    for package in MIRRORED:
        for path in sorted((PKG / package).rglob("*.py")):
            if path.name.startswith("_"):
                continue
            rel = path.relative_to(PKG)
            expected = tests / rel.parent / f"test_{rel.name}"
            if not expected.is_file():
                missing.append(f"{rel} -> {expected.relative_to(ROOT)}")
    assert not missing, "modules without their test file:\n" + "\n".join(missing)
