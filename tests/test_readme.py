"""The README's commands work as shown: every `rnnsuite` line names a real subcommand whose help lists each flag the
line uses, `rnnsuite list` runs, the make targets exist, the Python snippet compiles and every linked file exists."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def rnnsuite_lines() -> list[list[str]]:
    lines = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("rnnsuite "):
                lines.append(shlex.split(line)[1:])
    return lines


def cli(*args):
    return subprocess.run([sys.executable, "-m", "suite", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_the_readme_shows_commands():
    assert len(rnnsuite_lines()) >= 8
    assert len(README.splitlines()) <= 200  # two screens, the reference lives in docs/


@pytest.mark.parametrize("argv", rnnsuite_lines(), ids=lambda a: " ".join(a)[:60])
def test_each_rnnsuite_line_uses_a_real_subcommand_and_flags(argv):
    help_text = cli(argv[0], "--help")
    assert help_text.returncode == 0, help_text.stderr
    for flag in [a for a in argv if a.startswith("--")]:
        assert flag in help_text.stdout, f"{flag} is not an option of rnnsuite {argv[0]}"


def test_rnnsuite_list_runs_as_shown():
    out = cli("list")
    assert out.returncode == 0 and "gru" in out.stdout and "smoke" in out.stdout


def test_the_make_targets_exist():
    for target in ("demo", "test", "lock"):
        dry = subprocess.run(["make", "-n", target], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert dry.returncode == 0, (target, dry.stderr)
    assert "--quiet" in subprocess.run(["make", "-n", "demo", "QUIET=1"], capture_output=True, text=True, cwd=ROOT,
                                       timeout=60).stdout
    assert "-c requirements.lock" in subprocess.run(["make", "-n", "-B", "setup"], capture_output=True, text=True,
                                                    cwd=ROOT, timeout=60).stdout


def test_the_python_snippet_compiles_and_links_resolve():
    (snippet,) = blocks("python")
    compile(textwrap.dedent(snippet), "README snippet", "exec")
    for target in re.findall(r"\]\(([^)#]+)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
