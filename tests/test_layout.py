"""The source tree keeps the shape docs/extending.md describes: no module of the package over 400 lines, and no
module importing another module's private (underscore) names. Read from the files' text and syntax trees; nothing
of the package is imported."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "suite"
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_package_has_modules_to_check():
    names = {p.relative_to(PACKAGE).as_posix() for p in modules()}
    assert {"cli.py", "cells/contract.py", "sweep/__init__.py", "report/__init__.py", "bench/__init__.py"} <= names


def test_no_module_is_over_400_lines():
    long = {p.relative_to(ROOT).as_posix(): n for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def private_imports(path: Path, root: Path = ROOT) -> list[str]:
    """`from X import _name` where X is another module of the package (relative, or suite.*)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        ours = node.level > 0 or (node.module or "").split(".")[0] == "suite"
        if not ours:
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                found.append(f"{path.relative_to(root).as_posix()}:{node.lineno}: {alias.name}")
    return found


def test_no_module_imports_another_modules_private_names():
    found = [hit for p in modules() for hit in private_imports(p)]
    assert found == [], "private names imported across modules:\n" + "\n".join(found)


def test_the_private_import_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from __future__ import annotations\nfrom .train import _diag_batch\n"
                   "from suite.cells.base import _PLAIN\nfrom os import _exit\nfrom .x import __version__\n")
    assert [hit.split(": ", 1)[1] for hit in private_imports(bad, tmp_path)] == ["_diag_batch", "_PLAIN"]
