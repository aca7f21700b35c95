"""docs/findings.md against the committed reports (suite/report/findings.py): every generated block is what the
reports' claims and tables give today, every report it cites recomputes its claims from its CSVs, and the prose
written by hand between the blocks carries no number of its own (a number there could drift from the data)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from suite.report.check import check_claims
from suite.report.findings import DIRECTIVE, FindingsError, Reports, expand, generated_spans

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "findings.md"
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")  # gru1, mnist1d, study-adding-T200, MNIST-1D: names, not numbers
ALLOWED = re.compile(r"T=\d+|(19|20)\d\d")  # a sequence length in a task's name; a citation's year


def cited_reports(text: str) -> list[str]:
    names: list[str] = []
    for line in text.split("\n"):
        m = DIRECTIVE.match(line.strip())
        if m:
            args = m.group(2).split()
            names += [n for n in (args[:1] if m.group(1) == "claim" else args) if n not in names]
    return names


def numbers_in_prose(text: str) -> list[str]:
    """Sentences written by hand (outside generated blocks, code, link targets and comments) with a number."""
    lines = text.split("\n")
    for first, last in generated_spans(text):
        lines[first:last + 1] = [""] * (last + 1 - first)
    prose = re.sub(r"```.*?```", " ", "\n".join(lines), flags=re.S)
    prose = re.sub(r"`[^`]*`|\]\([^)]*\)|<!--.*?-->", " ", prose, flags=re.S)
    found = []
    for sentence in re.split(r"(?<=[.;:!?])\s+|\n\s*\n", prose):
        for token in re.findall(r"[A-Za-z0-9_=.,\-]*\d[A-Za-z0-9_=.,\-]*", sentence):
            token = token.strip(".,-")
            if not (NAME.fullmatch(token) or ALLOWED.fullmatch(token)):
                found.append(f"{token!r} in: {sentence.strip()[:160]}")
    return found


def test_the_page_is_what_the_reports_give_today():
    text = PAGE.read_text(encoding="utf-8")
    assert generated_spans(text), "docs/findings.md has no generated block"
    assert expand(text, Reports(ROOT / "reports")) == text, \
        "docs/findings.md is stale: run python -m suite.report.findings docs/findings.md"


@pytest.mark.parametrize("report", cited_reports(PAGE.read_text(encoding="utf-8")))
def test_every_cited_report_recomputes_its_claims_from_its_csvs(report):
    assert check_claims(ROOT / "reports" / report) == []


def test_the_prose_between_the_blocks_carries_no_number():
    assert numbers_in_prose(PAGE.read_text(encoding="utf-8")) == []


def test_a_number_in_the_prose_is_found_and_names_are_not():
    page = ("# Findings on study-adding-T200 and MNIST-1D\n\ngru1 and gru3 (Tallec & Ollivier 2018) at T=50.\n\n"
            "<!-- claim x standing -->\n> 0.962 is generated\n<!-- end -->\n\n"
            "Here gru1 reaches 0.96 accuracy.\n\n`rnnsuite sweep sweeps/study-copy-T50.yaml --workers 2`\n")
    assert [f.split(" in: ")[0] for f in numbers_in_prose(page)] == ["'0.96'"]


def _reports_copy(tmp_path: Path, text: str) -> Path:
    """The page `text` in tmp_path/docs, beside copies of the committed reports it names that exist."""
    for name in cited_reports(text):
        src = ROOT / "reports" / name
        if not src.is_dir() or (tmp_path / "reports" / name).exists():
            continue
        shutil.copytree(src, tmp_path / "reports" / name, ignore=shutil.ignore_patterns("*.png", "*.tar.gz", "*.html"))
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "findings.md"
    page.write_text(text, encoding="utf-8")
    return page


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite.report.findings", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_a_changed_claim_makes_the_page_stale_and_the_command_rewrites_it(tmp_path):
    text = PAGE.read_text(encoding="utf-8")
    page = _reports_copy(tmp_path, text)
    assert _cli("--check", page).returncode == 0
    name = next(n for n in cited_reports(text) if f"<!-- claim {n} standing -->" in text)
    doc_path = tmp_path / "reports" / name / "claims.json"
    doc = json.loads(doc_path.read_text())
    standing = next(c for c in doc["claims"] if c["id"] == "standing")
    standing["text"] = standing["text"].replace("**", "__", 1)
    doc_path.write_text(json.dumps(doc))
    stale = _cli("--check", page)
    assert stale.returncode == 1 and "differs from what the reports give" in stale.stdout
    assert page.read_text(encoding="utf-8") == text  # --check writes nothing
    fixed = _cli(page)
    assert fixed.returncode == 0 and standing["text"] in page.read_text(encoding="utf-8")
    assert _cli("--check", page).returncode == 0


@pytest.mark.parametrize("directive, message", [
    ("<!-- claim nowhere standing -->", "no report 'nowhere'"),
    ("<!-- claim {r} no_such_claim -->", "has no claim 'no_such_claim'"),
    ("<!-- gates {r} {r} -->", "gates takes one report"),
])
def test_a_bad_directive_is_one_line_and_exit_2(tmp_path, directive, message):
    report = cited_reports(PAGE.read_text(encoding="utf-8"))[0]
    page = _reports_copy(tmp_path, f"# x\n\n{directive.format(r=report)}\n<!-- end -->\n")
    out = _cli("--check", page)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1 and message in out.stderr


def test_a_directive_without_its_end_is_refused():
    with pytest.raises(FindingsError, match="has no <!-- end -->"):
        expand("<!-- claim x standing -->\ntext\n", Reports(ROOT / "reports"))


def _synthetic_report(root: Path, name: str, test_mse: dict[str, list[float]]) -> Path:
    """A report of a synthetic 2-cell sweep (gru, lstm) whose confirmation seeds score `test_mse`."""
    import mlflow

    from suite.bench.synth import STEPS, write_synthetic_sweep
    from suite.report import build_report

    made = write_synthetic_sweep(root / name, n_runs=14, n_cells=2, name=name)
    client = mlflow.MlflowClient(made["tracking_uri"])
    exp = client.get_experiment_by_name(name).experiment_id
    for run in client.search_runs([exp], "tags.phase = 'confirm'"):
        cell, seed = run.data.tags["cell"], int(run.data.tags["seed"])
        client.log_metric(run.info.run_id, "test/mse", test_mse[cell][seed - 1], step=STEPS + 1)
    out = root / "reports" / name
    build_report(name, out, storage=made["storage"], tracking_uri=made["tracking_uri"], log_artifacts=False)
    return out


def test_an_ablation_compares_the_seeds_of_the_cells_two_reports_share(tmp_path):
    """gru's seeds 10x worse in the ablation: worse at a ratio of exactly 10; lstm's the same: not 'worse'."""
    same = [2e-4, 3e-4, 2.5e-4]
    gru = [1e-4, 2e-4, 1.5e-4]
    _synthetic_report(tmp_path, "main", {"gru": gru, "lstm": same})
    _synthetic_report(tmp_path, "flip", {"gru": [10 * v for v in gru], "lstm": same})
    page = "<!-- ablation main flip -->\n<!-- end -->\n"
    rows = {line.split(" | ")[0].strip("| "): line for line in
            expand(page, Reports(tmp_path / "reports")).split("\n") if line.startswith("| ") and "---" not in line}
    assert "worse (ratio 10 (" in rows["gru"]
    lo, hi = (float(v) for v in rows["gru"].split("ratio 10 (")[1].split(")")[0].split("–"))
    assert 1 < lo < 10 < hi  # its interval, around the ratio and clear of 1
    p_gru = float(rows["gru"].split("Holm p = ")[1].split(")")[0])
    assert p_gru < 0.05
    assert "ratio 1 (" in rows["lstm"] and "worse" not in rows["lstm"] and "better" not in rows["lstm"]
    assert "n = 3" in rows["gru"] and set(rows) == {"cell", "gru", "lstm"}
    with pytest.raises(FindingsError, match="share no cell"):
        (tmp_path / "reports" / "other").mkdir()
        shutil.copy(tmp_path / "reports" / "main" / "claims.json", tmp_path / "reports" / "other" / "claims.json")
        (tmp_path / "reports" / "other" / "leaderboard.csv").write_text("cell,source\n")
        expand("<!-- ablation main other -->\n<!-- end -->\n", Reports(tmp_path / "reports"))


# ------------------------------------------------------------------------- the prose's readings, against the tables
STUDIES = ("study-mnist1d", "study-adding-T200", "study-copy-T50", "study-ptb-word")


def _csv(study: str, table: str) -> list[dict]:
    return Reports(ROOT / "reports").rows(study, f"{table}.csv")


def test_the_cross_task_reading_follows_the_verdicts():
    """'no cell is better than gru on any task; rnn_tanh is worse on all four, minGRU on both it ran, lstm on copy
    and PTB, gru3 on adding and copy, gru2 on adding; sgru and mgu are worse only on PTB, and gru1 is shown
    equivalent to gru only there; every other comparison is inconclusive'."""
    outcome = {(r["cell"], study): r["outcome"] for study in STUDIES for r in _csv(study, "significance")}
    mnist, adding, copy, ptb = STUDIES
    worse = {("rnn_tanh", s) for s in STUDIES} | {("mingru", mnist), ("mingru", ptb), ("lstm", copy), ("lstm", ptb),
                                                  ("gru3", adding), ("gru3", copy), ("gru2", adding), ("sgru", ptb),
                                                  ("mgu", ptb)}
    assert {k for k, v in outcome.items() if v == "worse"} == worse
    assert {k for k, v in outcome.items() if v == "equivalent"} == {("gru1", ptb)}
    assert set(outcome.values()) == {"worse", "equivalent", "inconclusive"}  # no 'better' anywhere
    assert sum(c == "mingru" for c, _ in outcome) == 2  # 'both it ran'


def test_the_ptb_readings_follow_its_tables():
    sig = {r["cell"]: r for r in _csv("study-ptb-word", "significance")}
    # the relevance gate: sgru worse by more than mgu; mgu's difference the smallest of any cell found worse
    assert sig["sgru"]["outcome"] == sig["mgu"]["outcome"] == "worse"
    assert float(sig["sgru"]["ratio"]) > float(sig["mgu"]["ratio"]) > 1
    assert min((float(r["ratio"]), c) for c, r in sig.items() if r["outcome"] == "worse")[1] == "mgu"
    # the margin is wide for perplexity: lstm, sgru and mgu pass the equivalence test too, gru1 is equivalent, and
    # gru1's interval is far narrower than the margin
    assert {c for c, r in sig.items() if float(r["p_tost_holm"]) < 0.05} == {"lstm", "sgru", "mgu", "gru1"}
    assert {c for c, r in sig.items() if r["outcome"] == "worse"} >= {"lstm", "sgru", "mgu"}
    g = sig["gru1"]
    assert float(g["ratio_hi"]) - float(g["ratio_lo"]) < (float(g["margin_hi"]) - float(g["margin_lo"])) / 4
    # ... and among all pairs (one larger Holm family) mgu is not separated from gru
    pair = next(r for r in _csv("study-ptb-word", "pairs") if {r["a"], r["b"]} == {"gru", "mgu"})
    assert pair["outcome"] not in ("better", "worse") and float(pair["p_scale_holm"]) >= 0.05
    # gates: no state-keeping gate mostly saturated before or after; lstm's output gate the one of zeros and ones
    gates = _csv("study-ptb-word", "gates")
    keep = [g for g in gates if g["keep_gate"] == "True"]
    assert len(keep) == 6 and all(g["mostly_saturated"] == "no" and float(g["saturation_start"]) <= 0.5
                                  for g in keep)
    assert [(g["cell"], g["gate"]) for g in gates if g["zeros_and_ones"] == "yes"] == [("lstm", "o")]
    # the first design point sent every cell but lstm and mingru above the unigram baseline
    baseline = float(next(r for r in _csv("study-ptb-word", "leaderboard") if r["source"] == "task baseline")[
        "test_ppl_mean"])
    above = {r["cell"] for r in _csv("study-ptb-word", "design") if r["point"] == "0" and float(r["value"]) > baseline}
    assert above == {"gru", "sgru", "mgu", "gru1", "rnn_tanh"}
    # the hyperparameter reading: clipping for gru, gru1, mgu, sgru; the learning rate for the rest
    top = {}
    for r in _csv("study-ptb-word", "importance"):
        if r["cell"] not in top or float(r["importance"]) > float(top[r["cell"]]["importance"]):
            top[r["cell"]] = r
    assert {c: r["param"] for c, r in top.items()} == {"gru": "optim.clip", "gru1": "optim.clip", "mgu": "optim.clip",
                                                       "sgru": "optim.clip", "lstm": "optim.lr", "mingru": "optim.lr",
                                                       "rnn_tanh": "optim.lr"}


def test_every_verdict_on_the_page_shows_its_interval_from_the_reports_tables():
    """The issue asked for verdicts with intervals: each cross-task and relevance verdict carries Welch's 95%
    interval as its report's significance.csv has it."""
    from suite.report.tables import fmt

    page = PAGE.read_text(encoding="utf-8")
    shown = 0
    for study in STUDIES:
        for r in _csv(study, "significance"):
            interval = f"{fmt(float(r['ratio']), 3)} ({fmt(float(r['ratio_lo']), 3)}–{fmt(float(r['ratio_hi']), 3)}),"
            assert interval in page, (study, r["cell"], interval)
            shown += 1
    assert shown == sum(len(_csv(s, "significance")) for s in STUDIES) > 30
