"""docs/benchmarks.md's GPU section says what the committed `make gpu-check` results say: every number in its
tables and its headline ranges is recomputed here from the JSON files the run wrote (docs/gpu/...)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "docs" / "gpu" / "h200-2026-12-04"


def gpu_section() -> str:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    return text[text.index("## GPU\n"):text.index("## GPU check")]


def table_rows(section: str, header_start: str) -> list[list[str]]:
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def load(name: str) -> dict:
    return json.loads((RUN / name).read_text())


def test_the_cell_table_is_the_benchmarks_json():
    eager, graphs = load("bench-cells.json"), load("bench-cells-graphs.json")
    rows = table_rows(gpu_section(), "| cell | fwd+bwd ms, eager")
    names = list(eager["anchors"]) + list(eager["cells"])
    assert [r[0] for r in rows] == names
    for name, ms_e, ratio_e, ms_g, ratio_g in rows:
        e = eager["anchors"].get(name) or eager["cells"][name]
        g = graphs["anchors"].get(name) or graphs["cells"][name]
        assert float(ms_e) == pytest.approx(e["fwd_bwd_ms"], abs=0.006)
        assert float(ratio_e) == pytest.approx(e["ratio_vs_gru"], abs=0.006)
        assert float(ms_g) == pytest.approx(g["fwd_bwd_ms"], abs=0.006)
        assert float(ratio_g) == pytest.approx(g["ratio_vs_gru"], abs=0.006)


def test_the_headline_ranges_and_targets_follow_from_the_json():
    section = gpu_section()
    eager, graphs = load("bench-cells.json"), load("bench-cells-graphs.json")
    scans = ("cell:mingru", "cell:minlstm")  # the parallel scan, stated apart in the text
    loops = [n for n in eager["targets"] if n not in scans]  # the fused time loops the 1.5x target is about
    e = [eager["targets"][n]["value"] for n in loops]
    g = [graphs["targets"][n]["value"] for n in loops]
    assert f"**{min(e):.2f}-{max(e):.2f}x**" in section
    assert f"**{min(g):.2f}-{max(g):.2f}x**" in section
    assert all(graphs["targets"][n]["pass"] and eager["targets"][n]["pass"] for n in scans)
    missed = sorted(n.split(":", 1)[1] for n, v in graphs["targets"].items() if not v["pass"])
    assert missed == ["mut3"] and "every custom cell but `mut3`" in section
    assert not any(eager["targets"][n]["pass"] for n in loops)


def test_the_packed_table_and_verdict_follow_from_the_json():
    packed = load("bench-packed.json")
    rows = table_rows(gpu_section(), "| M (trials per pack)")
    detail = packed["packed_detail"]
    assert rows[0][1:3] == [f"{detail['single_trial_s']:.2f}", f"{detail['single_trials_per_hour']:.0f}"]
    for row in rows[1:]:
        m = row[0]
        assert row[1:] == [f"{detail['detail'][m]['pack_s']:.2f}", f"{detail['detail'][m]['trials_per_hour']:.0f}",
                           f"{packed['packed'][m]:.2f}"]
    best = max(packed["packed"], key=packed["packed"].get)
    assert best == detail["best_M"].__str__() and not packed["targets"]["packed"]["pass"]
    assert f"**{packed['packed'][best]:.2f}x** trials per hour at M={best}" in gpu_section()


def test_the_run_summary_numbers_are_the_check_s():
    summary = load("gpu-check.json")
    section = gpu_section()
    tests = summary["stages"]["cuda-tests"]["result"]
    assert f"**CUDA tests: {tests['passed']} passed, {tests['failures']} failed**" in section
    assert tests["errors"] == 0 and tests["skipped"] == 0
    failed = tests["failed"]
    assert sum("do_not_sync_with_the_host" in f for f in failed) == 15
    assert sorted(re.search(r"\[(\w+)\]", f).group(1) for f in failed if "backward_matches" in f) == ["gru", "lstm"]
    assert f"{round(summary['elapsed_s'])} s in all" in section
    record = summary["stages"]["sweep-record"]["result"]
    assert record["status"] == {"FINISHED": record["trial_runs"]} and f"{record['trial_runs']} of 20 runs" in section
    assert record["tags"]["device.name"] == {"NVIDIA H200": 20}
    env = summary["environment"]
    assert env["gpu"] == "NVIDIA H200" and env["torch"] == "2.11.0+cu130" and "torch 2.11.0+cu130" in section
    assert summary["git"].startswith("a947c6b") and "`a947c6b`" in section


def test_the_changelog_quotes_the_same_gpu_figures():
    """The CHANGELOG's one-line summary of the run, recomputed from the same JSON (rounded as it prints them)."""
    text = (ROOT / "CHANGELOG.md").read_text()
    line = " ".join(text[text.index("- **GPU numbers**"):].split("\n- ", 1)[0].split())
    eager, graphs, packed = load("bench-cells.json"), load("bench-cells-graphs.json"), load("bench-packed.json")
    loops = [n for n in eager["targets"] if n not in ("cell:mingru", "cell:minlstm")]
    e = [eager["targets"][n]["value"] for n in loops]
    g = [graphs["targets"][n]["value"] for n in loops]
    assert f"custom cells {min(e):.1f}-{max(e):.1f}x cuDNN nn.GRU eager" in line
    assert f"{min(g):.2f}-{max(g):.2f}x from CUDA graphs" in line
    assert f"packed trials {max(packed['packed'].values()):.1f}x trials per hour (10x target missed)" in line
    assert not packed["targets"]["packed"]["pass"] and load("gpu-check.json")["environment"]["gpu"] in line
