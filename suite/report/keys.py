"""The sweep file's ``report:`` block: how its report judges comparisons, validated at load and logged on the
sweep's parent run (param ``report.equivalence``) so that ``rnnsuite report`` reads what the sweep asked for.

    report:
      equivalence: [0.8, 1.25]   # ratio margin (cell / reference on the analysis scale) counted as equivalent
"""
from __future__ import annotations

import math

from ..registry import SuiteError

DEFAULT_EQUIVALENCE = (0.8, 1.25)  # the bioequivalence margin (FDA 2001): a 20% change either way, symmetric in logs
REPORT_KEYS = ("equivalence",)
PARAM = "report.equivalence"


def check_report_block(path, block) -> dict:
    """``report: {equivalence: [lo, hi]}`` with 0 < lo < 1 < hi; every problem is one line naming the key."""
    block = {} if block is None else block
    if not isinstance(block, dict):
        raise SuiteError(f"{path}: report must be a mapping (e.g. report: {{equivalence: [0.8, 1.25]}}), got {block!r}")
    bad = sorted(set(block) - set(REPORT_KEYS), key=str)
    if bad:
        raise SuiteError(f"{path}: unknown report key {bad[0]!r}; accepted: {', '.join(REPORT_KEYS)}")
    margin = block.get("equivalence", list(DEFAULT_EQUIVALENCE))
    ok = (isinstance(margin, list) and len(margin) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in margin)
          and 0 < margin[0] < 1 < margin[1])
    if not ok:
        raise SuiteError(f"{path}: report.equivalence must be two ratios [lo, hi] with 0 < lo < 1 < hi, "
                         f"got {margin!r}")
    return {"equivalence": [float(margin[0]), float(margin[1])]}


def equivalence_param(block: dict) -> str:
    lo, hi = block["equivalence"]
    return f"{lo:g},{hi:g}"


def parse_equivalence(value: str | None) -> tuple[float, float]:
    """The margin a sweep logged; the default for sweeps that predate the key (or a value that does not parse)."""
    try:
        lo, hi = (float(v) for v in (value or "").split(","))
    except ValueError:
        return DEFAULT_EQUIVALENCE
    return (lo, hi) if 0 < lo < 1 < hi else DEFAULT_EQUIVALENCE
