"""Every committed report under reports/ carries its data: an archive beside it, reports/NAME/NAME.rnnsuite.tar.gz
(written by `rnnsuite export`), from which `rnnsuite report --from` rebuilds CSVs equal to the committed ones
(exact for counts and text, 1e-9 relative for floats; hyperparameter importance is seeded). A report without an
archive must say so in its own header: a line "Stale: ..." in report.md and in index.html, before the summary."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from report_csvs import csv_differences

REPORTS = Path(__file__).resolve().parents[1] / "reports"
MAX_ARCHIVE_BYTES = 5 * 1024 * 1024  # the tracked tree travels to GPU machines with a 64 MiB limit
UNCOMMITTED = {"smoke"}  # `make demo` writes reports/smoke/ (git-ignored)


def archive_of(report: Path) -> Path:
    return report / f"{report.name}.rnnsuite.tar.gz"


def committed_reports() -> list[Path]:
    return sorted(p for p in REPORTS.iterdir() if p.is_dir() and p.name not in UNCOMMITTED
                  and (p / "report.md").is_file())


def stale_line(report: Path) -> tuple[str | None, str | None]:
    """The 'Stale: ...' line of report.md and of index.html, each searched in the header (before the summary)."""
    md = (report / "report.md").read_text(encoding="utf-8").split("\n## ", 1)[0]
    in_md = next((line.lstrip("> ") for line in md.splitlines() if line.lstrip("> ").startswith("Stale: ")), None)
    html = (report / "index.html").read_text(encoding="utf-8").split("<h2", 1)[0]
    start = html.find(">Stale: ")
    in_html = html[start + 1: html.find("<", start + 1)] if start >= 0 else None
    return in_md, in_html


def test_there_are_committed_reports():
    assert committed_reports(), f"no committed report under {REPORTS}"


def rebuild_differences(report: Path, tmp_path: Path) -> list[str]:
    """What keeps `report` from being its archive's report: [] when `rnnsuite report --from` rebuilds its CSVs."""
    archive = archive_of(report)
    if archive.stat().st_size > MAX_ARCHIVE_BYTES:
        return [f"{archive.name}: {archive.stat().st_size} bytes, over {MAX_ARCHIVE_BYTES}"]
    with tarfile.open(archive) as tar:
        if [n for n in tar.getnames() if n.startswith("checkpoints/")]:
            return [f"{archive.name} holds checkpoints; committed archives never do"]
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RNNSUITE_"))}
    env.update(RNNSUITE_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "suite", "report", "--from", str(archive), "-o",
                          str(tmp_path / "rebuilt")], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=900)
    if out.returncode != 0:
        return [f"report --from {archive.name} failed: {out.stderr.strip()[-300:]}"]
    return csv_differences(report, tmp_path / "rebuilt")


@pytest.mark.parametrize("report", committed_reports(), ids=lambda p: p.name)
def test_a_committed_report_is_rebuilt_from_its_archive_or_marked_stale(report, tmp_path):
    if archive_of(report).is_file():
        assert rebuild_differences(report, tmp_path) == []
    else:
        in_md, in_html = stale_line(report)
        assert in_md and in_html, (f"{report.name}: no archive {archive_of(report).name} beside it and no "
                                   "'Stale: ...' line in the header of report.md and index.html")


def test_the_stale_marker_is_found_and_its_absence_noticed(tmp_path):
    """The check above is not vacuous: a header without the line is caught, one with it is found."""
    (tmp_path / "report.md").write_text("# Sweep x\n\nBuilt ...\n\n## Summary\n\nStale: not in the header\n")
    (tmp_path / "index.html").write_text("<h1>Sweep x</h1><p>Built</p><h2>Summary</h2><p>Stale: no</p>")
    assert stale_line(tmp_path) == (None, None)
    (tmp_path / "report.md").write_text("# Sweep x\n\nBuilt ...\n\n> Stale: gone\n\n## Summary\n")
    (tmp_path / "index.html").write_text('<h1>x</h1><p class="warning">Stale: gone</p><h2>Summary</h2>')
    assert stale_line(tmp_path) == ("Stale: gone", "Stale: gone")
