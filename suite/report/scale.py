"""The scale each metric is analysed on, and the statistics on that scale (issue 21, point 1).

Errors that span orders of magnitude (MSE, a loss) are analysed as logarithms: a cell's summary is the geometric
mean with a multiplicative 95% t-interval (never below zero), a comparison is the ratio of geometric means with
Welch's interval on the logs. Perplexity is analysed through its log (the cross-entropy). Accuracy, bounded and
often exactly 1.0, is analysed on the logit of (a·N + ½)/(N + 1) (a continuity correction with N the evaluated
sequences, so 1.0 is finite), and mapped back into [0, 1]. Bits per character are already a log quantity and stay
as they are. The raw means and t-intervals are still written to the CSVs beside these.

Equivalence is two one-sided tests (Schuirmann 1987) against a ratio margin (default [0.8, 1.25]); the seeds a
pair would need to separate a 2x difference at 80% power come from the noncentral t distribution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import stats

from .stats import LEVEL, finite

POWER = 0.8  # the power asked of a future experiment
EFFECT = 2.0  # the difference it should separate: a factor of 2 (ratio, or odds ratio for accuracy)
MAX_SEEDS = 1000  # "more than this" beyond it
DEFAULT_N_EVAL = 1000  # evaluated sequences assumed for the continuity correction where the run does not say


@dataclass(frozen=True)
class Scale:
    name: str  # "log", "logit" or "raw"
    effect: str  # what a comparison reports: "ratio", "odds ratio" or "difference"
    reason: str  # one clause: why this scale for this metric
    n_eval: int = DEFAULT_N_EVAL  # logit only: the continuity correction's N

    def forward(self, values: Iterable) -> np.ndarray:
        x = finite(values)
        if self.name == "log":
            return np.log(x[x > 0]) if (x > 0).any() else np.array([])
        if self.name == "logit":
            n = self.n_eval
            p = (np.clip(x, 0, 1) * n + 0.5) / (n + 1)
            return np.log(p / (1 - p))
        return x

    def back(self, y: float) -> float:
        if not math.isfinite(y):
            return math.nan if math.isnan(y) else (math.inf if y > 0 and self.name == "log" else y)
        if self.name == "log":
            return math.exp(y)
        if self.name == "logit":
            p = 1 / (1 + math.exp(-y))
            return min(1.0, max(0.0, (p * (self.n_eval + 1) - 0.5) / self.n_eval))
        return y

    @property
    def ratio(self) -> bool:
        return self.name in ("log", "logit")

    def describe(self) -> str:
        return {"log": "log scale (geometric mean, multiplicative 95% t-interval; comparisons as ratios)",
                "logit": f"logit scale with a continuity correction, logit((a·N + ½)/(N + 1)) with N = {self.n_eval} "
                         "evaluated sequences (95% t-interval mapped back into [0, 1]; comparisons as odds ratios)",
                "raw": "raw scale (arithmetic mean, 95% t-interval; comparisons as differences)"}[self.name]


def scale_for(metric: str, n_eval: int | None = None) -> Scale:
    """The analysis scale of a metric such as test/mse, val/acc, test/ppl."""
    name = metric.rpartition("/")[2]
    if name in ("mse", "loss"):
        return Scale("log", "ratio", "errors that span orders of magnitude are compared as ratios, and a raw "
                                     "t-interval of such values reaches below zero")
    if name == "ppl":
        return Scale("log", "ratio", "perplexity is analysed through its log, the cross-entropy")
    if name == "acc":
        return Scale("logit", "odds ratio", "accuracy is bounded by 0 and 1 and often exactly 1.0, where a raw "
                                            "t-interval leaves [0, 1]", int(n_eval or DEFAULT_N_EVAL))
    return Scale("raw", "difference", "it is already on a log scale" if name == "bpc" else "no transform is known "
                                                                                         "to suit it")


@dataclass
class Summary:
    center: float  # geometric mean / back-transformed mean / mean
    lo: float
    hi: float
    n: int
    log_mean: float  # mean on the analysis scale
    log_sd: float


def summarize(values: Iterable, scale: Scale, level: float = LEVEL) -> Summary:
    """A cell's value over seeds on `scale`, with the back-transformed t-interval (NaN bounds for n < 2)."""
    y = scale.forward(values)
    n = len(y)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, 0, math.nan, math.nan)
    m = float(y.mean())
    if n < 2:
        return Summary(scale.back(m), math.nan, math.nan, 1, m, math.nan)
    sd = float(y.std(ddof=1))
    half = stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return Summary(scale.back(m), scale.back(m - half), scale.back(m + half), n, m, sd)


@dataclass
class Comparison:
    effect: float  # ratio (log), odds ratio (logit) or difference (raw) of a against b
    lo: float
    hi: float
    p: float  # Welch's t-test on the analysis scale, two-sided
    p_tost: float  # two one-sided tests against the margin: small = equivalent
    df: float
    sd_pooled: float  # on the analysis scale: what the seeds-needed estimate uses


def _margin(scale: Scale, margin: tuple[float, float], ref_mean: float) -> tuple[float, float]:
    """The equivalence bounds on the analysis scale: log of the ratio margin, or a relative margin of the
    reference's mean for a raw-scale metric."""
    if scale.ratio:
        return math.log(margin[0]), math.log(margin[1])
    return (margin[0] - 1) * abs(ref_mean), (margin[1] - 1) * abs(ref_mean)


def compare(a: Iterable, b: Iterable, scale: Scale, margin: tuple[float, float],
            level: float = LEVEL) -> Comparison:
    """a against b on `scale`: the effect with its Welch interval, Welch's p and the TOST p."""
    x, y = scale.forward(a), scale.forward(b)
    nan = Comparison(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    if len(x) < 1 or len(y) < 1:
        return nan
    d = float(x.mean() - y.mean())
    to = math.exp if scale.ratio else (lambda v: v)
    if len(x) < 2 or len(y) < 2:
        return Comparison(to(d), math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(va + vb)
    pooled = math.sqrt(((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2))
    lo_m, hi_m = _margin(scale, margin, float(y.mean()))
    if se == 0:
        p = 1.0 if d == 0 else 0.0
        return Comparison(to(d), to(d), to(d), p, 0.0 if lo_m < d < hi_m else 1.0, math.inf, 0.0)
    df = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1))
    half = stats.t.ppf((1 + level) / 2, df) * se
    p = float(2 * stats.t.sf(abs(d) / se, df))
    p_tost = float(max(stats.t.sf((d - lo_m) / se, df), stats.t.cdf((d - hi_m) / se, df)))
    return Comparison(to(d), to(d - half), to(d + half), p, p_tost, float(df), pooled)


def seeds_needed(sd: float, scale: Scale, ref_mean: float = math.nan, alpha: float = 0.05,
                 power: float = POWER, effect: float = EFFECT) -> float:
    """Seeds per cell for a two-sided two-sample t-test at `alpha` to detect a factor `effect` (ratio or odds
    ratio; for a raw-scale metric a difference of (effect − 1) times the reference's mean) with `power`, given
    the observed spread `sd` on the analysis scale. inf when more than MAX_SEEDS; NaN when sd is unknown."""
    if not math.isfinite(sd):
        return math.nan
    delta = math.log(effect) if scale.ratio else (effect - 1) * abs(ref_mean)
    if sd == 0:
        return 2.0
    if not delta > 0:
        return math.nan
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    normal = 2 * (z * sd / delta) ** 2  # the normal approximation: the t-test needs at least this many
    if normal > MAX_SEEDS:
        return math.inf
    for n in range(max(2, int(normal)), MAX_SEEDS + 1):
        df = 2 * n - 2
        crit = stats.t.ppf(1 - alpha / 2, df)
        ncp = delta / (sd * math.sqrt(2 / n))
        if stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp) >= power:
            return float(n)
    return math.inf
