"""The sweep -> report contract (suite.sweep.contract): study names and the parent run's params, read back as
written whatever their length, and importable without the sweep's heavy dependencies."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from suite.sweep.contract import (PARAM_LIMIT, PHASE_CONFIRM, ContractError, SweepRecord, joined_param,
                                  split_param, study_name, sweep_of)

RECORD = SweepRecord(cells=["gru", "lstm"], trials=9, steps=200, epochs=0, metric="val/mse", direction="minimize",
                     search={"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 0.1}},
                     sampler={"name": "tpe", "seed": 0}, pruner={"name": "none"}, design={"kind": "none", "points": 0},
                     param_match=0, top_k=2, seeds=[1, 2, 3], storage="rnnsuite-runs/optuna.journal", task="adding",
                     description="a sweep", equivalence="0.8,1.25")


def test_study_names():
    assert study_name("s", "adding", "gru") == "s/adding/gru"
    assert study_name("s", "copy-T100", "gru", PHASE_CONFIRM) == "s/copy-T100/gru/confirm"
    assert sweep_of(study_name("s", "adding", "gru", PHASE_CONFIRM)) == "s"


def test_the_parent_params_keep_their_names_and_read_back():
    params = RECORD.params()
    assert params["trials_per_cell"] == "9" and params["confirm.top_k"] == "2" and params["confirm.seeds"] == "1,2,3"
    assert params["cells"] == "gru,lstm" and json.loads(params["search"]) == RECORD.search
    params["report.equivalence"] = "0.8,1.25"  # logged on its own
    assert SweepRecord.from_run(params, {"task": "adding", "description": "a sweep"}) == RECORD


def test_a_search_space_longer_than_a_param_is_split_and_joined_losslessly():
    search = {f"model.option_{i}": {"type": "choice", "values": list(range(60))} for i in range(60)}
    params = SweepRecord(**{**RECORD.__dict__, "search": search}).params()
    assert len(json.dumps(search)) > 2 * PARAM_LIMIT
    assert all(len(v) <= PARAM_LIMIT for v in params.values()) and "search.2" in params and "search.3" in params
    assert SweepRecord.from_run(params, {}).search == search
    assert split_param("k", "") == {"k": ""} and joined_param({}, "k") is None


def test_a_cut_value_is_an_error_not_an_empty_mapping():
    params = RECORD.params()
    params["search"] = params["search"][:20]  # as an rnnsuite before the split logged a long space
    with pytest.raises(ContractError, match="param 'search' that is not JSON"):
        SweepRecord.from_run(params, {})


def test_a_run_before_a_param_existed_reads_its_defaults():
    record = SweepRecord.from_run({"cells": "gru"}, {})
    assert record.cells == ["gru"] and record.top_k == 1 and record.direction == "minimize" and record.search == {}


def test_the_contract_loads_without_torch_optuna_or_mlflow():
    code = ("import sys, suite.sweep.contract; from suite.sweep import ARCHIVED_RUNNING; "
            "print(sorted(m for m in ('torch', 'optuna', 'mlflow', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
