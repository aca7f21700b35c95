"""The command line: `rnnsuite list` and `--help`, the default store of `rnnsuite train`, and a diverged run as one
line on stderr."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from suite import cells, tasks

ROOT = Path(__file__).resolve().parents[1]


def installed(*args) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("rnnsuite")  # the installed console script, as a user runs it
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "suite"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_list_shows_every_cell_with_its_paper_every_task_and_every_named_setting():
    out = installed("list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    sections = {}
    current = None
    for line in lines:
        if not line.startswith(" "):
            current = line.rstrip(":").split(" (")[0]
            sections[current] = []
        else:
            sections[current].append(line.strip())
    cell_lines = {line.split()[0]: line for line in sections["cells"]}
    assert set(cell_lines) == set(cells.names())
    for name, line in cell_lines.items():
        citation = re.search(r"\[([^\]]+)\]$", line)
        assert citation, f"{name}: no [citation] in {line!r}"
        assert re.search(r"\b(19|20)\d\d\b", citation.group(1)), f"{name}: citation without a year: {line!r}"
        assert len(line.split(None, 1)[1]) > len(citation.group(0)) + 10  # a description besides the citation
    task_lines = {line.split()[0]: line for line in sections["tasks"]}
    assert set(task_lines) == set(tasks.names())
    for name, line in task_lines.items():
        assert re.search(r"\[[^\]]*(19|20)\d\d[^\]]*\]$", line), line
    setting_lines = {line.split()[0]: line for line in sections["task settings"]}
    assert set(setting_lines) == set(tasks.named_settings())
    assert len(setting_lines) >= 9
    for name, line in setting_lines.items():
        assert len(line.split(None, 1)) == 2, f"{name} has no description"


@pytest.mark.parametrize("args,flags", [
    (["--help"], ["list", "train", "sweep", "report", "bench", "ui", "export", "import", "--version"]),
    (["export", "--help"], ["--output", "--storage", "--tracking-uri", "--with-checkpoints"]),
    (["import", "--help"], ["--storage", "--tracking-uri"]),
    (["report", "--help"], ["--from", "--output", "--storage", "--tracking-uri", "--reference"]),
    (["train", "--help"], ["--task", "--cell", "--config", "--steps", "--epochs", "--seed", "--set",
                           "--tracking-uri", "--experiment", "--device", "--resume", "--json"]),
])
def test_help_exits_0_and_names_the_flags(args, flags):
    out = installed(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: rnnsuite") and out.stderr == ""
    for flag in flags:
        assert flag in out.stdout, flag


def _cli(args, cwd, env=None):
    """``python -m suite ARGS`` without a store chosen by the environment: the defaults as a new user meets them."""
    env = {k: v for k, v in (env or os.environ).items() if k not in ("RNNSUITE_HOME", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, "-m", "suite", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_default_store_is_rnnsuite_runs_mlflow_db_in_the_working_directory(tmp_path):
    out = _cli(["train", "--task", "adding", "--cell", "gru", "--steps", "5", "--set", "task.length=10",
                "--set", "task.val_size=64", "--set", "model.hidden_size=8", "--set", "train.progress=false",
                "--json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # a successful run prints nothing on stderr (no MLflow/Lightning chatter)
    root = tmp_path.resolve() / "rnnsuite-runs"
    assert (root / "mlflow.db").is_file()
    assert not (tmp_path / "mlruns").exists()  # never MLflow's refused file store
    run_id = json.loads(out.stdout.strip().splitlines()[-1])["run_id"]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    r = mlflow.MlflowClient(uri).get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["tracking.uri"] == uri
    assert r.data.params["train.checkpoint_dir"] == str(root / "checkpoints")
    assert (root / "checkpoints" / run_id / "last.ckpt").is_file()
    assert "train/loss" in r.data.metrics  # 5 steps < log_every 50, flushed at the end


def test_nan_loss_through_the_cli_is_one_line_on_stderr_and_a_nonzero_exit(tmp_path):
    db = tmp_path / "fresh" / "mlflow.db"  # a new store: table creation must not print either
    out = _cli(["train", "--task", "adding", "--cell", "rnn_tanh", "--steps", "50", "--set", "task.length=10",
                "--set", "task.val_size=64", "--set", "optim.name=sgd", "--set", "optim.lr=1e30",
                "--set", "optim.clip=0", "--set", "train.progress=false", "--tracking-uri", f"sqlite:///{db}"],
               cwd=tmp_path)
    assert out.returncode != 0 and out.returncode != 2  # a failed run, not a usage error
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert re.fullmatch(r"rnnsuite: run [0-9a-f]{32} FAILED: diverged: loss is (nan|inf|-inf) at step \d+", lines[0])
    assert "Traceback" not in out.stderr
    run_id = lines[0].split()[2]
    assert mlflow.MlflowClient(f"sqlite:///{db}").get_run(run_id).info.status == "FAILED"
