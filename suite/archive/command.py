"""The commands ``rnnsuite export`` and ``rnnsuite import`` (``rnnsuite report --from FILE`` imports with
:func:`import_archive` into throw-away stores: :mod:`suite.report.command`)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..tracking import mask, runs_dir
from . import restore
from .fmt import read_archive


def run_export(args) -> int:
    from .export import export_sweep

    got = export_sweep(args.name, args.output, storage=args.storage, tracking_uri=args.tracking_uri,
                       with_checkpoints=args.with_checkpoints)
    extra = f", {got['checkpoints']} checkpoints" if args.with_checkpoints else ""
    print(f"exported sweep {got['name']} to {got['path']} ({got['bytes'] / 1e6:.2f} MB: {got['studies']} studies, "
          f"{got['trials']} trials, {got['runs']} MLflow runs, {got['metric_values']} metric values, "
          f"{got['artifacts']} artifacts{extra})")
    return 0


def import_archive(path, storage: str | None = None, tracking_uri: str | None = None,
                   checkpoints_to: Path | None = None) -> dict:
    """Validate the archive and the destination, then write; returns what happened ("imported", "unchanged")."""
    with tempfile.TemporaryDirectory(prefix="rnnsuite-import-") as tmp:
        archive = read_archive(path, tmp)
        trials = restore.build_trials(archive)
        dest = restore.Destination(storage, tracking_uri)
        state, exp = restore.inspect(dest, archive)
        result = {"name": archive.name, "runs": len(archive.runs), "trials": len(archive.trials),
                  "studies": len(archive.studies), "tracking_uri": dest.tracking_uri, "storage": dest.storage_url}
        if state == "same":
            return {**result, "status": "unchanged"}
        if state == "interrupted":
            restore.clear_interrupted(dest, archive, exp)
        ids = restore.write_mlflow(dest, archive, exp, checkpoints_to)
        restore.write_optuna(dest, archive, trials, ids)
        restore.finish(dest, archive)
        return {**result, "status": "imported" if state == "empty" else "imported again (an earlier import "
                "was interrupted)"}


def run_import(args) -> int:
    got = import_archive(args.file, storage=args.storage, tracking_uri=args.tracking_uri,
                         checkpoints_to=runs_dir() / "checkpoints")
    where = f"MLflow {mask(got['tracking_uri'])}, Optuna {mask(got['storage'])}"
    if got["status"] == "unchanged":
        print(f"sweep {got['name']}: already imported, nothing to do ({where})")
    else:
        print(f"sweep {got['name']} {got['status']}: {got['studies']} studies, {got['trials']} trials, "
              f"{got['runs']} MLflow runs into {where}")
    return 0
