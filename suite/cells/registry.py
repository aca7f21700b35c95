"""The cell registry (one instance of :class:`suite.registry.Registry`)."""
from __future__ import annotations

from ..registry import Registry

CELLS = Registry("cell", "rnnsuite.cells", name_attribute="registered_name")
register = CELLS.register  # class decorator: @register(name, summary, paper) on a RecurrentCell subclass
