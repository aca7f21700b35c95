"""Every run records the package lock it ran under and whether the installed versions matched it."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import mlflow

from suite.provenance import LOCK, lock_tags

ROOT = Path(__file__).resolve().parents[1]


def test_the_lock_hash_and_whether_the_installed_versions_match(tmp_path):
    good = tmp_path / "good.lock"
    good.write_text(f"# comment\nPyYAML=={metadata.version('PyYAML')}\nnumpy=={metadata.version('numpy')}\n")
    tags = lock_tags(good)
    assert tags["rnnsuite.lock_match"] == "yes" and len(tags["rnnsuite.lock"]) == 12
    bad = tmp_path / "bad.lock"
    bad.write_text("PyYAML==0.0.1\nno-such-package-xyz==1.0\n")
    match = lock_tags(bad)["rnnsuite.lock_match"]
    assert match.startswith("no, 2 differ:") and "PyYAML" in match and "no-such-package-xyz missing" in match
    assert lock_tags(bad)["rnnsuite.lock"] != tags["rnnsuite.lock"]
    assert lock_tags(tmp_path / "absent.lock") == {"rnnsuite.lock": "none"}


def test_the_shipped_lock_pins_no_torch_and_is_what_runs_record(tmp_path):
    lines = [l for l in LOCK.read_text().splitlines() if "==" in l and not l.startswith("#")]
    assert len(lines) > 50 and not [l for l in lines if l.split("==")[0].lower() in ("torch", "triton")]
    out = subprocess.run([sys.executable, "-m", "suite", "train", "--task", "adding", "--cell", "gru", "--steps", "2",
                          "--set", "task.length=8", "--set", "train.diag_every=0", "--json",
                          "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout.strip().splitlines()[-1])["run_id"]
    tags = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).data.tags
    assert tags["rnnsuite.lock"] == lock_tags()["rnnsuite.lock"]
    assert tags["rnnsuite.lock_match"] == lock_tags()["rnnsuite.lock_match"]
