"""The cell zoo: every cell behind one contract (see :mod:`suite.cells.contract`).

    >>> from suite import cells
    >>> cell = cells.build("sgru", input_size=10, hidden_size=32)
    >>> outputs, h = cell(torch.randn(4, 100, 10))   # (4, 100, 32), (4, 32)

A new cell, in the package or in a plugin outside it (docs/extending.md), subclasses :class:`RecurrentCell` and
adds one ``@register(name, summary, paper)`` line; ``RecurrentCell`` and ``register`` are the stable API for it.
"""
from __future__ import annotations

from . import gru, lstm, minimal, mut, rnn, scan  # noqa: F401  (importing registers the cells)
from .contract import RecurrentCell, Trace, check_size
from .init import InitRule
from .registry import CELLS, register

__all__ = ["build", "names", "options", "register", "RecurrentCell", "InitRule", "Trace", "CELLS"]


def names() -> list[str]:
    return CELLS.names()


def options(name: str) -> dict[str, object]:
    """The keyword options a cell accepts, with their defaults."""
    return CELLS.options(name)


def build(name: str, input_size: int, hidden_size: int, **opts) -> RecurrentCell:
    """Build the registered cell ``name``; unknown names and options raise a SuiteError naming them."""
    entry = CELLS.get(name)
    check_size("input_size", input_size)
    check_size("hidden_size", hidden_size)
    CELLS.check_options(name, opts)
    return entry.builder(input_size, hidden_size, **opts)
