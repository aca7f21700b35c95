"""The cell registry (one instance of :class:`suite.registry.Registry`)."""
from __future__ import annotations

from ..registry import Registry

CELLS = Registry("cell", "rnnsuite.cells")


def register(name: str, summary: str, source: str):
    """Class decorator: register a RecurrentCell subclass under its canonical name."""
    inner = CELLS.register(name, summary, source)

    def decorator(cls):
        cls.registered_name = name
        return inner(cls)

    return decorator
