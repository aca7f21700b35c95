"""One small registry, shared by cells and tasks, and the plugins that add to it from outside the package.

A registry maps a canonical name to a builder plus a one-line description and the paper it comes from, so
that ``rnnsuite list`` can show every entry without building it. A duplicate name is refused in one line when
the module that registers it is imported; an unknown name raises an error that lists the valid ones (as
lm-evaluation-harness does), because a typo in a sweep file should cost seconds, not a run.

Plugins (docs/extending.md): the modules named in ``RNNSUITE_PLUGINS=module[,module]`` and the entry points of
the groups ``rnnsuite.cells`` and ``rnnsuite.tasks`` are imported once per process, on the first question put to
a registry (or at the CLI's start), so that their ``@register`` lines run before any name is looked up. Sweep
workers are fresh processes: they inherit the variable and see the same installed entry points.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

PLUGINS_ENV = "RNNSUITE_PLUGINS"
ENTRY_POINT_GROUPS = ("rnnsuite.cells", "rnnsuite.tasks")


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
    def __init__(self, kind: str, group: str | None = None, name_attribute: str | None = None):
        self.kind = kind  # "cell" or "task": used in error messages
        self.group = group  # the entry-point group plugins of this kind are published under (None: none)
        self.name_attribute = name_attribute  # the builder's attribute that gets its registered name (None: none)
        self._entries: dict[str, Entry] = {}
        if group is not None:
            _REGISTRIES[group] = self

    def register(self, name: str, summary: str, source: str) -> Callable:
        """Class decorator: register the class under its canonical ``name``, with a one-line ``summary`` for
        ``rnnsuite list`` and the paper (``source``) it implements; a name already taken is refused."""
        def decorator(builder):
            if name in self._entries:
                first = self._entries[name].builder
                raise SuiteError(f"duplicate {self.kind} name {name!r}: already registered by "
                                 f"{first.__module__}.{first.__qualname__}; choose another name")
            if self.name_attribute is not None:
                setattr(builder, self.name_attribute, name)
            self._entries[name] = Entry(name, builder, summary, source)
            return builder

        return decorator

    def names(self) -> list[str]:
        load_plugins()
        return list(self._entries)

    def entries(self) -> list[Entry]:
        load_plugins()
        return list(self._entries.values())

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._entries

    def options(self, name: str) -> dict[str, object]:
        """The keyword options ``name``'s builder accepts, with their defaults."""
        sig = inspect.signature(self.get(name).builder.__init__)
        return {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}

    def check_options(self, name: str, opts) -> None:
        """A SuiteError naming the first option in ``opts`` that ``name`` does not take, and the ones it does."""
        accepted = self.options(name)
        for key in opts:
            if key not in accepted:
                raise SuiteError(f"{self.kind} {name!r} does not take option {key!r}; its options: "
                                 f"{', '.join(accepted)}")

    def get(self, name: str) -> Entry:
        load_plugins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise SuiteError(f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}; valid "
                             f"{self.kind}s: {', '.join(self._entries)}") from None


_REGISTRIES: dict[str, Registry] = {}  # entry-point group -> its registry
_plugins: dict[str, object] = {}  # "started": loading began in this process; "error": why it failed


def plugin_modules() -> list[str]:
    """The modules ``RNNSUITE_PLUGINS`` names, in order (commas and spaces separate them)."""
    return [m for m in os.environ.get(PLUGINS_ENV, "").replace(",", " ").split() if m]


def load_plugins() -> None:
    """Import every plugin once per process: ``RNNSUITE_PLUGINS`` first, then the installed entry points.

    A plugin that fails (an import error, a duplicate name, an entry point that registers nothing under its name)
    raises a one-line SuiteError naming it, and so does every later question to a registry: a run never goes on
    with part of its plugins missing.
    """
    if "started" in _plugins:  # also when a plugin's own import asks a registry a question
        if "error" in _plugins:
            raise SuiteError(_plugins["error"])
        return
    _plugins["started"] = True
    try:
        for module in plugin_modules():
            _import(module, f"from {PLUGINS_ENV}")
        installed = metadata.entry_points()  # one scan of the installed distributions for both groups
        for group in ENTRY_POINT_GROUPS:
            for point in installed.select(group=group):
                _load_entry_point(point)
    except SuiteError as err:
        _plugins["error"] = str(err)
        raise


def _import(module: str, origin: str) -> None:
    try:
        importlib.import_module(module)
    except SuiteError as err:  # a duplicate name, or a plugin's own user-facing error
        raise SuiteError(f"plugin {module!r} ({origin}): {err}") from None
    except Exception as err:  # noqa: BLE001  (any failure of foreign code becomes one line, not a traceback)
        raise SuiteError(f"plugin {module!r} ({origin}) failed to import: {type(err).__name__}: "
                         f"{_one_line(err)}") from None


def _load_entry_point(point: metadata.EntryPoint) -> None:
    """An entry point ``name = module[:attr]`` imports the module whose ``@register("name", ...)`` line adds it.

    The registry is looked up after the import: registering imports the package (suite.cells or suite.tasks),
    which creates it and registers the built-in entries first, so a plugin cannot shadow one of them."""
    origin = f"entry point {point.name!r} of {point.group}"
    _import(point.module, origin)
    registry = _REGISTRIES.get(point.group)
    if registry is None or point.name not in registry:
        kind = registry.kind if registry is not None else point.group.rsplit(".", 1)[-1].rstrip("s")
        raise SuiteError(f"plugin {point.module!r} ({origin}) registered no {kind} named {point.name!r}: "
                         "the entry point's name must be the name its module registers")


def _one_line(err: BaseException) -> str:
    return " / ".join(line.strip() for line in str(err).splitlines() if line.strip()) or "(no message)"
