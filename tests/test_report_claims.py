"""Reports built from synthetic sweeps (suite.bench.synth) for issue 21: every claim of claims.json recomputed
from the CSVs (and a tampered CSV caught), the raw and log scales disagreeing with the verdict following the log
scale, a diverged seed counted and shown, gate ends and histograms (and an old sweep without them said to be
"not recorded"), the sweep's recorded command, and no absolute local path in the page."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from suite.report import build_report
from suite.report.check import check_claims
from suite.bench.synth import STEPS, write_synthetic_sweep

A = [1e-4, 2e-4, 1.5e-4]  # gru's test MSE per seed
B = [2e-3, 5e-3, 1.5e-2]  # lstm's: a decade of spread; raw Welch p > 0.05, log Welch p < 0.05
OLD_COLUMNS = {"leaderboard": ["cell", "source", "n", "val_mse_mean", "val_mse_ci95", "test_mse_mean", "test_mse_ci95",
                               "n_params", "ms_per_step", "trials", "budget", "best_search", "beats_baseline",
                               "solved", "seeds_solved", "note", "citation"],
               "significance": ["cell", "reference", "metric", "n", "n_ref", "mean", "mean_ref", "difference",
                                "difference_ci95", "test", "statistic", "p", "p_holm", "significant", "verdict"],
               "gates": ["cell", "layer", "gate", "keep_gate", "saturation_start", "saturation_end", "mean_start",
                         "mean_end", "n"]}


def _runs(made, filt):
    client = mlflow.MlflowClient(made["tracking_uri"])
    exp = client.get_experiment_by_name(made["name"]).experiment_id
    return client, client.search_runs([exp], filt)


def _report(root, made, **kw):
    out = root / "out"
    result = build_report(made["name"], out, storage=made["storage"], tracking_uri=made["tracking_uri"],
                          log_artifacts=False, **kw)
    return out, result


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """3 cells; gru and lstm get the test MSEs A and B; sgru's seed 2 diverged; the sweep recorded its command."""
    root = tmp_path_factory.mktemp("claims")
    made = write_synthetic_sweep(root, n_runs=24, n_cells=3, name="edited")
    client, confirm = _runs(made, "tags.phase = 'confirm'")
    for run in confirm:
        cell, seed = run.data.tags["cell"], int(run.data.tags["seed"])
        if cell in ("gru", "lstm"):
            client.log_metric(run.info.run_id, "test/mse", (A if cell == "gru" else B)[seed - 1], step=STEPS + 1)
        if cell == "sgru" and seed == 2:
            client.set_tag(run.info.run_id, "failure.reason", "diverged: loss is nan at step 40")
            client.set_tag(run.info.run_id, "failure.step", "40")
            client.set_terminated(run.info.run_id, "FAILED")
    client.set_tag(made["parent_run_id"], "rnnsuite.command",
                   f"rnnsuite sweep sweeps/edited.yaml --tracking-uri {made['tracking_uri']}")
    out, result = _report(root, made)
    return {"root": root, "made": made, "out": out, "result": result, "md": (out / "report.md").read_text(),
            "html": (out / "index.html").read_text()}


def test_every_claim_is_recomputed_from_the_csvs(edited, tmp_path):
    assert check_claims(edited["out"]) == []
    claims = json.loads((edited["out"] / "claims.json").read_text())
    ids = [c["id"] for c in claims["claims"]]
    assert ids[0] == "standing" and {"reference", "baseline", "diverged", "grad_decay", "grad_solving",
                                     "gates"} <= set(ids)
    for c in claims["claims"]:  # each sentence of the summary is a claim, with where it came from
        assert c["text"] in edited["md"] and c["source"]["table"].endswith(".csv") and c["source"]["columns"]
    # tampering with the data behind a claim is caught
    copy = tmp_path / "copy"
    shutil.copytree(edited["out"], copy)
    board = pd.read_csv(copy / "leaderboard.csv")
    i = board.index[board["cell"] == "gru"][0]
    board.loc[i, "test_mse_seeds"] = "1:0.5;2:0.6;3:0.7"
    board.to_csv(copy / "leaderboard.csv", index=False)
    assert any("standing" in p or "reference" in p for p in check_claims(copy))


def test_the_check_runs_from_the_command_line_under_both_names(tmp_path):
    """`python -m suite.report.check DIR` (docs/reports.md) on the committed example, and the old name
    `python -m suite.report_check` forwarding to it for one release (CHANGELOG.md); a changed claim exits 1."""
    example = Path(__file__).resolve().parents[1] / "reports" / "example-adding"

    def check(module: str, folder: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, str(folder)], capture_output=True, text=True,
                              timeout=300)

    new, old = check("suite.report.check", example), check("suite.report_check", example)
    assert (new.returncode, new.stdout, new.stderr) == (0, "every claim recomputed from the CSVs\n", "")
    assert (old.returncode, old.stdout) == (0, new.stdout) and "use python -m suite.report.check" in old.stderr
    copy = tmp_path / "copy"
    shutil.copytree(example, copy, ignore=shutil.ignore_patterns("*.png", "*.tar.gz", "*.html"))
    claims = json.loads((copy / "claims.json").read_text())
    claims["claims"][0]["numbers"]["center"] *= 1.01
    (copy / "claims.json").write_text(json.dumps(claims))
    bad = check("suite.report.check", copy)
    assert bad.returncode == 1 and bad.stdout.startswith("claim standing: center ")


def test_raw_and_log_scales_disagree_and_the_report_says_so(edited):
    sig = pd.read_csv(edited["out"] / "significance.csv").set_index("cell")
    lstm = sig.loc["lstm"]
    assert lstm["p_holm"] > 0.05 and not lstm["significant"]  # raw scale, the columns as before
    assert lstm["p_scale"] < 0.05 and lstm["outcome"] == "worse" and lstm["scale"] == "log"
    assert lstm["ratio"] == pytest.approx(math.exp(np.log(B).mean() - np.log(A).mean()))
    board = pd.read_csv(edited["out"] / "leaderboard.csv").set_index("cell")
    assert board.loc["lstm", "test_mse_mean"] - board.loc["lstm", "test_mse_ci95"] < 0  # raw interval below 0
    assert board.loc["lstm", "test_mse_lo"] > 0  # the multiplicative one is not
    assert board.loc["lstm", "test_mse_center"] == pytest.approx(math.exp(np.log(B).mean()))
    assert "analysed on the log scale" in edited["md"] and "because errors that span orders" in edited["md"]


def test_a_diverged_seed_is_counted_and_shown(edited):
    board = pd.read_csv(edited["out"] / "leaderboard.csv").set_index("cell")
    assert board.loc["sgru", "n"] == 2 and board.loc["sgru", "n_diverged"] == 1 and board.loc["sgru", "n_planned"] == 3
    assert "2:diverged" in board.loc["sgru", "test_mse_seeds"]
    seeds = pd.read_csv(edited["out"] / "seeds.csv")
    assert ((seeds["cell"] == "sgru") & (seeds["status"] == "diverged")).sum() == 1
    assert "2 of 3 (1 diverged)" in edited["md"] and "sgru 1 of 3" in edited["md"]
    for png in ("seeds.png", "verdicts.png", "learning_curves.png"):
        assert (edited["out"] / png).read_bytes()[:4] == b"\x89PNG"


def test_existing_csv_columns_are_kept(edited):
    for name, columns in OLD_COLUMNS.items():
        have = list(pd.read_csv(edited["out"] / f"{name}.csv").columns)
        assert set(columns) <= set(have), (name, set(columns) - set(have))


def test_no_single_winner_is_crowned_without_beating_every_cell(edited):
    claims = json.loads((edited["out"] / "claims.json").read_text())
    standing = claims["claims"][0]["numbers"]
    pairs = pd.read_csv(edited["out"] / "pairs.csv")
    assert len(pairs) == 3
    if standing["winner"] is None:
        assert "No single cell is best" in edited["md"] and " is best**" not in edited["md"]
    else:
        w = standing["winner"]
        mine = pairs[(pairs["a"] == w) | (pairs["b"] == w)]
        assert all((r.a == w) == (r.outcome == "better") for r in mine.itertuples())


def test_gate_ends_and_histograms(edited):
    gates = pd.read_csv(edited["out"] / "gates.csv")
    assert gates["near0_end"].notna().all() and gates["near1_end"].notna().all()
    assert (gates["near0_end"] + gates["near1_end"]).to_numpy() == pytest.approx(gates["saturation_end"].to_numpy())
    assert gates["near0_start"].to_numpy() == pytest.approx(0.1)  # the histogram's first bin before training
    hist = pd.read_csv(edited["out"] / "gate_hist.csv")
    assert set(hist["when"]) == {"start", "end"}
    sums = hist.groupby(["cell", "gate", "when"])["fraction"].sum()
    assert np.allclose(sums, 1.0)
    assert (edited["out"] / "gate_hist.png").is_file() and "mostly zeros and ones" in edited["md"]


def _claim(out: Path, cid: str) -> dict:
    return next(c for c in json.loads((out / "claims.json").read_text())["claims"] if c["id"] == cid)


def test_the_gradient_claim_sorts_cells_by_reach_and_solving_and_names_the_exceptions(edited, tmp_path):
    runs = pd.read_csv(edited["out"] / "runs.csv")
    decay = runs[runs["confirmed"]].groupby("cell")["diag/grad_decay"].mean()
    board = pd.read_csv(edited["out"] / "leaderboard.csv").set_index("cell")
    solved = {c: board.loc[c, "solved"] == "yes" for c in decay.index}
    assert set(solved.values()) == {True, False}  # gru's 1e-4 solves adding (< 1% of 1/6), lstm's 2e-3+ does not
    want: dict[str, list[str]] = {}
    for c in decay.index:
        want.setdefault(f"{'reaches' if decay[c] > -2 else 'vanishes'}_{'solved' if solved[c] else 'unsolved'}",
                        []).append(c)
    c = _claim(edited["out"], "grad_solving")
    assert {k: sorted(v) for k, v in c["numbers"]["groups"].items() if v} == {k: sorted(v) for k, v in want.items()}
    assert c["numbers"]["solving"].startswith("solved (the task's criterion")
    exceptions = c["text"].split("Exceptions", 1)[1]
    assert re.search(r"\blstm \(", exceptions) and not re.search(r"\bgru \(", exceptions)  # lstm: reaches, unsolved
    # a confirmed run's gradient turned vanishing is caught
    copy = tmp_path / "copy"
    shutil.copytree(edited["out"], copy)
    runs.loc[runs["confirmed"] & (runs["cell"] == "gru"), "diag/grad_decay"] = -5.0
    runs.to_csv(copy / "runs.csv", index=False)
    assert any(p.startswith("claim grad_solving:") for p in check_claims(copy))


def test_the_gate_claim_says_before_and_after_and_which_chrono_init(edited, tmp_path):
    gates = pd.read_csv(edited["out"] / "gates.csv")
    assert set(gates["chrono_init"]) == {"off"}  # the synthetic sweep trains with model.chrono_init false
    c = _claim(edited["out"], "gates")
    for cell, v in c["numbers"].items():
        assert v["chrono"] == "off" and f"{cell} (" in c["text"]
        assert (v["mostly_saturated_start"], v["zeros_and_ones_start"]) == ("no", "no")  # 0 saturated at step 0
    assert "chrono off" in c["text"] and " → " in c["text"]
    copy = tmp_path / "copy"
    shutil.copytree(edited["out"], copy)
    gates.loc[gates["cell"] == "gru", "chrono_init"] = "on"
    gates.to_csv(copy / "gates.csv", index=False)
    assert any(p.startswith("claim gates: gru: chrono off") for p in check_claims(copy))


def test_the_recorded_command_is_printed_and_no_absolute_path_is(edited):
    md, root = edited["md"], str(edited["root"])
    assert "rnnsuite sweep sweeps/edited.yaml --tracking-uri" in md and "# rebuilt" not in md
    assert root not in md and root not in edited["html"]
    assert "## Caveats" in md and "training noise only" in md and "one sampler seed" in md


def test_an_old_sweep_without_gate_ends_reads_not_recorded(tmp_path):
    made = write_synthetic_sweep(tmp_path, n_runs=14, n_cells=2, name="old", legacy=True)
    out, _ = _report(tmp_path, made)
    md = (out / "report.md").read_text()
    gates = pd.read_csv(out / "gates.csv")
    assert gates["near0_end"].isna().all() and set(gates["zeros_and_ones"]) == {"not recorded"}
    assert "Histograms of the gate activations: not recorded" in md and not (out / "gate_hist.png").exists()
    assert "# rebuilt: the sweep predates its recorded command" in md
    assert check_claims(out) == []


def test_more_than_five_cells_get_one_curve_panel_each(tmp_path):
    made = write_synthetic_sweep(tmp_path, n_runs=36, n_cells=6, name="six")
    out, result = _report(tmp_path, made)
    md = (out / "report.md").read_text()
    assert "val MSE per cell (one panel each, shared axes)" in md
    assert check_claims(out) == []
    from suite.report.figures import colors

    palette = colors(made["cells"])
    assert len(set(palette.values())) == 6  # a colour per cell, from a palette whose colours stay apart
