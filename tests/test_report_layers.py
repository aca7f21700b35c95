"""The report package is one layering (suite/report/__init__.py): each module imports only modules before it in
LAYERS, anywhere in the file (a function-local import included), so no cycle can come back. The rules on private
names and module length are tests/test_layout.py's, for the whole package. Read with ast: nothing is imported."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "suite" / "report"
LAYERS = ["keys", "stats", "scale", "data", "tables", "verdicts", "gates", "tuning", "evidence", "analysis",
          "claims", "check", "findings", "figures", "plots", "design", "render", "provenance", "document", "command"]
OUTSIDE = {"__init__", "__main__"}  # the lazy re-exports and `python -m suite.report N`


def modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in OUTSIDE)


def sibling_imports(name: str) -> list[tuple[str, list[str]]]:
    """(module, names) for every `from .X import names` / `from . import X` in the module, at any depth."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.append((node.module.split(".")[0], [a.name for a in node.names]))
            else:
                out += [(a.name, []) for a in node.names]
    return out


def imports_from_above(name: str) -> list[str]:
    below = set(LAYERS[:LAYERS.index(name)])
    return sorted({module for module, _ in sibling_imports(name) if module not in below})


def test_every_module_has_a_layer():
    assert sorted(LAYERS) == modules()


@pytest.mark.parametrize("name", modules())
def test_a_module_imports_only_the_layers_before_it(name):
    above = imports_from_above(name)
    assert above == [], f"suite/report/{name}.py imports {above}, which are not below it"


def test_the_check_sees_an_import_from_above(tmp_path, monkeypatch):
    """Not vacuous: a table module that reached up into the figures would be caught."""
    (tmp_path / "tables.py").write_text("from .data import SweepData\n\n\ndef f():\n    from .figures import _dpi\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    assert imports_from_above("tables") == ["figures"]
    assert sibling_imports("tables")[1] == ("figures", ["_dpi"])
