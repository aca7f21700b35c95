"""Regression entries: fixed-seed inputs, weights and outputs of each cell, one file per cell (``NAME.pt``).

A test (tests/test_cells_contract.py) reloads the weights and checks the outputs, so an unintended change to a
cell's maths fails (sru's test/regression idea). After an INTENDED change, or for a new cell, write that cell's
entry deliberately and say why in the commit:

    python -m tests.regression update CELL [CELL ...]

It rewrites only the cells it names. A cell without an entry is skipped with that command in the reason, and
fails where CI=true, so the test can always fail.
"""
from __future__ import annotations

from pathlib import Path

import torch

from suite import cells

HERE = Path(__file__).parent
B, T, I, H = 3, 6, 5, 7


def build(name: str, input_size: int, hidden_size: int, **opts) -> cells.RecurrentCell:
    """Build a registered cell; a cell that adds x unweighted (``needs_square``: mut1, mut2) gets its learned input
    projection when the sizes differ."""
    if getattr(cells.CELLS.get(name).builder, "needs_square", False) and input_size != hidden_size:
        opts.setdefault("project_input", True)
    return cells.build(name, input_size, hidden_size, **opts)


def reference_case(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1234)
    cell = build(name, I, H)
    cell.eval()  # batch norm (ligru) in inference mode: deterministic and batch-independent
    with torch.no_grad():
        for p in cell.parameters():  # every parameter non-trivial, including zero-initialised biases
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(B, T, I)
    with torch.no_grad():
        out, state = cell(x)
    states = (state,) if isinstance(state, torch.Tensor) else tuple(state)
    return {"x": x, "out": out, "state": torch.stack(states), **{f"p.{k}": v.detach().clone()
                                                                  for k, v in cell.state_dict().items()}}


def entry_path(name: str) -> Path:
    return HERE / f"{name}.pt"


def load(name: str) -> dict[str, torch.Tensor] | None:
    """The stored entry of cell ``name``, or None where it has none."""
    path = entry_path(name)
    return torch.load(path) if path.exists() else None


def update(name: str) -> Path:
    """Write the entry of cell ``name`` (and of no other)."""
    cells.CELLS.get(name)  # an unknown name: the registry's one-line error, before anything is written
    path = entry_path(name)
    torch.save(reference_case(name), path)
    return path
