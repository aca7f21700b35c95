"""How a sweep searches: the Optuna distributions of its space, the shared initial design every cell starts from,
the sampler that takes over after it, and the pruner.

Three rules make a search fair between cells and repeatable (docs/sweeps.md):

* **A shared initial design.** The first ``design.points`` trials of every cell's study are the same
  configurations: one scrambled Sobol (or Latin hypercube) design over the sweep file's search space, seeded by
  ``sampler.seed``, enqueued before the sampler takes over. A handful of seeded random draws can land next to each
  other (the smoke demo once tried learning rates 0.0106, 0.0105 and 0.0111 in every cell); a space-filling design
  cannot, and because every cell meets the same points they can be compared *paired* at them (the report's
  "robustness at the shared design points").
* **Each proposal's randomness comes from the sweep's seed and the trial's number**, never from a sampler object's
  private state: every worker, every pack and every resumed run builds its own sampler, and two samplers seeded
  alike would propose the same first configuration (:class:`TrialSeeded`).
* **Pruning waits for evidence** (:class:`MarginPruner`): past a warm-up (default: a quarter of the step budget),
  a trial is pruned only if its best value so far is worse than the median of the completed trials at the same
  step by a stated margin, on the metric's analysis scale (a ratio for errors, see :func:`worse_by_margin`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

DESIGN_KINDS = ("sobol", "lhs", "none")
DESIGN_ATTR = "design_point"  # user attr of a search trial enqueued from the shared design: its index
DEFAULT_MARGIN = 0.1
DESIGN_CANDIDATES = 32  # scrambles tried; the one whose closest two points are farthest apart is kept


# ---------------------------------------------------------------------------------------------- distributions
def distributions(search: dict[str, dict]) -> dict:
    """The sweep file's search space as Optuna distributions."""
    out = {}
    for key, d in search.items():
        if d["type"] == "choice":
            out[key] = CategoricalDistribution(d["values"])
        elif d["type"] == "int":
            out[key] = IntDistribution(d["low"], d["high"], log=bool(d.get("log", False)))
        else:
            out[key] = FloatDistribution(d["low"], d["high"], log=d["type"] == "loguniform"
                                         or bool(d.get("log", False)))
    return out


def first_point(search: dict[str, dict]) -> dict[str, Any]:
    return {k: (d["values"][0] if d["type"] == "choice" else d["low"]) for k, d in search.items()}


# ---------------------------------------------------------------------------------------------- the design
def default_points(trials: int) -> int:
    """A third of the budget, at least 2, never more than the budget."""
    return min(trials, max(2, trials // 3))


def unit_design(kind: str, points: int, dims: int, seed: int) -> np.ndarray:
    """`points` x `dims` points in [0, 1)^dims: the first `points` of a scrambled Sobol sequence (or a Latin
    hypercube), the most spread of DESIGN_CANDIDATES scrambles derived from `seed` (largest smallest pairwise
    distance). The same arguments give the same points on any machine (scipy's generators, seeded)."""
    from scipy.stats import qmc  # scipy is heavy: loaded only by a sweep that has a design

    if points <= 0 or dims <= 0:
        return np.zeros((max(points, 0), max(dims, 0)))
    best, best_gap = None, -1.0
    for rng in np.random.SeedSequence([seed, points, dims]).spawn(DESIGN_CANDIDATES):
        gen = np.random.default_rng(rng)
        if kind == "sobol":
            m = max(0, math.ceil(math.log2(points)))
            cube = qmc.Sobol(dims, scramble=True, seed=gen).random_base2(m)[:points]
        elif kind == "lhs":
            cube = qmc.LatinHypercube(dims, seed=gen).random(points)
        else:
            raise ValueError(f"unknown design kind {kind!r}")
        gap = min_distance(cube)
        if gap > best_gap:
            best, best_gap = cube, gap
    return best


def min_distance(cube: np.ndarray) -> float:
    """The smallest Euclidean distance between two rows (inf for fewer than two)."""
    if len(cube) < 2:
        return math.inf
    diff = cube[:, None, :] - cube[None, :, :]
    dist = np.sqrt((diff ** 2).sum(-1))
    return float(dist[np.triu_indices(len(cube), 1)].min())


def to_value(dist: dict, u: float):
    """One coordinate in [0, 1) -> a value of the distribution: log-uniform in log space, int by equal-width bins
    (in log space for log ints), a choice by equal-width bins over its values."""
    u = min(max(float(u), 0.0), math.nextafter(1.0, 0.0))
    kind = dist["type"]
    if kind == "choice":
        values = dist["values"]
        return values[min(len(values) - 1, int(u * len(values)))]
    low, high = dist["low"], dist["high"]
    log = kind == "loguniform" or bool(dist.get("log", False))
    if kind == "int":
        if log:
            v = int(math.floor(math.exp(math.log(low) + u * (math.log(high + 1) - math.log(low)))))
        else:
            v = int(math.floor(low + u * (high - low + 1)))
        return min(high, max(low, v))
    v = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if log else low + u * (high - low)
    return min(high, max(low, v))


def design_points(search: dict[str, dict], design: dict, seed: int) -> list[dict[str, Any]]:
    """The shared initial design over the sweep file's space (keys in file order): a list of configurations."""
    if design.get("kind", "none") == "none" or not search or design.get("points", 0) <= 0:
        return []
    keys = list(search)
    cube = unit_design(design["kind"], design["points"], len(keys), seed)
    return [{k: to_value(search[k], u) for k, u in zip(keys, row)} for row in cube]


# ---------------------------------------------------------------------------------------------- the sampler
def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number`'s proposal: a function of the sweep's seed and the trial number only."""
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


class TrialSeeded(BaseSampler):
    """Delegates each trial to a fresh sampler seeded by :func:`trial_seed` (sweep seed, trial number).

    A sampler object's random state restarts with every process: two workers, or a sweep resumed after a kill,
    each seeded alike, proposed the very same first configurations. Here trial n's proposal depends only on the
    seed, n and the study's history, whichever process asks for it."""

    def __init__(self, make: Callable[[int], BaseSampler], seed: int):
        self._make, self._seed = make, seed
        self._by_trial: dict[int, BaseSampler] = {}

    def _for(self, trial) -> BaseSampler:
        number = trial.number
        if number not in self._by_trial:
            if len(self._by_trial) > 64:  # a worker holds a few open trials at most (a pack)
                self._by_trial.pop(next(iter(self._by_trial)))
            self._by_trial[number] = self._make(trial_seed(self._seed, number))
        return self._by_trial[number]

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._by_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:  # the randomness is the trial's, not the object's
        pass


def make_sampler(name: str, seed: int, startup: int) -> TrialSeeded:
    """TPE (or random search) whose every proposal is seeded by (seed, trial number).

    Set explicitly: Optuna 5 changed TPE's defaults. Multivariate TPE with constant liar (parallel workers do not
    all propose the point a running trial already holds); `startup` trials before TPE models anything: the shared
    design's points where there is one, otherwise random ones."""
    if name == "random":
        return TrialSeeded(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    return TrialSeeded(lambda s: optuna.samplers.TPESampler(seed=s, multivariate=True, constant_liar=True,
                                                            n_startup_trials=startup), seed)


# ---------------------------------------------------------------------------------------------- the pruner
def worse_by_margin(value: float, median: float, direction: str, margin: float) -> bool:
    """Whether `value` is worse than `median` by more than `margin`, on the metric's analysis scale:

    * minimised, both positive (MSE, loss, perplexity): as a ratio, value > median x (1 + margin);
    * maximised, both in [0, 1] (accuracy): as a ratio of errors, (1 - value) > (1 - median) x (1 + margin);
    * otherwise (a signed metric): by `margin` of |median|.
    A NaN or infinite value is always worse."""
    if not math.isfinite(value):
        return True
    if direction == "minimize":
        if value > 0 and median > 0:
            return value > median * (1 + margin)
        return value > median + margin * abs(median)
    if 0 <= value <= 1 and 0 <= median <= 1:
        return (1 - value) > (1 - median) * (1 + margin)
    return value < median - margin * abs(median)


def prune_rule(metric: str, direction: str, warmup: int | str, margin: float, startup: int) -> str:
    """The rule :class:`MarginPruner` applies, in one sentence (logged on every study run)."""
    scale = (f"{metric} > median x {1 + margin:g}" if direction == "minimize"
             else f"1 - {metric} > (1 - median) x {1 + margin:g}")
    return (f"a search trial is pruned at a validation after step {warmup} only if its best {metric} so far is "
            f"worse than the median of the completed trials at that step by the margin {margin:g} ({scale}), "
            f"once {startup} trials have completed; NaN is always pruned")


class MarginPruner(BasePruner):
    """The median rule with a margin: prune only when a trial is clearly behind (:func:`worse_by_margin`), past
    the warm-up, once `startup` trials have completed. Optuna's MedianPruner cut a trial at 0.1827 against a
    median of 0.1825 while every trial sat on the same plateau: noise, not evidence."""

    def __init__(self, startup: int, warmup: int, margin: float = DEFAULT_MARGIN):
        self.startup, self.warmup, self.margin = startup, warmup, margin

    def prune(self, study, trial) -> bool:
        step = trial.last_step
        if step is None or step < self.warmup:
            return False
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < max(1, self.startup):
            return False
        values = list(trial.intermediate_values.values())
        if any(not math.isfinite(v) for v in values[-1:]):
            return True  # the last report is NaN or infinite: diverged
        finite = [v for v in values if math.isfinite(v)]
        minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
        best = min(finite) if minimize else max(finite)
        others = [t.intermediate_values[step] for t in completed
                  if step in t.intermediate_values and math.isfinite(t.intermediate_values[step])]
        if not others:
            return False
        return worse_by_margin(best, float(np.median(others)), "minimize" if minimize else "maximize",
                               self.margin)
