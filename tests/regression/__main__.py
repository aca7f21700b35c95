"""``python -m tests.regression update CELL [CELL ...]``: write the regression entries of the named cells only.

A plugin cell is found as everywhere else: set RNNSUITE_PLUGINS (or install its entry point) first.
"""
from __future__ import annotations

import argparse
import sys

from suite.registry import SuiteError
from tests.regression.cases import update


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.regression", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("update", help="write the entries of the named cells (and of no other)")
    up.add_argument("cells", nargs="+", metavar="CELL")
    args = parser.parse_args(argv)
    try:
        for name in args.cells:
            print(f"wrote {update(name)}")
    except SuiteError as err:
        print(f"python -m tests.regression: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
