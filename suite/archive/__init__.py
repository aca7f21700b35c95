"""Portable sweep archives: ``rnnsuite export`` / ``rnnsuite import`` / ``rnnsuite report --from``.

One ``.tar.gz`` holds a sweep's Optuna studies (every trial) and its MLflow runs (tags, params, full metric
histories, the artifacts reports read; checkpoints when asked), with a manifest that records the format version,
the versions of rnnsuite, MLflow and Optuna, the sweep file and a SHA-256 of every member. Plain JSON lines and
CSV, so that pandas alone reads an archive (docs/archives.md).

Modules: :mod:`.fmt` (the format: members, manifest, reading and validating), :mod:`.export` (stores ->
archive), :mod:`.restore` (archive -> stores: new run ids remapped everywhere, idempotent, refusals),
:mod:`.command` (the CLI commands; ``report --from`` builds its report in :mod:`suite.report.command`).
"""
from .fmt import FORMAT, FORMAT_VERSION, Archive, read_archive  # noqa: F401
