"""One small registry, shared by cells and tasks.

A registry maps a canonical name to a builder plus a one-line description and the paper it comes from, so
that ``rnnsuite list`` can show every entry without building it. Duplicate names are rejected when the module
that registers them is imported; an unknown name raises an error that lists the valid ones (as
lm-evaluation-harness does), because a typo in a sweep file should cost seconds, not a run.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable


class SuiteError(ValueError):
    """A user-facing error: the CLI prints its message as one line and exits 2, without a traceback."""


def did_you_mean(name, options) -> str:
    """`` (did you mean 'x'?)`` for the closest of `options` to a mistyped `name`, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable[..., Any]
    summary: str  # one line for `rnnsuite list`
    source: str  # the paper (or origin) it implements


class Registry:
    def __init__(self, kind: str):
        self.kind = kind  # "cell" or "task": used in error messages
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, summary: str, source: str) -> Callable:
        def decorator(builder):
            if name in self._entries:
                raise KeyError(f"duplicate {self.kind} name {name!r}")
            self._entries[name] = Entry(name, builder, summary, source)
            return builder

        return decorator

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise SuiteError(f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}; valid "
                             f"{self.kind}s: {', '.join(self._entries)}") from None
