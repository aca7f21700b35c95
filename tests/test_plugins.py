"""Cells and tasks from outside the package: the example plugins of tests/plugins/ (IndRNN, parity) registered
through RNNSUITE_PLUGINS and through an entry point, then listed, trained, swept and reported with no edit to
the package; a broken plugin or a duplicate name is one line and exit 2 (docs/extending.md)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "plugins"


def cli(*args, cwd, plugins="", path=(), timeout=600):
    """``python -m suite ARGS`` with RNNSUITE_PLUGINS=plugins and the folders in ``path`` importable."""
    env = dict(os.environ, RNNSUITE_PLUGINS=plugins)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, path), str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "suite", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def listed(stdout: str) -> dict[str, set[str]]:
    """`rnnsuite list` output -> section -> the names in it."""
    sections: dict[str, set[str]] = {}
    for line in stdout.splitlines():
        if not line.startswith(" "):
            current = sections.setdefault(line.rstrip(":").split(" (")[0], set())
        else:
            current.add(line.split()[0])
    return sections


def test_plugins_from_the_environment_variable_are_listed(tmp_path):
    out = cli("list", cwd=tmp_path, plugins="indrnn, parity", path=[PLUGINS])
    assert out.returncode == 0, out.stderr
    sections = listed(out.stdout)
    assert "indrnn" in sections["cells"] and "parity" in sections["tasks"]
    assert "Li et al. 2018" in next(line for line in out.stdout.splitlines() if line.strip().startswith("indrnn"))
    bare = listed(cli("list", cwd=tmp_path).stdout)  # without the variable: the package's own names only
    assert sections["cells"] - bare["cells"] == {"indrnn"} and sections["tasks"] - bare["tasks"] == {"parity"}


def test_plugins_from_entry_points_are_listed(tmp_path):
    """An installed distribution's entry points, as pip would leave them: a *.dist-info folder on the path."""
    site = tmp_path / "site"
    info = site / "rnnsuite_examples-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rnnsuite-examples\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[rnnsuite.cells]\nindrnn = indrnn\n\n[rnnsuite.tasks]\nparity = parity\n")
    out = cli("list", cwd=tmp_path, path=[site, PLUGINS])
    assert out.returncode == 0, out.stderr
    sections = listed(out.stdout)
    assert "indrnn" in sections["cells"] and "parity" in sections["tasks"]

    (info / "entry_points.txt").write_text("[rnnsuite.cells]\nindrnn2 = indrnn\n")  # a name it does not register
    out = cli("list", cwd=tmp_path, path=[site, PLUGINS])
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == ("rnnsuite: error: plugin 'indrnn' (entry point 'indrnn2' of rnnsuite.cells) "
                                  "registered no cell named 'indrnn2': the entry point's name must be the name "
                                  "its module registers")


@pytest.mark.parametrize("source,message", [
    ("", "plugin 'absent_plugin' (from RNNSUITE_PLUGINS) failed to import: ModuleNotFoundError: No module named "
         "'absent_plugin'"),
    ("raise RuntimeError('no GPU here')\n",
     "plugin 'absent_plugin' (from RNNSUITE_PLUGINS) failed to import: RuntimeError: no GPU here"),
    ("from suite.cells import RecurrentCell, register\n\n\n@register('gru', 'a second gru', 'nobody')\n"
     "class Gru(RecurrentCell):\n    pass\n",
     "plugin 'absent_plugin' (from RNNSUITE_PLUGINS): duplicate cell name 'gru': already registered by "
     "suite.cells.gru.GRU; choose another name"),
    ("from suite.tasks import Task, register\n\n\n@register('adding', 'a second adding', 'nobody')\n"
     "class Adding(Task):\n    pass\n",
     "plugin 'absent_plugin' (from RNNSUITE_PLUGINS): duplicate task name 'adding': already registered by "
     "suite.tasks.adding.Adding; choose another name"),
])
def test_a_broken_plugin_is_one_line_and_exit_2(tmp_path, source, message):
    if source:
        (tmp_path / "absent_plugin.py").write_text(source)
    out = cli("list", cwd=tmp_path, plugins="absent_plugin", path=[tmp_path])
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"rnnsuite: error: {message}\n"  # one line: no traceback


def test_train_a_plugin_cell_on_a_plugin_task(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = cli("train", "--task", "parity", "--cell", "indrnn", "--steps", "4", "--set", "task.length=8",
              "--set", "task.val_size=32", "--set", "model.hidden_size=8", "--set", "train.progress=false",
              "--tracking-uri", uri, "--json", cwd=tmp_path, plugins="indrnn,parity", path=[PLUGINS])
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    assert payload["status"] == "FINISHED" and 0 <= payload["val/acc"] <= 1 and payload["test/loss"] > 0
    params = mlflow.MlflowClient(uri).get_run(payload["run_id"]).data.params
    assert params["model.cell"] == "indrnn" and params["task.name"] == "parity"


@pytest.mark.slow
def test_tiny_sweep_and_report_with_a_plugin_cell_and_task(tmp_path):
    spec = {"name": "plug", "task": "parity",
            "base": {"task": {"length": 8, "batch_size": 16, "val_size": 64}, "model": {"hidden_size": 8},
                     "train": {"val_every": 10, "diag_every": 0, "log_every": 5, "progress": False}},
            "cells": ["indrnn", "gru"], "budget": {"trials": 2, "steps": 10},
            "search": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}},
            "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
            "confirm": {"top_k": 1, "seeds": 2}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    stores = ["--storage", str(tmp_path / "optuna.journal"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    kw = dict(cwd=tmp_path, plugins="indrnn,parity", path=[PLUGINS])
    out = cli("sweep", str(tmp_path / "s.yaml"), *stores, "--quiet", "--workers", "2", **kw)
    assert out.returncode == 0, out.stderr  # two worker processes: each imported the plugins itself
    done = cli("report", "plug", "-o", str(tmp_path / "rep"), *stores, **kw)
    assert done.returncode == 0, done.stderr
    board = pd.read_csv(tmp_path / "rep" / "leaderboard.csv")
    ours = board[board["source"] == "this sweep"]
    assert sorted(ours["cell"]) == ["gru", "indrnn"] and (ours["n"] == 2).all()
    assert ours["test_acc_mean"].between(0, 1).all()


@pytest.mark.parametrize("ci,code,fragment", [("true", 1, "FAILED"), ("", 0, "SKIPPED")])
def test_a_cell_without_a_regression_entry_fails_under_ci_and_skips_otherwise(tmp_path, ci, code, fragment):
    (tmp_path / "elman_copy.py").write_text(
        "from suite.cells import register\nfrom suite.cells.rnn import TanhRNN\n\n\n"
        "@register('elman_copy', 'a second Elman RNN, without a regression entry', 'Elman 1990')\n"
        "class ElmanCopy(TanhRNN):\n    pass\n")
    env = dict(os.environ, RNNSUITE_PLUGINS="elman_copy", CI=ci,
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs",
                          "tests/test_cells_contract.py", "-k", "regression_outputs and elman_copy"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == code, out.stdout + out.stderr
    assert f"{fragment} " in out.stdout
    assert ("cell 'elman_copy' has no regression entry: write it with `python -m tests.regression update "
            "elman_copy`") in out.stdout


@pytest.mark.parametrize("plugin", ["indrnn.py", "parity.py"])
def test_the_examples_in_docs_extending_are_the_plugins_themselves(plugin):
    """docs/extending.md shows each example plugin whole (docstrings shortened): every line it shows is in the file."""
    doc = (ROOT / "docs" / "extending.md").read_text()
    source = (PLUGINS / plugin).read_text().splitlines()
    shown = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if f"tests/plugins/{plugin}" in doc
             and "@register" in b and plugin.split(".")[0] in b]
    assert len(shown) == 1
    missing = [line for line in shown[0].splitlines() if line.strip() and line not in source]
    assert not missing, missing
