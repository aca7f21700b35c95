"""rnnsuite report: a real tiny sweep reported through the CLI and opened in headless Chromium; the numbers of the
HTML, the Markdown and the CSVs agree; the statistics match known values; a running sweep says how far it is;
unknown sweeps and unreachable stores are one line, exit 2, and write nothing."""
from __future__ import annotations

import base64
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from suite.report.stats import holm, t_interval, two_sample_test, welch_difference
from suite.report.tables import fmt

SPEC = {
    "name": "rep",
    "description": "report test sweep",
    "task": "adding",
    "base": {"task": {"length": 12, "batch_size": 16, "val_size": 64},
             "model": {"hidden_size": 8},
             "train": {"val_every": 10, "diag_every": 10, "log_every": 5, "progress": False}},
    "cells": ["gru", "sgru", "lstm"],
    "budget": {"trials": 3, "steps": 20},
    "search": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}},
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "confirm": {"top_k": 1, "seeds": 2},
}
PNGS = ("learning_curves.png", "gradient_flow.png", "gate_use.png", "tuning.png", "design.png", "seeds.png",
        "verdicts.png", "gate_hist.png")
CSVS = ("leaderboard", "significance", "runs", "trials", "curves", "grad_profile", "gates", "importance", "fairness",
        "design", "pairs", "seeds", "gate_hist")


def cli(*args, cwd, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "suite", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One finished sweep (3 cells x (3 trials + 2 seeds)) on embedded stores, run once for the module."""
    root = tmp_path_factory.mktemp("report")
    path = root / "rep.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    storage, tracking = str(root / "optuna.journal"), f"sqlite:///{root / 'mlflow.db'}"
    out = cli("sweep", str(path), "--storage", storage, "--tracking-uri", tracking, "--quiet", cwd=root)
    assert out.returncode == 0, out.stderr
    return {"root": root, "file": path, "storage": storage, "tracking": tracking}


@pytest.fixture(scope="module")
def report(sweep):
    out = sweep["root"] / "out"
    done = cli("report", "rep", "-o", str(out), "--storage", sweep["storage"], "--tracking-uri", sweep["tracking"],
               cwd=sweep["root"])
    assert done.returncode == 0, done.stderr
    return {**sweep, "out": out, "stdout": done.stdout, "html": (out / "index.html").read_text(),
            "md": (out / "report.md").read_text()}


# ---------------------------------------------------------------------------------------------- helpers
class _Tables(HTMLParser):
    """Every <table id=...> of a page as rows of cell texts, and the text of the summary box."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.summary: list[str] = []
        self._table = self._row = self._cell = None
        self._in_summary = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "div" and a.get("class") == "summary":
            self._in_summary = 1
        elif tag == "div" and self._in_summary:
            self._in_summary += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "div" and self._in_summary:
            self._in_summary -= 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_summary:
            self.summary.append(data)


def html_tables(text: str) -> _Tables:
    parser = _Tables()
    parser.feed(text)
    return parser


def md_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table of a Markdown file, separator rows dropped, emphasis markers and escapes removed."""
    tables = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or not all(line.startswith("|") for line in lines):
            continue
        rows = []
        for line in lines:
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if all(re.fullmatch(r"-+:?", c) for c in cells):
                continue
            rows.append([re.sub(r"^\*\*(.*)\*\*$|^\*(.*)\*$", lambda m: m.group(1) or m.group(2), c) for c in cells])
        tables.append(rows)
    return tables


def as_dicts(rows: list[list[str]]) -> list[dict[str, str]]:
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def close(shown: str, value: float, digits: int = 4) -> bool:
    """A displayed number (rounded to `digits` significant digits) against the CSV's full-precision value."""
    return math.isclose(float(shown), value, rel_tol=0.501 * 10 ** (1 - digits), abs_tol=1e-12)


def find_browser() -> str:
    from servers import browser_path

    return browser_path()


def browser(exe: str, *args, profile: Path, timeout=120):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------- the files
def test_report_writes_every_file_and_says_the_sweep_is_finished(report):
    out = report["out"]
    assert "Sweep rep is finished: 9 of 9 search trials and 6 of 6 confirmation runs are done." in report["stdout"]
    for name in ("index.html", "report.md", *PNGS, *(f"{c}.csv" for c in CSVS)):
        assert (out / name).is_file(), name
    for png in PNGS:  # the Markdown's figures are files beside it
        assert f"]({png})" in report["md"]
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    board = pd.read_csv(out / "leaderboard.csv")
    ours = board[board["source"] == "this sweep"]
    assert sorted(ours["cell"]) == ["gru", "lstm", "sgru"]
    assert (ours["n"] == 2).all() and (ours["trials"] == 3).all()
    assert ((board["source"] == "task baseline") & np.isclose(board["val_mse_mean"], 1 / 6)).any()
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 3 * (3 + 2) and set(runs["phase"]) == {"search", "confirm"}
    assert runs["confirmed"].sum() == 6
    # the Files section names exactly the CSVs written (no gates_chrono.csv here: chrono was not searched)
    listed = set(re.findall(r"^- `(\w+\.csv)`", report["md"].partition("## Files")[2], flags=re.M))
    assert listed == {p.name for p in out.glob("*.csv")} and "gates_chrono.csv" not in listed


def test_a_rebuild_removes_a_csv_the_new_report_does_not_write(report, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(report["out"], out)
    (out / "gates_chrono.csv").write_text("cell\nstale\n")  # as left by an older report of a chrono search
    again = cli("report", "rep", "-o", str(out), "--storage", report["storage"], "--tracking-uri",
                report["tracking"], cwd=report["root"])
    assert again.returncode == 0, again.stderr
    assert not (out / "gates_chrono.csv").exists() and (out / "gates.csv").is_file()


def test_html_is_self_contained(report):
    page = report["html"]
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", page)  # nothing fetched from a network
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(PNGS)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_browser_renders_the_page_and_every_image_loads(report, tmp_path):
    exe = find_browser()
    page = report["html"]
    probe = """<script>window.addEventListener("load", () => {
      const imgs = [...document.images].map(i => ({ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}));
      document.body.setAttribute("data-probe", JSON.stringify({imgs, h2: document.querySelectorAll("h2").length}));
    });</script>"""
    checked = tmp_path / "probe.html"
    checked.write_text(page.replace("</body>", probe + "</body>"))
    dom = browser(exe, "--virtual-time-budget=10000", "--dump-dom", checked.as_uri(), profile=tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-probe="([^"]+)"', dom.stdout)
    assert found, "the page's load event never ran"
    probe_result = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(probe_result["imgs"]) == len(PNGS)
    assert all(i["ok"] and i["w"] > 300 for i in probe_result["imgs"]), probe_result
    assert probe_result["h2"] >= 8  # Summary, sections 1-7, Files
    shot = tmp_path / "page.png"
    run = browser(exe, "--window-size=1280,2400", f"--screenshot={shot}", (report["out"] / "index.html").as_uri(),
                  profile=tmp_path / "p2")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280)
    assert pixels.std() > 10  # text, tables and figures, not a blank page


# ---------------------------------------------------------------------------------------------- agreement
def test_markdown_tables_equal_the_html_tables(report):
    html_t = html_tables(report["html"]).tables
    md_t = md_tables(report["md"])
    assert len(md_t) == len(html_t) >= 4
    for (name, rows), md_rows in zip(html_t.items(), md_t):
        assert md_rows == rows, name


def test_numbers_agree_with_the_csvs(report):
    out = report["out"]
    parsed = html_tables(report["html"])
    board = pd.read_csv(out / "leaderboard.csv")
    shown = {r["cell"]: r for r in as_dicts(parsed.tables["table-leaderboard"])}
    for _, row in board[board["source"] == "this sweep"].iterrows():
        html_row = shown[row["cell"]]
        for metric, column in (("val_mse", "val MSE (mean ± 95% CI)"), ("test_mse", "test MSE (mean ± 95% CI)")):
            mean, half = html_row[column].split(" ± ")
            assert close(mean, row[f"{metric}_mean"]) and close(half, row[f"{metric}_ci95"])
        assert html_row["n seeds"] == str(int(row["n"])) and html_row["params"] == str(int(row["n_params"]))
        assert html_row["trials"] == f"{int(row['trials'])}/{int(row['budget'])}"
        assert close(html_row["ms/step"], row["ms_per_step"])
    sig = pd.read_csv(out / "significance.csv")
    shown = {r["cell"]: r for r in as_dicts(parsed.tables["table-significance"])}
    assert sorted(sig["cell"]) == ["lstm", "sgru"] and set(sig["reference"]) == {"gru"}
    for _, row in sig.iterrows():
        assert close(shown[row["cell"]]["p (Holm)"], row["p_scale_holm"], 3)
        assert shown[row["cell"]]["verdict"] == row["outcome"]
        assert shown[row["cell"]]["ratio to gru (95% CI)"].startswith(fmt(row["ratio"], 3))
    gates = pd.read_csv(out / "gates.csv")
    shown = as_dicts(parsed.tables["table-gates"])
    assert len(shown) == len(gates)
    for html_row, (_, row) in zip(shown, gates.iterrows()):
        assert close(html_row["saturated at end"], row["saturation_end"])
    # the conclusion quotes the leaderboard's first row on the analysis scale, and crowns nothing it cannot
    summary = " ".join(parsed.summary)
    best = board.iloc[0]
    assert f"{fmt(best['test_mse_center'])} ({fmt(best['test_mse_lo'], 3)}–{fmt(best['test_mse_hi'], 3)})" in summary
    assert " is best" not in summary.replace("No single cell is best", "")
    from suite.report.check import check_claims

    assert check_claims(out) == []


def test_the_cells_are_compared_at_the_shared_design_points(report):
    """Every cell's first trials are the design's points (3 trials: 2 points), the same configuration in every cell;
    the page's table shows each cell's value there, and how many points each solved, as the CSV says."""
    out = report["out"]
    design = pd.read_csv(out / "design.csv")
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(design["point"].unique()) == [0, 1]
    for point, rows in design.groupby("point"):
        assert sorted(rows["cell"]) == ["gru", "lstm", "sgru"]
        assert rows["param.optim.lr"].nunique() == 1  # the same configuration in every cell
        for _, r in rows.iterrows():  # ... and the value that trial got in its own study
            t = trials[(trials["cell"] == r["cell"]) & (trials["trial"] == r["trial"])].iloc[0]
            assert t["value"] == pytest.approx(r["value"], rel=1e-12)
    lrs = sorted(design.drop_duplicates("point")["param.optim.lr"])
    assert lrs[1] / lrs[0] > 3  # spread over the 1e-3..1e-1 range, not two neighbours
    shown = as_dicts(html_tables(report["html"]).tables["table-design"])
    by_point = {r["point"]: r for r in shown}
    for _, r in design.iterrows():
        assert close(by_point[str(r["point"])][r["cell"]].split(" ")[0], r["value"])
        assert by_point[str(r["point"])][r["cell"]].endswith("✓") == bool(r["solved"] is True or r["solved"] == 1)
    solved = by_point["solved"]
    for cell, rows in design.groupby("cell"):
        assert solved[cell] == f"{int(rows['solved'].fillna(False).astype(bool).sum())}/{len(rows)}"


def test_the_sweep_records_its_command_and_margin_and_the_report_prints_it(report):
    client = mlflow.MlflowClient(report["tracking"])
    exp = client.get_experiment_by_name("rep")
    parent = client.search_runs([exp.experiment_id], "tags.`rnnsuite.level` = 'sweep'")[0]
    command = parent.data.tags["rnnsuite.command"]
    assert command.startswith("rnnsuite sweep ") and "rep.yaml" in command and "--quiet" not in command
    assert parent.data.params["report.equivalence"] == "0.8,1.25"
    assert "# rebuilt" not in report["md"] and "rnnsuite sweep " in report["md"]
    assert str(report["root"]) not in report["md"]  # store paths are not shown as absolute local paths


def test_report_is_logged_to_the_sweep_parent_run(report):
    client = mlflow.MlflowClient(report["tracking"])
    exp = client.get_experiment_by_name("rep")
    parent = client.search_runs([exp.experiment_id], "tags.`rnnsuite.level` = 'sweep'")[0]
    logged = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"index.html", "report.md", "leaderboard.csv", *PNGS} <= logged


def test_gate_claim_and_importance_are_stated(report):
    page = report["html"]
    gates = pd.read_csv(report["out"] / "gates.csv")
    for cell, gate in (("sgru", "u"), ("gru", "z")):
        row = gates[(gates["cell"] == cell) & (gates["gate"] == gate)].iloc[0]
        assert row["keep_gate"]
        assert f"saturated {fmt(row['saturation_end'], 3)} at the end of training" in page
        assert row["near0_end"] + row["near1_end"] == pytest.approx(row["saturation_end"])  # the two ends logged
    assert "fANOVA" in page or "PED-ANOVA" in page  # the evaluator is named
    assert "too few completed trials for importance (3 &lt; 5)" in page  # 3 trials: said, not crashed
    assert pd.read_csv(report["out"] / "importance.csv").empty


def test_a_sweep_file_names_its_sweep(report):
    out = report["root"] / "by-file"
    done = cli("report", str(report["file"]), "-o", str(out), "--storage", report["storage"],
               "--tracking-uri", report["tracking"], "--reference", "lstm", cwd=report["root"])
    assert done.returncode == 0, done.stderr
    sig = pd.read_csv(out / "significance.csv")
    assert set(sig["reference"]) == {"lstm"} and sorted(sig["cell"]) == ["gru", "sgru"]


# ---------------------------------------------------------------------------------------------- statistics
def test_t_interval_matches_student_t():
    mean, half, n = t_interval([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert math.isclose(half, 4.302652729749464 / math.sqrt(3))  # t_{0.975, 2} · s / √n with s = 1
    assert math.isnan(t_interval([5.0])[1]) and t_interval([])[2] == 0


def test_welch_uses_unequal_variances():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    stat, p = two_sample_test(a, b, "welch")
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 5
    assert math.isclose(stat, (2.5 - 6.0) / math.sqrt(va + vb))
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 4)  # Welch–Satterthwaite
    from scipy import stats

    assert math.isclose(p, 2 * stats.t.sf(abs(stat), df))
    diff, half = welch_difference(a, b)
    assert diff == -3.5 and math.isclose(half, stats.t.ppf(0.975, df) * math.sqrt(va + vb))
    assert math.isnan(two_sample_test([1.0], b)[1])  # one seed: not testable
    u, p_u = two_sample_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], "mannwhitney")
    assert u == 0.0 and math.isclose(p_u, 0.1)  # exact: 2 of the 20 orderings are as extreme


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.04, 0.001]) == pytest.approx([0.04, 0.002])
    adjusted = holm([0.02, math.nan, 0.5])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------- partial sweeps
def test_a_running_sweep_says_how_many_trials_are_done(tmp_path):
    from suite.report import build_report
    from suite.bench.synth import write_synthetic_sweep

    made = write_synthetic_sweep(tmp_path, n_runs=16, n_cells=2, name="midway", done=False)
    result = build_report("midway", tmp_path / "out", storage=made["storage"], tracking_uri=made["tracking_uri"])
    line = "Sweep midway is still running: 4 of 10 search trials and 0 of 6 confirmation runs are done (2 running now)."
    assert result["status_line"] == line
    page = (tmp_path / "out" / "index.html").read_text()
    assert line in page and "No confirmation run has finished yet" in page
    assert "runs logged before diagnostics/gate_hist.csv existed" not in page  # not old runs: no runs yet
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert (board.loc[board["source"] == "this sweep", "n"] == 0).all()


def test_scale_benchmark_builds_a_report_over_synthetic_runs(tmp_path):
    from suite.bench.synth import scale_benchmark

    result = scale_benchmark(n_runs=20, workdir=tmp_path, cells=2)
    assert result["runs"] == 20 and result["cells"] == 2 and result["seconds"] > 0
    out = Path(result["output"])
    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(board.loc[board["source"] == "this sweep", "n"]) == [3, 3]
    assert not pd.read_csv(out / "importance.csv").empty  # 7 trials per cell: enough for importance
    assert len(pd.read_csv(out / "runs.csv")) == 20


# ---------------------------------------------------------------------------------------------- errors
def _one_line_error(out) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def test_unknown_sweep_is_one_line_and_writes_nothing(report):
    out_dir = report["root"] / "never"
    out = cli("report", "nosuch", "-o", str(out_dir), "--storage", report["storage"], "--tracking-uri",
              report["tracking"], cwd=report["root"])
    line = _one_line_error(out)
    assert "no sweep named 'nosuch'" in line and "sweeps there: rep" in line
    line = _one_line_error(cli("report", "rep", "-o", str(out_dir), "--storage", report["storage"],
                               "--tracking-uri", report["tracking"], "--reference", "mgu", cwd=report["root"]))
    assert "--reference 'mgu' is not a cell of sweep 'rep'; its cells: gru, sgru, lstm" in line
    assert not out_dir.exists()


def test_missing_stores_are_one_line_and_write_nothing(tmp_path, report):
    env = {**__import__("os").environ, "RNNSUITE_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RNNSUITE_STORAGE", None)
    line = _one_line_error(cli("report", "rep", cwd=tmp_path, env=env))
    assert "no MLflow database at" in line
    line = _one_line_error(cli("report", "rep", "--tracking-uri", report["tracking"], "--storage",
                               str(tmp_path / "none.journal"), cwd=tmp_path, env=env))
    assert "no Optuna journal at" in line
    assert list(tmp_path.iterdir()) == []  # no database, journal, home or reports folder


def test_unreachable_stores_are_one_line(tmp_path, report):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    start = time.time()
    line = _one_line_error(cli("report", "rep", "--tracking-uri", f"http://127.0.0.1:{port}", cwd=tmp_path))
    assert "cannot reach MLflow tracking server" in line and time.time() - start < 60
    line = _one_line_error(cli("report", "rep", "--tracking-uri", f"postgresql://user:secret@127.0.0.1:{port}/db",
                               cwd=tmp_path))
    assert "cannot open MLflow tracking database" in line and "secret" not in line
    line = _one_line_error(cli("report", "rep", "--tracking-uri", report["tracking"], "--storage",
                               f"postgresql://user:secret@127.0.0.1:{port}/db", cwd=tmp_path))
    assert "cannot open Optuna storage" in line and "secret" not in line
    assert list(tmp_path.iterdir()) == []


def test_an_infinite_gradient_decay_reads_back_as_infinite_and_prints_as_such(tmp_path):
    """No gradient reaching the first steps logs diag/grad_decay = -inf; MLflow's SQL store keeps it as
    -sys.float_info.max, which the report averaged and printed as a 309-digit number."""
    from suite.report.data import search_frame

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("inf", artifact_location=str(tmp_path / "art"))
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "diag/grad_decay", -math.inf)
    client.log_metric(run.info.run_id, "val/mse", 0.25)
    assert client.get_run(run.info.run_id).data.metrics["diag/grad_decay"] == -sys.float_info.max  # the store's
    frame = search_frame(client, exp)
    assert frame.loc[0, "metrics.diag/grad_decay"] == -math.inf
    assert frame.loc[0, "metrics.val/mse"] == 0.25
    assert fmt(-math.inf) == "−∞" and fmt(math.inf) == "∞" and fmt(math.nan) == "—"
    # a diverged run's perplexity (the PTB study's design point 0 read 7.94e21) in 4 digits, not 22
    assert fmt(7940207556924280930304.0) == "7.94e+21" and fmt(131584.0) == "131584" and fmt(12345.6) == "12346"


def test_a_diverged_confirmation_seed_counts_as_not_solved(tmp_path):
    """A seed whose loss went NaN is left out of the mean (it has no final value) but it did not solve the task:
    'seeds solved' counts it (the adding study's gru2 read 0/2 for its 3 seeds)."""
    import mlflow

    from suite.report import build_report
    from suite.bench.synth import write_synthetic_sweep

    made = write_synthetic_sweep(tmp_path, n_runs=20, n_cells=2, name="div")
    client = mlflow.MlflowClient(made["tracking_uri"])
    exp = client.get_experiment_by_name("div").experiment_id
    cell = made["cells"][0]
    victim = client.search_runs([exp], f"tags.cell = '{cell}' and tags.phase = 'confirm' and tags.seed = '2'")[0]
    client.set_tag(victim.info.run_id, "failure.reason", "diverged: loss is nan at step 40")
    client.set_tag(victim.info.run_id, "failure.step", "40")
    client.set_terminated(victim.info.run_id, "FAILED")
    build_report("div", tmp_path / "out", storage=made["storage"], tracking_uri=made["tracking_uri"])
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv").set_index("cell")
    assert board.loc[cell, "n"] == 2 and board.loc[cell, "seeds_solved"].endswith("/3")
    assert "1 diverged, counted as not solved" in board.loc[cell, "note"]
    other = made["cells"][1]
    assert board.loc[other, "n"] == 3 and board.loc[other, "seeds_solved"].endswith("/3")


# ---------------------------------------------------------------------------------------------- compute
def test_active_wall_time_is_the_union_of_the_run_intervals():
    from suite.report.tuning import active_seconds

    assert active_seconds([]) == 0.0
    assert active_seconds([(0, 10), (5, 15), (30, 40)]) == 25.0  # overlap counted once, the gap not at all
    assert active_seconds([(0, 100), (10, 20), (20, 30)]) == 100.0  # nested runs add nothing
    assert active_seconds([(50, 60), (0, 10)]) == 20.0  # order does not matter


def test_the_report_records_the_sweeps_total_compute_and_wall_time(tmp_path):
    from suite.bench.synth import scale_benchmark

    out = Path(scale_benchmark(n_runs=20, workdir=tmp_path, cells=2)["output"])
    runs, compute = pd.read_csv(out / "runs.csv"), pd.read_csv(out / "compute.csv")
    assert len(compute) == 1 and compute.loc[0, "runs"] == (runs["status"] == "FINISHED").sum() > 0
    assert compute.loc[0, "train_s"] == pytest.approx(runs["train_s"].sum())
    row = compute.iloc[0]
    assert 0 < row["active_wall_s"] <= row["span_s"] and row["active_wall_s"] <= row["run_s"]
    assert "What the whole sweep cost" in (out / "report.md").read_text()


def test_a_papers_val_and_test_numbers_share_one_leaderboard_row():
    """Zaremba et al. report val and test perplexity of one model: one published row with both, not two rows
    each half empty (the PTB study's partial report showed every published model twice)."""
    from types import SimpleNamespace

    from suite import tasks
    from suite.report.tables import reference_rows

    task = tasks.build("ptb_word")
    rows = reference_rows(SimpleNamespace(data=SimpleNamespace(task=task), metric="val/ppl", short="ppl"), None)
    published = [r for r in rows if r["source"] == "published"]
    assert len(published) == len({(p.label(), p.citation) for p in task.published}) < len(task.published)
    small = next(r for r in published if r["cell"] == "Zaremba small (2x200, no dropout)")
    assert (small["val_ppl_mean"], small["test_ppl_mean"], small["note"]) == (120.7, 114.5, "")


def test_without_a_solved_criterion_the_design_section_marks_nothing_solved(report, tmp_path, monkeypatch):
    """Perplexity has no solved criterion (the PTB study): the design table and its figure then promise no ✓."""
    from suite.report import build_report
    from suite.tasks.adding import Adding

    assert "✓: solved on validation" in report["md"]  # adding has one, and the page says what ✓ means
    monkeypatch.setattr(Adding, "solved", None)
    build_report("rep", tmp_path / "out", storage=report["storage"], tracking_uri=report["tracking"],
                 log_artifacts=False)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Robustness at the shared design points" in md and "this task has no solved criterion" in md
    assert "✓" not in md


def test_an_equivalent_verdict_cites_the_p_value_it_rests_on():
    """'equivalent' comes from the two one-sided tests, so its claim shows their p, not Welch's (the PTB study's
    partial report read 'equivalent: gru1 (ratio 1.01, Holm p = 0.163)', Welch's p beside a TOST verdict)."""
    from suite.report.verdicts import verdict_p

    assert verdict_p("equivalent", 0.163, 0.000578) == "equivalence (TOST) Holm p = 0.000578"
    assert verdict_p("inconclusive", 0.163, 0.000578) == verdict_p("worse", 0.163, None) == "Holm p = 0.163"


def test_seed_curves_are_drawn_in_seed_order_whatever_their_run_ids(monkeypatch):
    """An archive's import gives every run a new id; the learning-curve figure of a rebuilt report must not
    change with them, so seeds are drawn in seed order (translucent lines drawn in another order give another
    picture, pixel for pixel)."""
    from suite.report import plots

    monkeypatch.setattr(plots, "baseline_line", lambda ax, an, key: [])

    class Recorder:
        def __init__(self):
            self.drawn = []

        def plot(self, x, y, *args, **kwargs):
            self.drawn.append(list(y))

    # run ids sort opposite to the seeds: "z..." is seed 1, "a..." is seed 3
    seeds = pd.DataFrame({"run_id": ["z1", "z1", "m2", "m2", "a3", "a3"], "cell": ["gru"] * 6,
                          "seed": [1, 1, 2, 2, 3, 3], "step": [0, 10] * 3, "value": [1.0, 0.1, 2.0, 0.2, 3.0, 0.3],
                          "status": ["FINISHED"] * 6})
    mean = pd.DataFrame(columns=["cell", "key", "step", "mean", "n"])
    ax = Recorder()
    plots._curve_panel(ax, None, "val/mse", ["gru"], {"gru": "C0"}, mean, seeds)
    assert ax.drawn == [[1.0, 0.1], [2.0, 0.2], [3.0, 0.3]]
