"""The report's statistics on synthetic samples (issue 21, points 1, 2, 4, 7): the analysis scale per metric,
verdicts with Holm and two one-sided tests, a single winner only where one cell beats every other, the seeds a
2x difference would need, the gate claims' rule, the chrono split, the sweep's report key and recorded command,
shown store paths and underflowed gradients. No MLflow: each Analysis is built by hand, so this file runs in
seconds."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from suite.registry import SuiteError
from suite.report.gates import chrono_split, claims as gate_claims
from suite.report.keys import DEFAULT_EQUIVALENCE, check_report_block, parse_equivalence
from suite.report.scale import compare, scale_for, seeds_needed, summarize
from suite.report.stats import t_interval, welch_difference
from suite.report.tables import Analysis
from suite.report.verdicts import pairs, significance, standing

# a synthetic sweep where the raw and the log scale disagree: b's seeds spread over a decade
A = [1e-4, 2e-4, 1.5e-4]
B = [2e-3, 5e-3, 1.5e-2]


def analysis(samples: dict, metric="test/mse", direction="minimize", reference=None, margin=DEFAULT_EQUIVALENCE,
             n_eval=None) -> Analysis:
    cells = list(samples)
    an = Analysis(data=SimpleNamespace(spec={"search": {}}, runs=pd.DataFrame()), cells=cells, metric=metric,
                  primary=metric, direction=direction, reference=reference or cells[0])
    an.samples = samples
    an.scale = scale_for(metric, n_eval)
    an.margin = margin
    an.tables["significance"] = significance(an)
    an.tables["pairs"] = pairs(an)
    return an


# ---------------------------------------------------------------------------------------------- 1. the scale
def test_each_metric_has_its_stated_scale():
    assert scale_for("test/mse").name == "log" and scale_for("val/loss").name == "log"
    assert scale_for("test/ppl").name == "log" and "log, the cross-entropy" in scale_for("test/ppl").reason
    assert scale_for("val/acc").name == "logit" and scale_for("test/bpc").name == "raw"


def test_log_scale_is_a_geometric_mean_with_a_multiplicative_interval_that_stays_positive():
    s = summarize(B, scale_for("test/mse"))
    logs = np.log(B)
    mean, half, n = t_interval(logs)
    assert s.center == pytest.approx(math.exp(mean)) and n == s.n == 3
    assert s.lo == pytest.approx(math.exp(mean - half)) and s.hi == pytest.approx(math.exp(mean + half))
    assert s.lo > 0 and s.center * s.center == pytest.approx(s.lo * s.hi)  # symmetric in ratio
    raw_mean, raw_half, _ = t_interval(B)
    assert raw_mean - raw_half < 0  # the raw t-interval of the same seeds reaches below zero


def test_accuracy_interval_stays_in_0_1_and_survives_exactly_one():
    acc = scale_for("test/acc", n_eval=1024)
    s = summarize([1.0, 1.0, 1.0], acc)
    assert s.center == 1.0 and s.lo == 1.0 and s.hi == 1.0  # no spread: finite on the logit, back to 1.0
    s = summarize([1.0, 0.99, 0.97], acc)
    assert 0 <= s.lo < s.center < s.hi <= 1.0
    s = summarize([0.0, 0.02, 0.5], acc)
    assert 0.0 <= s.lo < s.hi <= 1.0
    raw_mean, raw_half, _ = t_interval([1.0, 0.99, 0.97])
    assert raw_mean + raw_half > 1.0  # where the raw interval leaves [0, 1]


def test_raw_and_log_scales_disagree_and_the_verdict_follows_the_log_scale():
    an = analysis({"a": A, "b": B})
    r = an.tables["significance"].raw.set_index("cell").loc["b"]
    p_raw = stats.ttest_ind(B, A, equal_var=False).pvalue
    p_log = stats.ttest_ind(np.log(B), np.log(A), equal_var=False).pvalue
    assert p_raw > 0.05 > p_log  # the disagreement itself
    assert r["p"] == pytest.approx(p_raw) and r["p_scale"] == pytest.approx(p_log)
    assert not r["significant"] and r["verdict"] == "no significant difference from a"  # the raw column, as before
    assert r["outcome"] == "worse"  # the report's verdict, on the log scale
    assert r["ratio"] == pytest.approx(math.exp(np.log(B).mean() - np.log(A).mean()))
    diff, half = welch_difference(np.log(B), np.log(A))
    assert r["ratio_lo"] == pytest.approx(math.exp(diff - half)) and r["ratio_hi"] == pytest.approx(
        math.exp(diff + half))


# ---------------------------------------------------------------------------------------------- 2. verdicts
def test_equivalent_needs_two_one_sided_tests_inside_the_margin():
    ref = [1.00e-3, 1.01e-3, 0.99e-3, 1.0e-3]
    near = [1.02e-3, 1.03e-3, 1.01e-3, 1.02e-3]
    an = analysis({"ref": ref, "near": near})
    r = an.tables["significance"].raw.iloc[0]
    assert r["p_tost"] < 0.05 and r["outcome"] in ("equivalent", "worse")
    c = compare(near, ref, scale_for("test/mse"), DEFAULT_EQUIVALENCE)
    assert c.p_tost == pytest.approx(r["p_tost"])
    wide = analysis({"ref": ref, "near": [1.0e-3, 1.6e-3, 0.7e-3]})
    assert wide.tables["significance"].raw.iloc[0]["outcome"] == "inconclusive"
    tight = analysis({"ref": ref, "near": [1.001e-3, 1.002e-3, 0.999e-3, 1.0e-3]}, margin=(0.999, 1.001))
    assert tight.tables["significance"].raw.iloc[0]["outcome"] != "equivalent"  # the margin is what decides


def test_a_winner_only_when_it_beats_every_other_cell():
    best = [1e-4, 1.1e-4, 0.9e-4]
    an = analysis({"best": best, "mid": [1e-2, 1.2e-2, 0.8e-2], "bad": [1e-2, 1.1e-2, 0.9e-2]})
    st = standing(an)
    assert st["winner"] == "best" and st["tied"] == ["best"]
    an = analysis({"best": best, "close": [1.3e-4, 0.7e-4, 2.4e-4], "bad": [1e-2, 1.1e-2, 0.9e-2]})
    st = standing(an)
    assert st["winner"] is None and st["leader"] == "best" and sorted(st["tied"]) == ["best", "close"]
    (a, b, n), = st["inconclusive"]
    assert {a, b} == {"best", "close"} and n >= 2
    raw = an.tables["pairs"].raw
    assert len(raw) == 3 and set(raw["outcome"]) <= {"better", "worse", "equivalent", "inconclusive"}
    # one Holm family over all three pairs
    from suite.report.stats import holm

    assert list(raw["p_scale_holm"]) == pytest.approx(holm(list(raw["p_scale"])))


def test_the_continuity_correction_counts_the_split_the_metric_was_measured_on():
    """MNIST-1D holds 500 training examples out for validation and tests on its own 1,000: the N of
    logit((a·N + ½)/(N + 1)) follows the split; without a task, the runs' task.val_size (synthetic tasks test on
    as many sequences as they validate on)."""
    from suite import tasks
    from suite.report.analysis import n_eval

    runs = pd.DataFrame({"params.task.val_size": ["500"]})
    data = SimpleNamespace(task=tasks.build("mnist1d", val_size=500), runs=runs)
    assert (n_eval(data, "test/acc"), n_eval(data, "val/acc")) == (1000, 500)
    adding = SimpleNamespace(task=tasks.build("adding", length=10, val_size=256), runs=runs)
    assert n_eval(adding, "test/mse") == 256
    assert n_eval(SimpleNamespace(task=None, runs=runs), "test/acc") == 500


def test_accuracy_verdicts_read_higher_as_better():
    an = analysis({"ref": [0.50, 0.52, 0.48], "good": [0.99, 0.995, 0.985]}, metric="test/acc",
                  direction="maximize", n_eval=1000)
    assert an.tables["significance"].raw.iloc[0]["outcome"] == "better"


def test_seeds_needed_for_a_2x_difference_at_80_percent_power():
    log = scale_for("test/mse")
    sd = 0.5
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    normal = 2 * (z * sd / math.log(2)) ** 2  # the normal approximation; the t-test needs a little more
    n = seeds_needed(sd, log)
    assert normal <= n <= normal + 3
    assert seeds_needed(2 * sd, log) > n and seeds_needed(0.0, log) == 2 and math.isnan(seeds_needed(math.nan, log))
    assert math.isinf(seeds_needed(50.0, log))  # beyond the cap: "> 1000"


# ---------------------------------------------------------------------------------------------- 4. gate claims
@pytest.mark.parametrize("near0,near1,mostly,both", [(0.3, 0.4, "yes", "yes"), (0.01, 0.9, "yes", "no"),
                                                     (0.05, 0.05, "no", "no"), (math.nan, math.nan, "yes",
                                                                                "not recorded")])
def test_mostly_zeros_and_ones_needs_both_ends(near0, near1, mostly, both):
    saturation = 0.7 if math.isnan(near0) else near0 + near1
    assert gate_claims(near0, near1, saturation) == (mostly, both)


def chrono_searched(near0: list[float], near1: list[float]) -> Analysis:
    """gru's four runs, two with chrono init and two without, the search having varied it."""
    runs = pd.DataFrame({"cell": ["gru"] * 4, "params.model.chrono_init": ["True", "True", "False", "False"],
                         "metrics.gates/l0/z/saturation": [0.8, 0.6, 0.1, 0.2],
                         "metrics.gates/l0/z/near0": near0, "metrics.gates/l0/z/near1": near1})
    return Analysis(data=SimpleNamespace(spec={"search": {"model.chrono_init": {"type": "choice"}}}, runs=runs),
                    cells=["gru"], metric="val/mse", primary="val/mse", direction="minimize", reference="gru")


def test_saturation_is_split_by_chrono_init_where_it_was_searched():
    an = chrono_searched([0.0, 0.0, 0.05, 0.1], [0.8, 0.6, 0.05, 0.1])
    t = chrono_split(an).raw.set_index("chrono_init")
    assert t.loc["True", "saturation_end"] == pytest.approx(0.7) and t.loc["False", "runs"] == 2
    an.data.spec["search"] = {}
    assert chrono_split(an) is None


def test_the_chrono_claim_applies_the_gate_rule_per_setting_and_is_recomputed(tmp_path):
    import json

    from suite.report.check import check_claims
    from suite.report.claims import chrono_claims

    an = chrono_searched([0.3, 0.2, 0.05, 0.1], [0.5, 0.4, 0.05, 0.1])
    an.tables["gates_chrono"] = chrono_split(an)
    [c] = chrono_claims(an)
    assert c["numbers"] == {"gru": {"True": {"mostly_saturated": "yes", "zeros_and_ones": "yes", "runs": 2},
                                    "False": {"mostly_saturated": "no", "zeros_and_ones": "no", "runs": 2}}}
    assert "chrono on (2 runs): near 0 0.25, near 1 0.45" in c["text"] and "chrono off (2 runs)" in c["text"]
    an.tables["gates_chrono"].raw.to_csv(tmp_path / "gates_chrono.csv", index=False)
    (tmp_path / "leaderboard.csv").write_text("cell,source,val_mse_seeds\ngru,this sweep,1:0.1\n")
    meta = {"metric": "val/mse", "n_eval": None, "key": "val_mse"}
    (tmp_path / "claims.json").write_text(json.dumps({"meta": meta, "claims": [c]}))
    assert check_claims(tmp_path) == []
    t = pd.read_csv(tmp_path / "gates_chrono.csv")
    off = t["chrono_init"].astype(str) == "False"
    t.loc[off, ["saturation_end", "near0_end", "near1_end"]] = [0.9, 0.2, 0.7]  # off now at both ends too
    t.to_csv(tmp_path / "gates_chrono.csv", index=False)
    assert [p.split(":")[0] for p in check_claims(tmp_path)] == ["claim gates_chrono"]


# ---------------------------------------------------------------------------------------------- 2 and 7: sweep
def _sweep_file(tmp_path, **extra):
    spec = {"name": "k", "task": "adding", "cells": ["gru"], "budget": {"trials": 2, "steps": 5}, **extra}
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_sweep_file_sets_the_equivalence_margin(tmp_path):
    from suite.sweep import load_sweep

    assert load_sweep(_sweep_file(tmp_path)).report == {"equivalence": [0.8, 1.25]}
    assert load_sweep(_sweep_file(tmp_path, report={"equivalence": [0.9, 1.1]})).report["equivalence"] == [0.9, 1.1]
    for bad in ({"equivalence": [1.2, 0.8]}, {"equivalence": [0.8]}, {"margin": 1}, [0.8, 1.25]):
        with pytest.raises(SuiteError, match="report"):
            load_sweep(_sweep_file(tmp_path, report=bad))
    assert check_report_block("f", None)["equivalence"] == [0.8, 1.25]
    assert parse_equivalence("0.9,1.1") == (0.9, 1.1) and parse_equivalence(None) == DEFAULT_EQUIVALENCE


def test_the_sweep_command_is_rebuilt_as_typed_with_secrets_masked():
    from suite.sweep import sweep_command

    line = sweep_command("sweeps/x.yaml", "postgresql://u:secret@h/db", None, workers=2)
    assert line == "rnnsuite sweep sweeps/x.yaml --storage 'postgresql://u:***@h/db' --workers 2"


def test_store_paths_are_shown_relative_to_rnnsuite_home(tmp_path, monkeypatch):
    from suite.report.provenance import shown_command, shown_store

    monkeypatch.setenv("RNNSUITE_HOME", str(tmp_path / "home"))
    assert shown_store(f"sqlite:///{tmp_path}/home/mlflow.db") == "sqlite:///$RNNSUITE_HOME/mlflow.db"
    assert shown_store(str(tmp_path / "elsewhere" / "optuna.journal")) == "<local>/optuna.journal"
    assert shown_store("postgresql://u:pw1234@h/db") == "postgresql://u:***@h/db"
    line = shown_command(f"rnnsuite sweep x.yaml --tracking-uri sqlite:///{tmp_path}/home/mlflow.db")
    assert str(tmp_path) not in line and "$RNNSUITE_HOME/mlflow.db" in line


def test_an_underflowed_gradient_profile_is_said_and_drawn(monkeypatch):
    from suite.report.document import underflow_note
    from suite.report.figures import gradient_flow

    prof = pd.DataFrame({"cell": ["rnn_tanh"] * 6, "when": ["end"] * 6, "state": ["h"] * 6, "t": range(6),
                         "norm": [0.0, 0.0, 1e-30, 1e-10, 1e-3, 1e-2], "n": [3] * 6})
    an = Analysis(data=SimpleNamespace(spec={"search": {}}, task=None), cells=["rnn_tanh"], metric="val/mse",
                  primary="val/mse", direction="minimize", reference="rnn_tanh")
    an.frames["grad_profile"] = prof
    an.frames["curves"] = pd.DataFrame(columns=["cell", "key", "step", "mean", "sd", "min", "max", "n"])
    note = underflow_note(an)
    assert "rnn_tanh end of training at t = 0–1 (2 steps)" in note and "▼" in note
    fig = gradient_flow(an)
    assert fig is not None and "underflowed" in fig.caption
