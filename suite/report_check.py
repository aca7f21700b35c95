"""Deprecated alias of :mod:`suite.report.check`, kept for one release (CHANGELOG.md):
``python -m suite.report_check DIR`` runs ``python -m suite.report.check DIR``."""
import sys

from .report.check import check_claims, main  # noqa: F401  (the old import path keeps working too)

if __name__ == "__main__":
    print("python -m suite.report_check is deprecated: use python -m suite.report.check", file=sys.stderr)
    sys.exit(main(sys.argv[1:]))
