"""``rnnsuite report NAME``: a sweep's MLflow runs and Optuna studies -> one comparison report.

Writes to DIR (default reports/NAME): ``index.html`` (self-contained: figures inlined, no network), ``report.md``
with its PNG figures beside it, a CSV of every table and figure (each figure can be redrawn elsewhere) and
``claims.json``, every sentence of the summary with its numbers, recomputed from the CSVs alone by
``python -m suite.report.check DIR``. The same files are logged under ``report/`` in the sweep's parent MLflow
run.

The modules form one layering, each importing only those before it (tests/test_report_layers.py checks it):

* :mod:`.keys` (the sweep file's ``report:`` block), :mod:`.stats` and :mod:`.scale` (the statistics);
* :mod:`.data` reads a sweep from its stores; :mod:`.tables` holds the records (:class:`~.tables.Table`,
  :class:`~.tables.Analysis`), the display format and the leaderboard;
* the other tables: :mod:`.verdicts`, :mod:`.gates`, :mod:`.tuning` (with fairness), :mod:`.evidence`; then
  :mod:`.analysis` computes them all, :mod:`.claims` states the summary and :mod:`.check` recomputes it;
* :mod:`.figures`, :mod:`.plots` and :mod:`.design` draw; :mod:`.render` renders a document to HTML and
  Markdown; :mod:`.provenance` and :mod:`.document` write its sections;
* :mod:`.command` builds, writes and logs a report (``rnnsuite report``, also ``--from`` an archive).

The synthetic sweeps of the report's scale benchmark (``python -m suite.report N``) and of the tests are written
by :mod:`suite.bench.synth`, outside the report: no report module imports it.

The public names below are imported on first use, so that importing :mod:`.keys` (the sweep does) or
:mod:`.data` (``rnnsuite export`` does) does not pull in the whole report.
"""
from __future__ import annotations

from importlib import import_module

_PUBLIC = {  # name -> the module that defines it
    "build_report": "command", "run_report": "command", "analyse": "analysis", "check_claims": "check",
    "DEFAULT_REFERENCE": "tables",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
