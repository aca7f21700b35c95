"""Regenerate tests/regression/cells.pt: fixed-seed outputs of every cell.

Run deliberately (``python tests/regression/make_cells.py``) after an INTENDED change to a cell's maths, and
say why in the commit; tests/test_cells_contract.py fails on any unintended drift (sru's test/regression idea).
"""
from __future__ import annotations

from pathlib import Path

import torch

from suite import cells

HERE = Path(__file__).parent
B, T, I, H = 3, 6, 5, 7


def reference_case(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1234)
    cell = cells.build(name, I, H, **({"project_input": True} if name in ("mut1", "mut2") else {}))
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


if __name__ == "__main__":
    torch.save({name: reference_case(name) for name in cells.names()}, HERE / "cells.pt")
    print(f"wrote {HERE / 'cells.pt'} for {len(cells.names())} cells")
