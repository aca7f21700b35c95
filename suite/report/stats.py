"""The statistics of a comparison report: t-intervals over seeds, a two-sample test, Holm's correction.

Seeds are few (3-5), so every interval is Student's t, not the normal 1.96 (Student 1908); every test is
two-sided and names itself; the family of comparisons against the reference cell is corrected with Holm's
step-down method, which controls the family-wise error rate like Bonferroni but rejects more (Holm 1979).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import stats

LEVEL = 0.95  # confidence level of every interval
ALPHA = 0.05  # family-wise error rate of the comparisons against the reference
TESTS = {
    "welch": "Welch's t-test (two-sided, unequal variances; Welch 1947)",
    "mannwhitney": "Mann–Whitney U test (two-sided, exact for small samples; Mann & Whitney 1947)",
}


def finite(values: Iterable) -> np.ndarray:
    x = np.asarray([float(v) for v in values if v is not None], dtype=float)
    return x[np.isfinite(x)]


def t_interval(values: Iterable, level: float = LEVEL) -> tuple[float, float, int]:
    """(mean, half-width, n) of the t-interval mean ± t_{(1+level)/2, n-1} · s / √n; half-width NaN for n < 2."""
    x = finite(values)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, 1
    half = stats.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return mean, float(half), n


def welch_difference(a: Iterable, b: Iterable, level: float = LEVEL) -> tuple[float, float]:
    """(mean(a) − mean(b), half-width of its interval) with Welch–Satterthwaite degrees of freedom."""
    a, b = finite(a), finite(b)
    if len(a) < 2 or len(b) < 2:
        return (float(a.mean() - b.mean()) if len(a) and len(b) else math.nan), math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    diff = float(a.mean() - b.mean())
    if se == 0:
        return diff, 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return diff, float(stats.t.ppf((1 + level) / 2, df) * se)


def two_sample_test(a: Iterable, b: Iterable, test: str = "welch") -> tuple[float, float]:
    """(statistic, two-sided p) of `test` (see TESTS); NaNs when a sample has fewer than 2 values or no spread."""
    a, b = finite(a), finite(b)
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    if test == "welch":
        if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
            return math.nan, math.nan
        res = stats.ttest_ind(a, b, equal_var=False)
    elif test == "mannwhitney":
        res = stats.mannwhitneyu(a, b, alternative="two-sided", method="auto")
    else:
        raise ValueError(f"unknown test {test!r}; choose one of {', '.join(TESTS)}")
    return float(res.statistic), float(res.pvalue)


def holm(pvalues: Iterable[float]) -> list[float]:
    """Holm-adjusted p-values (Holm 1979): the i-th smallest of m is multiplied by m − i + 1, then made monotone.

    NaN p-values (comparisons that could not be tested) stay NaN and do not count in m.
    """
    p = [float(v) for v in pvalues]
    order = sorted((v, i) for i, v in enumerate(p) if math.isfinite(v))
    m = len(order)
    adjusted = [math.nan] * len(p)
    running = 0.0
    for rank, (value, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * value))
        adjusted[i] = running
    return adjusted
