"""Packed sweeps (`pack: M`, `--pack M`): the same budgets, nested runs, tags, report and per-trial numbers as an
unpacked sweep; NaN and pruned members leave their pack alone; a pack SIGKILLed mid-way resumes exactly; bad
values are refused with one line."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from suite.registry import SuiteError
from suite.sweep import Sweep, load_sweep, run_sweep
from test_sweep import TINY, assert_exact, cli, stores, write

BASE = {**TINY["base"], "train": {**TINY["base"]["train"], "deterministic": True}}
PACKED = {  # two cells, a shape-changing hyperparameter, confirmation seeds: everything a pack must handle
    "name": "pk",
    "task": "adding",
    "base": BASE,
    "cells": ["gru", "lstm"],
    "budget": {"trials": 3, "steps": 20},
    "search": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1},
               "model.hidden_size": {"type": "choice", "values": [8, 12]}},
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "confirm": {"top_k": 1, "seeds": 2},
    "pack": 3,
}
# gru's first pack holds two shapes: hidden 8 (trials 0 and 2, a pack of two) and hidden 12 (trial 1, alone)
GRU_FIRST = [{"optim.lr": 0.01, "model.hidden_size": 8}, {"optim.lr": 0.02, "model.hidden_size": 12},
             {"optim.lr": 0.005, "model.hidden_size": 8}]


def journal(path):
    return optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


def study(storage, name):
    return optuna.load_study(study_name=name, storage=journal(storage))


@contextlib.contextmanager
def cwd(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def trial_runs(tracking, name):
    client = mlflow.MlflowClient(tracking)
    exp = client.get_experiment_by_name(name)
    return [r for r in client.search_runs([exp.experiment_id], max_results=5000)
            if r.data.tags.get("rnnsuite.level") == "trial"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """The same sweep file run packed (pack: 3 from the file) and unpacked (pack=1, as --pack 1 overrides it)."""
    root = tmp_path_factory.mktemp("packed-sweeps")
    path = write(root, PACKED)
    out = {}
    for label, pack in (("packed", None), ("alone", 1)):
        folder = root / label
        folder.mkdir()
        storage, tracking = stores(folder)
        with cwd(folder):
            sweep = Sweep(load_sweep(path), storage, tracking)
            for params in GRU_FIRST:
                sweep.study("gru").enqueue_trial(params)
            assert run_sweep(str(path), storage, tracking, pack=pack) == 0
        out[label] = {"storage": storage, "tracking": tracking}
    return out


def test_a_packed_sweep_ends_with_the_budgets_runs_tags_and_report_of_an_unpacked_one(sweeps, tmp_path):
    from suite.report import build_report

    packed, alone = sweeps["packed"], sweeps["alone"]
    runs = assert_exact(packed["storage"], packed["tracking"], PACKED)  # exact budgets, nothing RUNNING
    reference = assert_exact(alone["storage"], alone["tracking"], PACKED)

    def structure(runs):
        by_id = {r.info.run_id: r for r in runs}
        rows = set()
        for r in runs:
            tags = r.data.tags
            parent = by_id.get(tags.get("mlflow.parentRunId"))
            rows.add((tags.get("rnnsuite.level"), r.info.status, tags.get("study"), tags.get("trial"),
                      tags.get("phase"), tags.get("seed"), tags.get("cell"), tags.get("sweep"), tags.get("task"),
                      r.data.params.get("train.steps"), r.data.params.get("model.hidden_size"),
                      parent and parent.data.tags["rnnsuite.level"], parent and parent.data.tags.get("cell")))
        return rows

    assert structure(runs) == structure(reference)  # the same nested runs with the same tags
    trials = [r for r in runs if r.data.tags["rnnsuite.level"] == "trial"]
    assert len(trials) == 2 * (3 + 2)
    for r in trials:
        assert r.data.tags["mlflow.parentRunId"] and r.info.status == "FINISHED"
        for tag in ("sweep", "task", "cell", "study", "trial", "phase", "seed"):
            assert tag in r.data.tags, tag
        assert "val/mse" in r.data.metrics and "test/mse" in r.data.metrics
    # packs really trained together, one shape per pack: gru's first ask held hidden 8 (0, 2) and 12 (1)
    packs = defaultdict(list)
    for r in trials:
        if "pack.id" in r.data.tags:
            packs[r.data.tags["pack.id"]].append(r)
    assert packs, "nothing was packed"
    for members in packs.values():
        assert len({m.data.params["model.hidden_size"] for m in members}) == 1
        assert len({m.data.tags["study"] for m in members}) == 1
        assert {m.data.tags["pack.size"] for m in members} == {str(len(members))}
    gru = {int(r.data.tags["trial"]): r for r in trials if r.data.tags["study"] == "pk/adding/gru"}
    assert gru[0].data.tags["pack.id"] == gru[2].data.tags["pack.id"] and "pack.id" not in gru[1].data.tags
    confirm = [r for r in trials if r.data.tags["phase"] == "confirm"]
    assert all(r.data.tags.get("pack.size") == "2" for r in confirm)  # seeds of one configuration: one pack
    # the report reads a packed sweep like any other
    result = build_report("pk", tmp_path / "report", storage=packed["storage"], tracking_uri=packed["tracking"],
                          log_artifacts=False)
    assert (tmp_path / "report" / "index.html").is_file() and (tmp_path / "report" / "report.md").is_file()
    assert result["figures"] > 0 and result["csvs"] > 0


def test_packed_trials_have_the_results_of_the_same_trials_trained_alone(sweeps):
    packed, alone = sweeps["packed"], sweeps["alone"]
    for cell in PACKED["cells"]:
        name = f"pk/adding/{cell}"
        a, b = study(packed["storage"], name), study(alone["storage"], name)
        got = {t.number: t for t in a.trials if t.state != TrialState.FAIL}
        want = {t.number: t for t in b.trials if t.state != TrialState.FAIL}
        assert sorted(got) == sorted(want) == [0, 1, 2]
        for n, t in got.items():
            assert t.params == want[n].params  # the same seeded sampler asks the same points
            assert t.state == want[n].state == TrialState.COMPLETE
            assert t.value == pytest.approx(want[n].value, abs=1e-4), (cell, n)
            assert set(t.intermediate_values) == set(want[n].intermediate_values) == {10, 20}
            for step, v in t.intermediate_values.items():
                assert v == pytest.approx(want[n].intermediate_values[step], abs=1e-4)
        a, b = study(packed["storage"], name + "/confirm"), study(alone["storage"], name + "/confirm")
        key = lambda t: (t.user_attrs["rank"], t.user_attrs["seed"])  # noqa: E731
        got = {key(t): t.value for t in a.trials if t.state == TrialState.COMPLETE}
        want = {key(t): t.value for t in b.trials if t.state == TrialState.COMPLETE}
        assert sorted(got) == sorted(want) == [(0, 1), (0, 2)]
        for k in got:
            assert got[k] == pytest.approx(want[k], abs=1e-4), (cell, k)


def test_a_nan_member_is_pruned_with_its_reason_and_the_pruner_prunes_inside_packs(tmp_path):
    spec = dict(TINY, name="nanpk", cells=["sgru"], budget={"trials": 6, "steps": 20}, pack=3,
                search={"optim.lr": {"type": "choice", "values": [0.01, 1.0e30, 0.05, 1.0e-6]}},
                pruner={"name": "median", "warmup_steps": 0, "startup_trials": 2},
                confirm={"top_k": 1, "seeds": 1})
    path = write(tmp_path, spec)
    storage, tracking = stores(tmp_path)
    with cwd(tmp_path):
        sweep = Sweep(load_sweep(path), storage, tracking)
        # pack 1: fine, NaN (Adam at lr 1e30), fine; pack 2: hopeless (lr 1e-6, far above the median of pack
        # 1's finished trials at step 10), fine, fine
        for lr in (0.01, 1.0e30, 0.05, 1.0e-6, 0.05, 0.05):
            sweep.study("sgru").enqueue_trial({"optim.lr": lr})
        assert run_sweep(str(path), storage, tracking) == 0
    trials = sorted(study(storage, "nanpk/adding/sgru").trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE,
                                         TrialState.PRUNED, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].user_attrs["pruned_reason"].startswith("diverged: loss is")
    assert trials[3].user_attrs["pruned_reason"].startswith("pruned: pruned at step 10 (val/mse=")
    assert list(trials[3].intermediate_values) == [10]  # reported, judged, and left the pack at step 10
    assert all(list(t.intermediate_values) == [10, 20] for t in trials if t.state == TrialState.COMPLETE)
    runs = {int(r.data.tags["trial"]): r for r in trial_runs(tracking, "nanpk") if r.data.tags["phase"] == "search"}
    assert runs[0].data.tags["pack.id"] == runs[1].data.tags["pack.id"] == runs[2].data.tags["pack.id"]
    assert runs[3].data.tags["pack.id"] == runs[4].data.tags["pack.id"] != runs[0].data.tags["pack.id"]
    assert runs[1].info.status == "FAILED" and runs[1].data.tags["failure.reason"].startswith("diverged: loss is")
    assert runs[3].info.status == "FINISHED" and "pruned at step 10" in runs[3].data.tags["pruned.reason"]
    assert runs[3].info.run_name.endswith("[pruned]") and runs[1].info.run_name.endswith("[diverged]")
    assert runs[3].data.tags["mlflow.note.content"].startswith("**PRUNED** at step 10: pruned: pruned at step 10")
    assert "[" not in runs[0].info.run_name and runs[0].data.tags["mlflow.note.content"].startswith("Search trial 0")
    for n in (0, 2, 4, 5):  # the pack-mates trained on to the end
        assert runs[n].info.status == "FINISHED" and "test/mse" in runs[n].data.metrics
        assert trials[n].value == pytest.approx(runs[n].data.metrics["val/mse"])
    assert_exact(storage, tracking, spec)


def test_configurations_that_cannot_be_packed_train_alone_with_a_note(tmp_path, capsys):
    spec = dict(TINY, name="nopack", cells=["ligru"], budget={"trials": 2, "steps": 10}, pack=2,
                confirm={"top_k": 1, "seeds": 1})
    path = write(tmp_path, spec)
    storage, tracking = stores(tmp_path)
    with cwd(tmp_path):
        assert run_sweep(str(path), storage, tracking) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "not packed" in line]
    assert len(notes) == 1 and "ligru" in notes[0] and "batch norm" in notes[0], err
    runs = trial_runs(tracking, "nopack")
    assert len(runs) == 3 and not [r for r in runs if "pack.size" in r.data.tags]
    assert_exact(storage, tracking, spec)


def _running(storage, name):
    try:
        s = study(storage, name)
    except KeyError:
        return []
    return [t for t in s.trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]


def test_a_sigkilled_pack_resumes_with_exact_budgets_and_no_duplicate(tmp_path):
    spec = dict(TINY, name="pkill", cells=["gru"], budget={"trials": 4, "steps": 400},
                confirm={"top_k": 1, "seeds": 1})
    path = write(tmp_path, spec)  # no pack: in the file; --pack packs it
    storage, tracking = stores(tmp_path)
    cmd = [sys.executable, "-m", "suite", "sweep", str(path), "--storage", storage, "--tracking-uri", tracking,
           "--pack", "2", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        victims = []
        while time.time() < deadline and not victims:
            time.sleep(0.2)
            running = [t for t in _running(storage, "pkill/adding/gru") if t.number >= 2]
            if len(running) == 2:  # the first pack (0, 1) done, both members of the second (2, 3) training
                victims = running
        assert victims, "the second pack was never seen running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sorted(t.number for t in victims) == [2, 3]
    worker = {t.user_attrs["worker"] for t in victims}
    assert worker == {f"{socket.gethostname()}:{proc.pid}"}  # every member recorded its worker
    client = mlflow.MlflowClient(tracking)
    assert {client.get_run(t.user_attrs["mlflow_run_id"]).info.status for t in victims} == {"RUNNING"}
    with cwd(tmp_path):  # the same command again (in this process: what `rnnsuite sweep` calls)
        assert run_sweep(str(path), storage, tracking, pack=2) == 0
    assert_exact(storage, tracking, spec)
    for t in victims:
        assert client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    trials = study(storage, "pkill/adding/gru").trials
    assert sorted(t.number for t in trials if t.state == TrialState.FAIL) == [2, 3]
    for victim in victims:  # each lost configuration ran again exactly once
        retried = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
        assert len(retried) == 1 and retried[0].params == victim.params
        assert retried[0].state == TrialState.COMPLETE
    runs = {r.data.tags["trial"]: r for r in trial_runs(tracking, "pkill") if r.info.status != "KILLED"}
    retried_runs = [runs[str(t.number)] for t in trials if "retry_of" in t.user_attrs]
    assert {r.data.tags["pack.size"] for r in retried_runs} == {"2"}  # the retries trained as one pack again


@pytest.mark.parametrize("value", [0, -3, 2.5, "3", True, None, [2]])
def test_bad_pack_values_are_refused_naming_the_key(tmp_path, value):
    with pytest.raises(SuiteError) as err:
        load_sweep(write(tmp_path, {**TINY, "pack": value}))
    message = str(err.value)
    assert "pack must be an integer >= 1" in message and repr(value) in message and "\n" not in message


@pytest.mark.parametrize("spec,args,message", [
    ({**TINY, "pack": 0}, [], "pack must be an integer >= 1"),
    (TINY, ["--pack", "0"], "--pack must be an integer >= 1"),
    (TINY, ["--pack", "two"], "argument --pack: invalid int value: 'two'"),
])
def test_bad_pack_exits_2_with_one_line_and_writes_nothing(tmp_path, spec, args, message):
    path = write(tmp_path, spec)
    before = set(tmp_path.iterdir())
    out = cli("sweep", str(path), *args, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert set(tmp_path.iterdir()) == before
