"""The search (suite.sweep.space): proposals seeded by trial number, the shared initial design, the margin pruner."""
from __future__ import annotations

import itertools
import math

import mlflow
import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from suite.registry import SuiteError
from suite.sweep import Sweep, load_sweep
from suite.sweep.space import (MarginPruner, design_points, min_distance, to_value, trial_seed, unit_design,
                               worse_by_margin)

SPACE = {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1},
         "optim.clip": {"type": "choice", "values": [1.0, 5.0]},
         "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.5}}
SPEC = {
    "name": "search",
    "task": "adding",
    "base": {"task": {"length": 12, "batch_size": 16, "val_size": 64}, "model": {"hidden_size": 8},
             "train": {"val_every": 10, "diag_every": 0, "log_every": 5, "progress": False}},
    "cells": ["gru", "sgru", "lstm"],
    "budget": {"trials": 9, "steps": 40},
    "search": SPACE,
    "sampler": {"name": "tpe", "seed": 3},
    "pruner": {"name": "median"},
    "confirm": {"top_k": 1, "seeds": 1},
}


def write(tmp_path, spec, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def tracking_db(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # the schema, once
    return uri


def sweep_of(tmp_path, tracking_db, storage_name="optuna.journal", **change):
    spec = {**SPEC, "name": f"s-{tmp_path.name}"[:60], **change}
    return Sweep(load_sweep(write(tmp_path, spec)), str(tmp_path / storage_name), tracking_db)


def key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def ask_and_tell(sweep: Sweep, cell: str, rng) -> optuna.trial.FrozenTrial:
    """What a worker does with one search trial, without the training: ask, then tell a value."""
    study = sweep.study(cell)
    trial = sweep.trials.ask(study, cell, "search")
    study.tell(trial, float(rng.uniform(0.01, 0.2)))
    return study.trials[trial.number]


# ---------------------------------------------------------------------------------------------- 1. the restart
@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_workers_and_a_resumed_run_never_propose_the_same_configuration(tmp_path, tracking_db, sampler):
    """Each worker, and each resumed run, builds its own sampler with the sweep's seed. Seeded from the sampler
    object's own state, two of them proposed the same first configurations (trial 0 of one worker = trial 1 of the
    other). Each proposal is seeded by (seed, trial number) now."""
    change = {"design": {"kind": "none"}, "sampler": {"name": sampler, "seed": 0}}
    first, second = sweep_of(tmp_path, tracking_db, **change), sweep_of(tmp_path, tracking_db, **change)
    rng = np.random.default_rng(0)
    frozen = []
    for worker in itertools.islice(itertools.cycle([first, second]), 6):  # two workers taking turns
        frozen.append(ask_and_tell(worker, "gru", rng))
    resumed = sweep_of(tmp_path, tracking_db, **change)  # the sweep killed and run again: a third sampler
    frozen += [ask_and_tell(resumed, "gru", rng) for _ in range(3)]
    configs = [key(t.params) for t in frozen]
    assert len(set(configs)) == len(configs), configs


def test_a_trials_proposal_depends_on_the_seed_and_its_number_only(tmp_path, tracking_db):
    """The same study history and trial number give the same proposal in any process; another seed another."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = sweep_of(tmp_path / "a", tracking_db, design={"kind": "none"})
    b = sweep_of(tmp_path / "b", tracking_db, design={"kind": "none"})
    pa = [a.trials.ask(a.study("gru"), "gru", "search").params for _ in range(3)]  # one process asks 3 (a pack)
    pb = []
    for _ in range(3):  # three processes ask one each
        fresh = Sweep(b.spec, b.storage_url, tracking_db)
        pb.append(fresh.trials.ask(fresh.study("gru"), "gru", "search").params)
    assert pa == pb
    assert trial_seed(0, 1) != trial_seed(0, 2) and trial_seed(0, 1) != trial_seed(1, 1)
    assert trial_seed(0, 1) == trial_seed(0, 1)


# ---------------------------------------------------------------------------------------------- 2. the design
@pytest.mark.parametrize("kind", ["sobol", "lhs"])
@pytest.mark.parametrize("dims", [1, 2, 3, 4])
@pytest.mark.parametrize("points", [2, 3, 4, 6, 8, 16])
def test_design_points_spread_over_the_unit_cube(kind, dims, points):
    """The threshold: the smallest distance between two design points is at least half the spacing of a regular
    grid with as many points, 0.5 x points^(-1/dims) (seeded random points often fall far below it)."""
    cube = unit_design(kind, points, dims, seed=0)
    assert cube.shape == (points, dims) and (cube >= 0).all() and (cube < 1).all()
    assert min_distance(cube) >= 0.5 * points ** (-1 / dims)
    assert np.array_equal(cube, unit_design(kind, points, dims, seed=0))  # reproducible
    assert not np.array_equal(cube, unit_design(kind, points, dims, seed=1))


def test_random_points_would_not_meet_the_threshold():
    """The threshold above is a real bar: uniform random points of the same size miss it most of the time."""
    rng = np.random.default_rng(0)
    misses = sum(min_distance(rng.random((6, 2))) < 0.5 * 6 ** (-1 / 2) for _ in range(200))
    assert misses > 100


def test_unit_values_map_to_each_distribution():
    assert to_value({"type": "loguniform", "low": 1e-3, "high": 1e-1}, 0.5) == pytest.approx(1e-2)
    assert to_value({"type": "uniform", "low": 0.0, "high": 0.5}, 0.5) == pytest.approx(0.25)
    choice = {"type": "choice", "values": ["a", "b", "c"]}
    assert [to_value(choice, u) for u in (0.0, 0.34, 0.67, 0.999999)] == ["a", "b", "c", "c"]
    ints = {"type": "int", "low": 1, "high": 4}
    assert [to_value(ints, u) for u in (0.0, 0.26, 0.51, 0.76, 1.0)] == [1, 2, 3, 4, 4]  # equal-width bins
    log_ints = {"type": "int", "low": 16, "high": 256, "log": True}
    assert to_value(log_ints, 0.0) == 16 and to_value(log_ints, 0.999) == 256
    assert 60 <= to_value(log_ints, 0.5) <= 70  # the geometric middle, ~sqrt(16 * 257)


def test_every_cell_gets_the_same_design_points_enqueued_once(tmp_path, tracking_db):
    sweep = sweep_of(tmp_path, tracking_db)
    points = sweep.spec.design_points
    assert len(points) == 3  # a third of 9 trials
    assert len({key(p) for p in points}) == 3
    assert {p["optim.clip"] for p in points} == {1.0, 5.0}  # both choices used
    sweep.prepare()
    sweep.prepare()  # a resumed sweep prepares again: nothing enqueued twice
    for cell in SPEC["cells"]:
        waiting = sweep.study(cell).get_trials(states=(TrialState.WAITING,))
        assert [t.user_attrs["design_point"] for t in waiting] == [0, 1, 2]
        assert [t.system_attrs["fixed_params"] for t in waiting] == points
    run = sweep.client.get_run(sweep.study_run("gru"))
    assert run.data.params["design.kind"] == "sobol" and run.data.params["design.trained"] == "0,1,2"
    # asked, the first trials are the design points, with their values exactly
    rng = np.random.default_rng(0)
    asked = [ask_and_tell(sweep, "sgru", rng) for _ in range(4)]
    assert [t.params for t in asked[:3]] == points
    assert key(asked[3].params) not in {key(p) for p in points}


def test_the_same_sweep_file_gives_the_same_design_from_empty_stores(tmp_path):
    path = write(tmp_path, SPEC)
    assert load_sweep(path).design_points == load_sweep(path).design_points
    other = write(tmp_path, {**SPEC, "sampler": {"name": "tpe", "seed": 4}}, "other.yaml")
    assert load_sweep(other).design_points != load_sweep(path).design_points  # the seed decides
    assert design_points(SPACE, {"kind": "none", "points": 3}, 0) == []


def test_a_design_point_with_a_value_a_cell_refuses_is_skipped_for_that_cell(tmp_path, tracking_db):
    space = {"optim.lr": SPACE["optim.lr"], "model.chrono_init": {"type": "choice", "values": [True, False]}}
    sweep = sweep_of(tmp_path, tracking_db, cells=["gru", "rnn_tanh"], search=space, design={"points": 4})
    chrono = [p["model.chrono_init"] for p in sweep.spec.design_points]
    assert True in chrono and False in chrono
    kept = [i for i, _ in sweep.spec.design_for("rnn_tanh")]
    assert kept == [i for i, c in enumerate(chrono) if c is False]
    assert [i for i, _ in sweep.spec.design_for("gru")] == [0, 1, 2, 3]
    (note,) = sweep.spec.design_notes()
    assert note.startswith("rnn_tanh skips shared design point(s)")
    sweep.prepare()
    waiting = sweep.study("rnn_tanh").get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["design_point"] for t in waiting] == kept


def test_a_design_point_enqueued_twice_trains_once(tmp_path, tracking_db):
    """Two machines starting the same sweep at the same moment may both enqueue the design: the later copy of a
    point steps back before training, like a confirmation slot taken twice."""
    sweep = sweep_of(tmp_path, tracking_db, budget={"trials": 6, "steps": 40})
    sweep.prepare()
    study = sweep.study("gru")
    for i, point in enumerate(sweep.spec.design_points):  # the other machine's copy
        study.enqueue_trial(point, user_attrs={"design_point": i}, skip_if_exists=False)
    trained = []
    for _ in range(4):
        trial = sweep.trials.ask(study, "gru", "search")
        if trial is not None:
            study.tell(trial, 0.1)
            trained.append(trial.user_attrs.get("design_point"))
    assert trained == [0, 1]  # the copies of 0 and 1 were told FAIL, untrained
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.user_attrs["fail_reason"] for t in failed] == ["duplicate design point; not trained"] * 2


def test_a_study_begun_without_a_design_resumes_without_one(tmp_path, tracking_db):
    sweep = sweep_of(tmp_path, tracking_db, design={"kind": "none"})
    sweep.prepare()
    ask_and_tell(sweep, "gru", np.random.default_rng(0))
    resumed = sweep_of(tmp_path, tracking_db)  # the file now asks for a design
    assert resumed.enqueue_design("gru") == 0
    assert resumed.enqueue_design("sgru") == 3  # a study with no trial yet gets it


@pytest.mark.parametrize("design, message", [
    ({"kind": "grid"}, "design.kind='grid'; choose one of: sobol, lhs, none"),
    ({"points": 10}, "design.points must be an integer in [0, budget.trials=9], got 10"),
    ({"points": -1}, "design.points must be an integer in [0, budget.trials=9]"),
    ({"size": 3}, "unknown design key 'size'; accepted: kind, points"),
    ([3], "design must be a mapping with kind and points"),
])
def test_bad_design_blocks_are_refused_naming_the_key(tmp_path, design, message):
    with pytest.raises(SuiteError) as err:
        load_sweep(write(tmp_path, {**SPEC, "design": design}))
    assert message in str(err.value)


# ---------------------------------------------------------------------------------------------- 3. pruning
def _study_with(completed: list[float], direction="minimize", step=100):
    study = optuna.create_study(direction=direction)
    for v in completed:
        t = study.ask()
        t.report(v, step)
        study.tell(t, v)
    return study


@pytest.mark.parametrize("direction, median, close, far", [
    ("minimize", 0.1825, 0.1825 * 1.01, 0.1825 * 10),   # MSE: ratios
    ("maximize", 0.90, 0.899, 0.0),                       # accuracy: ratios of errors (1 - acc)
])
def test_a_trial_within_one_percent_of_the_median_is_not_pruned_one_ten_times_worse_is(direction, median, close,
                                                                                        far):
    study = _study_with([median * 0.98 if direction == "minimize" else 0.88, median,
                         median * 1.05 if direction == "minimize" else 0.95], direction)
    pruner = MarginPruner(startup=2, warmup=50, margin=0.1)
    for value, pruned in ((close, False), (far, True)):
        trial = study.ask()
        trial.report(value, 100)
        assert pruner.prune(study, study.trials[trial.number]) is pruned, value
        study.tell(trial, state=TrialState.FAIL)


def test_the_pruner_waits_for_its_warmup_and_startup_trials():
    study = _study_with([0.1, 0.1])
    pruner = MarginPruner(startup=2, warmup=200, margin=0.1)
    trial = study.ask()
    trial.report(5.0, 100)  # 50x worse, but before the warm-up
    assert not pruner.prune(study, study.trials[trial.number])
    few = _study_with([0.1])
    trial = few.ask()
    trial.report(5.0, 100)
    assert not MarginPruner(startup=2, warmup=0).prune(few, few.trials[trial.number])  # one completed trial
    trial = study.ask()
    trial.report(float("nan"), 300)
    assert MarginPruner(startup=2, warmup=200).prune(study, study.trials[trial.number])  # NaN: diverged


def test_the_margin_rule_on_each_scale():
    assert not worse_by_margin(0.109, 0.1, "minimize", 0.1) and worse_by_margin(0.111, 0.1, "minimize", 0.1)
    assert not worse_by_margin(0.989, 0.99, "maximize", 0.1)  # error 0.011 vs 0.010: within 10%
    assert worse_by_margin(0.98, 0.99, "maximize", 0.1)  # error twice the median's
    assert worse_by_margin(-2.0, -1.0, "minimize", 0.1) is False and worse_by_margin(-0.8, -1.0, "minimize", 0.1)
    assert worse_by_margin(math.nan, 0.1, "minimize", 0.1)


def test_default_warmup_is_a_quarter_of_the_budget_and_the_rule_is_on_the_study_run(tmp_path, tracking_db):
    sweep = sweep_of(tmp_path, tracking_db, budget={"trials": 9, "steps": 400})
    assert sweep.spec.warmup == 100 and sweep.spec.pruner["margin"] == 0.1
    sweep.prepare()
    rule = sweep.client.get_run(sweep.study_run("gru")).data.params["pruner.rule"]
    assert "after step 100" in rule and "median x 1.1" in rule
    explicit = load_sweep(write(tmp_path, {**SPEC, "pruner": {"name": "median", "warmup_steps": 7, "margin": 0.5}},
                                "explicit.yaml"))
    assert explicit.warmup == 7 and explicit.pruner["margin"] == 0.5
    epochs = load_sweep(write(tmp_path, {**SPEC, "budget": {"trials": 9, "epochs": 2}}, "epochs.yaml"))
    assert epochs.warmup is None  # a quarter of each run's steps, known when it starts
    with pytest.raises(SuiteError, match="pruner.margin must be a non-negative number"):
        load_sweep(write(tmp_path, {**SPEC, "pruner": {"name": "median", "margin": -1}}, "bad.yaml"))


def test_the_demo_design_points_are_the_ones_docs_state():
    """docs/sweeps.md quotes the smoke sweep's two design points; they spread over the learning-rate range."""
    points = load_sweep("smoke").design_points
    assert [(round(p["optim.lr"], 5), p["optim.clip"]) for p in points] == [(0.02148, 5.0), (0.00423, 1.0)]
    text = open(__file__.replace("tests/test_search.py", "docs/sweeps.md")).read()
    assert "lr 0.0215 with clip 5 and lr 0.00423 with clip 1" in text
