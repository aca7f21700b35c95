"""The tasks: data, loss, metrics, baseline and published numbers behind one contract (see :mod:`.base`).

    >>> from suite import tasks
    >>> task = tasks.build("copy", length=200)
    >>> batch = next(task.train_batches(seed=0, device="cpu"))      # x (64, 220) long, y (64, 220)
    >>> task.summarize(task.score(outputs, batch))                  # {"loss": ..., "acc": ...}

Named settings (``copy-T100``, ``ptb-word``, ...) are YAML files shipped in ``suite/tasks/settings/`` (the
repository's top-level ``tasks/`` links there): partial run configs with a ``description`` and a ``task``
section, and sometimes suggestions for other sections (``model``, ``optim``, ``train``).

A new task, in the package or in a plugin outside it (docs/extending.md), subclasses :class:`Task` (or
:class:`SyntheticTask` for generated data) and adds one ``@register(name, summary, paper)`` line; the names in
``__all__`` are the stable API for it.
"""
from __future__ import annotations

from pathlib import Path

from ..config import load_yaml
from ..registry import SuiteError, did_you_mean
from . import adding, copy, lm, mnist, mnist1d  # noqa: F401  (importing registers the tasks)
from .base import (TASKS, Baseline, Batch, Published, SolvedRule, SyntheticTask, Task, Totals, check_bool,
                   check_choice, check_int, exact, register)

__all__ = ["build", "names", "options", "named_settings", "setting_paths", "load_settings",
           "settings_dirs", "register", "Task", "SyntheticTask", "Batch", "Baseline", "Published", "SolvedRule",
           "Totals", "check_int", "check_bool", "check_choice", "exact", "TASKS"]

SETTINGS_DIR = Path(__file__).parent / "settings"  # package data: found by an installed package too


def names() -> list[str]:
    return TASKS.names()


def options(name: str) -> dict[str, object]:
    """The keyword options a task accepts, with their defaults."""
    return TASKS.options(name)


def build(name: str, **opts) -> Task:
    """Build the registered task ``name``; unknown names, unknown options and bad values raise a SuiteError."""
    entry = TASKS.get(name)
    TASKS.check_options(name, opts)
    return entry.builder(**opts)


def settings_dirs() -> list[Path]:
    """Where named settings live: the package's folder, and a checkout's top-level tasks/ if it is another one."""
    dirs = [SETTINGS_DIR]
    root = Path(__file__).resolve().parents[2]
    top = root / "tasks"
    if (root / "pyproject.toml").is_file() and top.is_dir() and top.resolve() != SETTINGS_DIR.resolve():
        dirs.append(top)
    return dirs


def setting_paths() -> dict[str, Path]:
    """Setting name (file stem) -> its file, sorted by name; the package's files win a clash. Reads no file."""
    found: dict[str, Path] = {}
    for folder in settings_dirs():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def named_settings() -> dict[str, tuple[Path, str]]:
    """Setting name (file stem) -> (path, description), sorted by name; the package's files win a clash.

    A file that cannot be read is listed with its one-line problem as the description; load_settings raises
    that problem for its own name only, since it reads just the file it is asked for."""
    found: dict[str, tuple[Path, str]] = {}
    for name, path in setting_paths().items():
        try:
            description = str(load_yaml(path).get("description", ""))
        except SuiteError as err:
            description = f"(cannot be used: {err})"
        found[name] = (path, description)
    return found


def load_settings(name_or_path) -> dict:
    """The content of a named setting (``copy-T100``) or of a YAML file; problems raise a one-line SuiteError."""
    text = str(name_or_path)
    known = setting_paths()
    if text in known:
        path = known[text]
    elif text.endswith((".yaml", ".yml")) or Path(text).exists():
        path = Path(text)
    else:
        raise SuiteError(f"unknown task setting {text!r}{did_you_mean(text, known)}; named settings: "
                         f"{', '.join(known)} (or a YAML path)")
    content = load_yaml(path)
    task = content.get("task")
    if not isinstance(task, dict) or not isinstance(task.get("name"), str):
        raise SuiteError(f"task settings {path}: needs a 'task:' mapping with a 'name:' (one of {', '.join(names())})")
    return content
