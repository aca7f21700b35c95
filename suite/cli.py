"""The ``rnnsuite`` command line (also ``python -m suite``).

Every subcommand prints help; a user error (a SuiteError) is one line on stderr and exit code 2, never a
traceback. Heavy libraries (lightning, mlflow, optuna) are imported inside the commands that need them so
that ``rnnsuite list`` and ``--help`` answer at once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__, ui
from .config import build_config, load_yaml, parse_override, shipped_sweeps
from .registry import SuiteError, load_plugins
from .storage import check_storage_url, storage_url

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line plus exit 2, like every other user error
        raise SuiteError(f"{self.prog}: {message}")


def _cmd_list(args) -> int:
    from . import cells, tasks  # torch: loaded by the commands that need it, so that --help answers at once

    what = args.what
    if what in ("all", "cells"):
        print("cells:")
        for e in cells.CELLS.entries():
            print(f"  {e.name:<17} {e.summary}  [{e.source}]")
    if what in ("all", "tasks"):
        print("tasks:")
        for e in tasks.TASKS.entries():
            print(f"  {e.name:<17} {e.summary}  [{e.source}]")
        print("task settings (--task NAME):")
        for name, (_, description) in tasks.named_settings().items():
            print(f"  {name:<17} {description}")
    if what in ("all", "sweeps"):
        print("sweeps (rnnsuite sweep sweeps/FILE.yaml):")
        found = shipped_sweeps()
        width = max((len(p) for p in found), default=0) + 1
        for path, description in found.items():
            print(f"  {path:<{width}} {description}")
    return 0


def _cmd_train(args) -> int:
    # torch and Lightning are loaded by the commands that need them, Lightning (suite.train) only once the config
    # is read: a bad one is refused before Lightning's import writes its caches (torchinductor_*) to the temp folder
    from .assemble import check_names, task_layer

    if args.resume:
        from .train import load_run_config

        cfg = load_run_config(args.tracking_uri, args.resume)
    else:
        layers = []
        if args.config:
            layers.append(load_yaml(args.config))
        if args.task:
            layers.append(task_layer(args.task)[0])
        overrides = dict(parse_override(s) for s in args.set)
        shorthands = {"model.cell": args.cell, "train.steps": args.steps, "train.epochs": args.epochs,
                      "train.seed": args.seed, "tracking.uri": args.tracking_uri,
                      "tracking.experiment": args.experiment, "train.device": args.device}
        overrides.update({k: v for k, v in shorthands.items() if v is not None})
        if args.steps is not None:  # --steps N means "train N steps", also on a setting that counts epochs
            overrides["train.epochs"] = 0
        cfg = build_config(*layers, overrides=overrides)
        check_names(cfg)
    from .train import run

    result = run(cfg, resume_run_id=args.resume)
    if result.status != "FINISHED":
        print(f"rnnsuite: run {result.run_id} {result.status}: {result.reason}", file=sys.stderr)
    if args.json:
        print(json.dumps({"run_id": result.run_id, "status": result.status, **result.metrics}))
    else:
        shown = "  ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items()))
        print(f"run {result.run_id} {result.status}  {shown}")
    return result.exit_code


def _cmd_sweep(args) -> int:
    if args.workers < 1:
        raise SuiteError(f"--workers must be >= 1, got {args.workers}")
    if args.pack is not None and args.pack < 1:
        raise SuiteError(f"--pack must be an integer >= 1 (1 = one trial at a time), got {args.pack}")
    check_storage_url(storage_url(args.storage))
    if args.quiet:
        os.environ["RNNSUITE_QUIET"] = "1"
    from .sweep.command import run_sweep  # torch, Optuna, MLflow: loaded by the commands that need them

    return run_sweep(args.file, args.storage, args.tracking_uri, args.workers, args.worker_only, args.pack)


def _store_args(p) -> None:
    """--storage and --tracking-uri as sweep, report, export and import take them (the sweep's stores)."""
    p.add_argument("--storage", help="Optuna storage: a journal file path (default $RNNSUITE_STORAGE, else "
                   "rnnsuite-runs/optuna.journal), sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///rnnsuite-runs/mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rnnsuite", description="Benchmark suite for gated recurrent networks: train, tune "
                     "with equal budgets, and compare LSTM, GRU and GRU variants.")
    parser.add_argument("--version", action="version", version=f"rnnsuite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("list", help="cells, tasks, named settings and shipped sweeps with one-line descriptions")
    p.add_argument("what", nargs="?", default="all", choices=["all", "cells", "tasks", "sweeps"])
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("train", help="train one cell on one task, tracked in MLflow",
                       description="Train one model. Config keys: task.*, model.*, optim.*, train.*, tracking.* "
                       "(see README); --task/--cell/--steps/... are shorthands for them.")
    p.add_argument("--task", help="a task or named setting (rnnsuite list tasks), or a tasks/FILE.yaml")
    p.add_argument("--cell", help="a cell name (rnnsuite list cells)")
    p.add_argument("--config", help="a YAML run config (sections task/model/optim/train/tracking)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    g.add_argument("--epochs", type=int, help="epochs over an LM corpus (train.epochs)")
    p.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=0.01 (repeatable)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///rnnsuite-runs/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (tracking.experiment)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="train.device")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a stopped run from its last checkpoint")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object of final metrics")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sweep", help="tune every cell of a sweep file with the same budget (re-run to resume)",
                       description="Run (or resume) a sweep: one Optuna study per cell, every trial an MLflow "
                       "run, then the top configurations re-trained with several seeds. Re-running the same "
                       "command continues where it stopped; the same command on other machines with the same "
                       "--storage and --tracking-uri joins the sweep.")
    p.add_argument("file", help="a sweep file, e.g. sweeps/smoke.yaml")
    _store_args(p)
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (one per GPU)")
    p.add_argument("--pack", type=int, metavar="M", help="train up to M trials of one shape together in one "
                   "batched step, each still its own Optuna trial and MLflow run (overrides the file's pack:; "
                   "default 1 = one at a time)")
    p.add_argument("--worker-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no per-trial progress bars")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="turn a sweep into an HTML + Markdown comparison report with CSVs",
                       description="Read a sweep's MLflow runs and Optuna studies and write index.html (self-"
                       "contained), report.md with PNG figures, and CSVs of every table to DIR; the same files "
                       "are logged as artifacts of the sweep's parent MLflow run. Works on a sweep still running.")
    p.add_argument("name", nargs="?", help="the sweep's name (the `name:` of its sweep file), or a sweep file "
                   "(optional with --from)")
    p.add_argument("-o", "--output", metavar="DIR", help="output folder (default reports/NAME)")
    p.add_argument("--from", dest="source", metavar="FILE", help="build the report from an archive written by "
                   "`rnnsuite export`, without importing it into any store")
    _store_args(p)
    p.add_argument("--reference", default="gru", help="the cell every other cell is tested against (default gru)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("bench", help="speed, memory, scaling and tracking-overhead benchmarks (JSON)",
                       description="Time every cell against nn.GRU and nn.LSTM in one process (warm-up, "
                       "interleaved repeats, medians), scaling in T and H, parallel scans, the tracking overhead "
                       "of the training pipeline and data generation. Ratios are what count.")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object with every figure")
    p.add_argument("--quick", action="store_true", help="a reduced run (under two minutes on 2 CPU cores)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to measure")
    p.add_argument("--sections", metavar="LIST", help="only these sections, comma-separated: cells, scaling, scan, "
                   "diagnostics_off, kernels, data, tracking, packed (default: all)")
    p.add_argument("--section-timeout", type=float, metavar="S", help="stop a section after S seconds; it is "
                   "named under \"skipped\" and the others still run")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("export", help="write a sweep's Optuna trials and MLflow runs to one archive file",
                       description="Export a sweep (its Optuna studies with every trial, its MLflow runs with "
                       "tags, params, full metric histories and artifacts) to one .tar.gz with a manifest of "
                       "versions and checksums; docs/archives.md describes the format (pandas reads it).")
    p.add_argument("name", help="the sweep's name, or its sweep file")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="the archive to write, e.g. "
                   "NAME.rnnsuite.tar.gz")
    _store_args(p)
    p.add_argument("--with-checkpoints", action="store_true", help="also the runs' checkpoint files (large)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("import", help="restore a sweep archive into MLflow and Optuna stores (then resume it)",
                       description="Restore an archive written by `rnnsuite export` into any stores. Runs get new "
                       "MLflow ids (the source id is kept in the tag rnnsuite.source_run_id); importing twice "
                       "changes nothing; stores holding a different sweep of that name are refused. Running the "
                       "same `rnnsuite sweep` command afterwards resumes the sweep.")
    p.add_argument("file", help="an archive written by rnnsuite export")
    _store_args(p)
    p.set_defaults(func=_cmd_import)

    ui.add_parser(sub)
    return parser


def _cmd_export(args) -> int:
    from .archive.command import run_export

    return run_export(args)


def _cmd_import(args) -> int:
    from .archive.command import run_import

    return run_import(args)


def _cmd_report(args) -> int:
    from .report import run_report

    return run_report(args)


def _cmd_bench(args) -> int:
    from .bench import run_bench

    return run_bench(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        load_plugins()  # a broken plugin is one line before the command starts, not a failure half-way
        return args.func(args)
    except SuiteError as exc:
        print(f"rnnsuite: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("rnnsuite: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
