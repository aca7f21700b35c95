"""Sweep archives: `rnnsuite export` -> `rnnsuite import` (embedded stores, PostgreSQL + mlflow server) ->
`rnnsuite report`, CSV for CSV equal to the report from the original stores; `report --from`; idempotent import;
refusal of a different sweep; bad files refused in one line with nothing written; a sweep killed half-way (one
trial RUNNING) exported, imported on "another machine" (an empty RNNSUITE_HOME) and resumed to exact budgets."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from report_csvs import csv_differences
from test_sweep import TINY, assert_exact, write

SPEC = dict(TINY, base={**TINY["base"], "train": {**TINY["base"]["train"], "diag_every": 10}},  # profiles too
            search={**TINY["search"], "optim.clip": {"type": "choice", "values": [1.0, 5.0]}})  # categorical too
KILLPOINT = Path(__file__).with_name("killpoint.py")


def env_for(home: Path) -> dict:
    """A clean environment whose embedded stores are under `home` (no tracking URI or storage inherited)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RNNSUITE_", "PG"))}
    env.update(RNNSUITE_HOME=str(home), OMP_NUM_THREADS="1")
    return env


def run(*args, home: Path, cwd: Path, script=None, timeout=600, process: bool = False):
    """`rnnsuite ARGS` with its embedded stores under `home`: sweeps (and `process=True`) in a subprocess, the
    archive and report commands in this process (the same `main`, without paying torch's and MLflow's imports
    again for each call on a busy 2-core machine)."""
    if process or script or args[0] == "sweep":
        cmd = [sys.executable, *(script or ["-m", "suite"]), *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env_for(home), timeout=timeout)
    from suite.cli import main

    saved, cwd_before = dict(os.environ), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(env_for(home))
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        os.chdir(cwd_before)
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def ok(out):
    assert out.returncode == 0, out.stderr
    return out


def refused(out, phrase: str):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and phrase in lines[0], (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr


def stores(home: Path) -> tuple[str, str]:
    return str(home / "optuna.journal"), f"sqlite:///{home / 'mlflow.db'}"


def journal(path: str):
    return optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


def all_runs(tracking: str, name: str = "tiny") -> list:
    client = mlflow.MlflowClient(tracking)
    return client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=5000)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished tiny sweep in its own RNNSUITE_HOME, its report, and its archive."""
    tmp = tmp_path_factory.mktemp("swept")
    home = tmp / "home"
    sweep_file = write(tmp, SPEC)
    ok(run("sweep", sweep_file, "--quiet", home=home, cwd=tmp))
    ok(run("report", "tiny", "-o", tmp / "report", home=home, cwd=tmp))
    ok(run("export", sweep_file, "-o", tmp / "tiny.rnnsuite.tar.gz", home=home, cwd=tmp))
    return {"tmp": tmp, "home": home, "file": sweep_file, "archive": tmp / "tiny.rnnsuite.tar.gz",
            "report": tmp / "report"}


def test_archive_members_are_plain_files_pandas_reads(swept, tmp_path):
    with tarfile.open(swept["archive"]) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json"
        tar.extractall(tmp_path, filter="data")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == "rnnsuite-sweep-archive" and manifest["version"] == 1
    assert manifest["sweep"] == "tiny" and {"rnnsuite", "mlflow", "optuna"} <= set(manifest)
    assert manifest["sweep_file"]["text"] == swept["file"].read_text()
    assert sorted(manifest["members"]) == sorted(n for n in names if n != "manifest.json")
    trials = pd.read_json(tmp_path / "optuna/trials.jsonl", lines=True)
    assert len(trials) == 2 * (3 + 2) and set(trials["state"]) == {"COMPLETE"}
    assert all(json.loads(d)["name"] == "FloatDistribution" for d in trials["distributions"].map(
        lambda d: d.get("optim.lr", '{"name": "FloatDistribution"}')))
    runs = pd.read_json(tmp_path / "mlflow/runs.jsonl", lines=True)
    assert len(runs) == 1 + 2 + 10
    metrics = pd.read_csv(tmp_path / "mlflow/metrics.csv")
    assert list(metrics.columns) == ["run_id", "key", "step", "timestamp", "value"]
    assert set(metrics["run_id"]) <= set(runs["run_id"])
    assert (metrics[metrics["key"] == "train/loss"].groupby("run_id").size() > 1).all()  # full histories
    trial_runs = runs[runs["tags"].map(lambda t: t.get("rnnsuite.level")) == "trial"]["run_id"]
    for run_id in trial_runs:
        assert (tmp_path / "artifacts" / run_id / "config.yaml").is_file()
        assert (tmp_path / "artifacts" / run_id / "diagnostics/grad_profile.csv").is_file()
    assert not list(tmp_path.rglob("*.png")) and not (tmp_path / "checkpoints").exists()


def test_json_lines_keep_key_order(tmp_path):
    """A trial's params go back to Optuna in the order it sampled them: sorted keys put a synthetic sweep's
    param.optim.clip before param.optim.lr in the rebuilt trials.csv."""
    from suite.archive.fmt import write_jsonl

    write_jsonl(tmp_path / "t.jsonl", [{"params": {"optim.lr": 0.1, "optim.clip": 1.0}}])
    assert list(json.loads((tmp_path / "t.jsonl").read_text())["params"]) == ["optim.lr", "optim.clip"]


def test_round_trip_on_embedded_stores_gives_the_same_report(swept, tmp_path):
    home = tmp_path / "other-machine"
    out = ok(run("import", swept["archive"], home=home, cwd=tmp_path))
    assert "imported" in out.stdout
    storage, tracking = stores(home)
    source = {r.info.run_id: r for r in all_runs(stores(swept["home"])[1])}
    runs = {r.info.run_id: r for r in all_runs(tracking)}
    assert len(runs) == len(source) and not set(runs) & set(source)  # new ids
    assert {r.data.tags["rnnsuite.source_run_id"] for r in runs.values()} == set(source)
    for r in runs.values():
        src = source[r.data.tags["rnnsuite.source_run_id"]]
        assert (r.info.status, r.info.start_time, r.info.end_time) == (src.info.status, src.info.start_time,
                                                                      src.info.end_time)
        assert r.data.params == src.data.params and r.data.metrics == src.data.metrics
        if "mlflow.parentRunId" in src.data.tags:  # nesting kept, with the new ids
            parent = runs[r.data.tags["mlflow.parentRunId"]]
            assert parent.data.tags["rnnsuite.source_run_id"] == src.data.tags["mlflow.parentRunId"]
    for study in journal(storage).get_all_studies():
        for t in optuna.load_study(study_name=study.study_name, storage=journal(storage)).trials:
            r = runs[t.user_attrs["mlflow_run_id"]]  # Optuna's reference remapped to the new run
            assert r.data.tags["study"] == study.study_name and r.data.tags["trial"] == str(t.number)
    ok(run("report", "tiny", "-o", tmp_path / "imported", home=home, cwd=tmp_path))
    assert csv_differences(swept["report"], tmp_path / "imported") == []
    # and straight from the archive, without touching the user's stores
    untouched = tmp_path / "untouched-home"
    out = ok(run("report", "--from", swept["archive"], "-o", tmp_path / "from", home=untouched, cwd=tmp_path))
    assert csv_differences(swept["report"], tmp_path / "from") == []
    md = (tmp_path / "from" / "report.md").read_text()
    assert not untouched.exists() and "from the archive `tiny.rnnsuite.tar.gz`" in md
    # it names no run id of the throw-away store it was read from, and does not claim to be logged to MLflow
    assert "parent run `" not in md and "not logged to MLflow" in md
    assert "parent run `" in (tmp_path / "imported" / "report.md").read_text()  # the imported one is logged


def test_a_report_rebuilt_from_an_archive_is_the_same_page_and_figures(swept, tmp_path):
    """Each build imports the archive afresh (new run ids); nothing of the page may depend on them, so that a
    committed report rebuilt from its archive shows no change but its build time."""
    for name in ("a", "b"):  # the same command in two places, each into a home of its own
        (tmp_path / name).mkdir()
        ok(run("report", "--from", swept["archive"], "-o", "out", home=tmp_path / name / "home", cwd=tmp_path / name))
    a, b = tmp_path / "a" / "out", tmp_path / "b" / "out"
    pngs = sorted(p.name for p in a.glob("*.png"))
    assert "learning_curves.png" in pngs  # seeds drawn in seed order, not in the order of their run ids
    for png in pngs:
        assert (a / png).read_bytes() == (b / png).read_bytes(), png
    built = re.compile(r"Built \d{4}-\d\d-\d\d \d\d:\d\d UTC")
    assert built.sub("Built", (a / "report.md").read_text()) == built.sub("Built", (b / "report.md").read_text())


def test_an_imported_sweep_reads_its_studies_where_it_was_imported_not_where_it_first_ran(swept, tmp_path):
    """The parent's `storage` param still names the source's journal, which exists on this machine too; the tag
    rnnsuite.storage says where the studies are now, so export and report read the imported ones (before, they
    silently read the source's: a stale store once the imported sweep had resumed)."""
    from suite.report.data import choose_storage, find_parent

    home = tmp_path / "moved"
    ok(run("import", swept["archive"], home=home, cwd=tmp_path))
    storage, tracking = stores(home)
    _, parent = find_parent(mlflow.MlflowClient(tracking), "tiny", tracking)
    assert parent.data.params["storage"] == stores(swept["home"])[0] and Path(stores(swept["home"])[0]).is_file()
    assert parent.data.tags["rnnsuite.storage"] == storage
    assert choose_storage(None, parent) == storage
    # a sweep command records where it stores its studies now, also when it resumes (here: nothing to do)
    source_parent = find_parent(mlflow.MlflowClient(stores(swept["home"])[1]), "tiny", stores(swept["home"])[1])[1]
    assert source_parent.data.tags["rnnsuite.storage"] == stores(swept["home"])[0]


def test_importing_twice_changes_nothing(swept, tmp_path):
    home = tmp_path / "home"
    ok(run("import", swept["archive"], home=home, cwd=tmp_path))
    storage, tracking = stores(home)
    before = (len(all_runs(tracking)), Path(storage).read_bytes(), (home / "mlflow.db").stat().st_mtime_ns)
    out = ok(run("import", swept["archive"], home=home, cwd=tmp_path))
    assert "already imported, nothing to do" in out.stdout
    assert (len(all_runs(tracking)), Path(storage).read_bytes()) == before[:2]
    # the stores the archive came from hold that very sweep: nothing to do there either
    out = ok(run("import", swept["archive"], home=swept["home"], cwd=tmp_path))
    assert "nothing to do" in out.stdout


def test_stores_holding_a_different_sweep_of_that_name_are_refused(swept, tmp_path):
    home = tmp_path / "home"
    storage, tracking = stores(home)
    from suite.tracking import prepare_local_store

    prepare_local_store(tracking)
    client = mlflow.MlflowClient(tracking)
    exp = client.create_experiment("tiny")
    client.create_run(exp, tags={"rnnsuite.level": "sweep", "rnnsuite.key": "tiny"})
    refused(run("import", swept["archive"], home=home, cwd=tmp_path), "already hold a different sweep named 'tiny'")
    assert len(all_runs(tracking)) == 1 and not Path(storage).exists()
    # Optuna studies of that name without its MLflow runs: another sweep's too
    other = tmp_path / "other"
    other.mkdir()
    optuna.create_study(study_name="tiny/adding/gru", storage=journal(str(other / "optuna.journal")))
    refused(run("import", swept["archive"], home=other, cwd=tmp_path), "Optuna studies of a different sweep")
    assert not (other / "mlflow.db").exists()


def test_an_interrupted_import_is_redone_whole(swept, tmp_path, monkeypatch):
    from suite.archive import command, restore

    home = tmp_path / "home"
    storage, tracking = stores(home)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(restore, "write_optuna", killed)  # MLflow written, Optuna not
    with pytest.raises(KeyboardInterrupt):
        command.import_archive(swept["archive"], storage, tracking)
    monkeypatch.undo()
    out = ok(run("import", swept["archive"], home=home, cwd=tmp_path))
    assert "an earlier import was interrupted" in out.stdout
    assert len(all_runs(tracking)) == 13  # the half-written runs were removed
    ok(run("report", "tiny", "-o", tmp_path / "report", home=home, cwd=tmp_path))
    assert csv_differences(swept["report"], tmp_path / "report") == []


# ---------------------------------------------------------------------------------------------- bad files
def repack(archive: Path, out: Path, manifest=None, member=None) -> Path:
    """A copy of `archive` with its manifest and/or one member edited (the manifest's checksums left as they were)."""
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    if manifest:
        data = json.loads(files["manifest.json"])
        manifest(data)
        files["manifest.json"] = json.dumps(data).encode()
    if member:
        files[member[0]] = member[1](files[member[0]])
    with tarfile.open(out, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def truncated(a, out):
    out.write_bytes(a.read_bytes()[: a.stat().st_size // 2])
    return out


def flipped(a, out):
    data = bytearray(a.read_bytes())
    data[len(data) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    return out


def foreign_tar(a, out):
    with tarfile.open(out, "w:gz") as tar:
        info = tarfile.TarInfo("notes.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return out


def text_file(a, out):
    out.write_text("name: tiny\n")
    return out


def newer(a, out):
    return repack(a, out, manifest=lambda m: m.update(version=99))


def checksum(a, out):
    return repack(a, out, member=("mlflow/metrics.csv", lambda b: b.replace(b",0.", b",1.", 1)))


@pytest.mark.parametrize("make,phrase", [
    (truncated, "truncated or damaged archive"),
    (flipped, "archive"),  # a flipped byte: gzip's CRC or our checksum, either way one line
    (checksum, "corrupted archive (checksum mismatch in mlflow/metrics.csv)"),
    (foreign_tar, "not an rnnsuite archive"),
    (text_file, "not an rnnsuite archive"),
    (newer, "archive format version 99 is newer than this rnnsuite reads (1)"),
], ids=["truncated", "flipped-byte", "checksum", "foreign-tar", "text-file", "newer-version"])
def test_bad_files_are_refused_in_one_line_and_nothing_is_written(swept, tmp_path, make, phrase):
    bad = make(swept["archive"], tmp_path / "bad.tar.gz")
    home = tmp_path / "home"
    refused(run("import", bad, home=home, cwd=tmp_path), phrase)
    refused(run("report", "--from", bad, "-o", tmp_path / "report", home=home, cwd=tmp_path), phrase)
    assert not home.exists() and not (tmp_path / "report").exists()


def test_missing_file_and_unknown_sweep_are_one_line(swept, tmp_path):
    """As the shell sees them: exit code 2 and one line on stderr from the real command."""
    refused(run("import", tmp_path / "nope.tar.gz", home=tmp_path / "h", cwd=tmp_path, process=True),
            "no archive at")
    refused(run("export", "nosuch", "-o", tmp_path / "x.tar.gz", home=swept["home"], cwd=tmp_path, process=True),
            "no sweep named 'nosuch'")
    assert not (tmp_path / "x.tar.gz").exists() and not (tmp_path / "h").exists()
    refused(run("report", "other", "--from", swept["archive"], "-o", tmp_path / "r", home=tmp_path / "h",
                cwd=tmp_path), "holds sweep 'tiny', not 'other'")
    assert not (tmp_path / "r").exists() and not (tmp_path / "h").exists()


def test_a_run_id_that_is_a_path_is_refused(swept, tmp_path):
    def escape(data: bytes) -> bytes:
        rows = [json.loads(line) for line in data.decode().splitlines()]
        rows[0]["run_id"] = "../../outside"
        return "".join(json.dumps(r) + "\n" for r in rows).encode()

    bad = repack(swept["archive"], tmp_path / "bad.tar.gz", member=("mlflow/runs.jsonl", escape))
    data = json.loads(tarfile.open(bad).extractfile("manifest.json").read())
    import hashlib

    with tarfile.open(bad) as tar:  # checksums made to match: only the content check can catch it
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    data["members"]["mlflow/runs.jsonl"] = hashlib.sha256(files["mlflow/runs.jsonl"]).hexdigest()
    repack(bad, tmp_path / "bad2.tar.gz", manifest=lambda m: m.update(members=data["members"]))
    refused(run("import", tmp_path / "bad2.tar.gz", home=tmp_path / "h", cwd=tmp_path),
            "damaged archive (unreadable content: run id '../../outside' is not an MLflow run id)")
    assert not (tmp_path / "h").exists()


# ---------------------------------------------------------------------------------------------- resume elsewhere
def test_a_sweep_killed_half_way_resumes_on_another_machine(tmp_path):
    """Killed inside a trial (the 15th MLflow log_batch: gru's first trial done, sgru's RUNNING), exported,
    imported into an empty RNNSUITE_HOME, resumed by the same command: exact budgets, nothing duplicated, nothing
    that was finished lost; the RUNNING trial is reaped at once (its worker is on the first machine)."""
    sweep_file = write(tmp_path, SPEC)
    first, second = tmp_path / "first", tmp_path / "second"
    killed = run("15", "--", "sweep", sweep_file, "--quiet", home=first, cwd=tmp_path,
                 script=[str(KILLPOINT), "log"])
    assert killed.returncode == -9, killed.stderr
    states = {s.study_name: [t.state for t in optuna.load_study(study_name=s.study_name, storage=journal(
        stores(first)[0])).trials] for s in journal(stores(first)[0]).get_all_studies()}
    running = [(name, i) for name, st in states.items() for i, s in enumerate(st) if s == TrialState.RUNNING]
    assert len(running) == 1 and TrialState.COMPLETE in sum(states.values(), []), states
    name, number = running[0]
    store = journal(stores(first)[0])
    trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(name), number)
    # as if its worker ran on another host and had just beaten: only the import can tell that it is lost
    store.set_trial_user_attr(trial_id, "worker", "first-machine:4242")
    store.set_trial_user_attr(trial_id, "heartbeat", time.time())
    ok(run("export", "tiny", "-o", tmp_path / "half.tar.gz", home=first, cwd=tmp_path))
    ok(run("import", tmp_path / "half.tar.gz", home=second, cwd=tmp_path))
    from suite.sweep import Sweep, load_sweep

    resumed = Sweep(load_sweep(sweep_file), *stores(second))
    assert resumed.reap(name.split("/")[2], "search") == 1  # reaped at once, not after GRACE seconds
    ok(run("sweep", sweep_file, "--quiet", home=second, cwd=tmp_path, timeout=300))
    storage, tracking = stores(second)
    runs = assert_exact(storage, tracking, SPEC)  # exact budgets, nothing RUNNING, one run per finished trial
    lost = optuna.load_study(study_name=name, storage=journal(storage)).trials[number]
    assert lost.state == TrialState.FAIL and lost.user_attrs["lost"]
    assert mlflow.MlflowClient(tracking).get_run(lost.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    before = {r.info.run_id: r for r in all_runs(stores(first)[1])}
    after = {r.data.tags.get("rnnsuite.source_run_id"): r for r in runs}
    for run_id, r in before.items():  # nothing lost: every run of the first machine is there, finished ones as they were
        assert run_id in after
        if r.info.status == "FINISHED":
            assert after[run_id].info.status == "FINISHED" and after[run_id].data.metrics == r.data.metrics
    for s in journal(stores(first)[0]).get_all_studies():
        old = optuna.load_study(study_name=s.study_name, storage=journal(stores(first)[0])).trials
        new = optuna.load_study(study_name=s.study_name, storage=journal(storage)).trials
        for t in old:
            if t.state == TrialState.COMPLETE:
                assert (new[t.number].state, new[t.number].value, new[t.number].params) == (t.state, t.value, t.params)


# ---------------------------------------------------------------------------------------------- real servers
from test_sweep_postgres import services  # noqa: E402,F401  (PostgreSQL + mlflow server, started here)


def test_round_trip_through_postgres_and_an_mlflow_server(swept, services, tmp_path):
    """Into PostgreSQL + `mlflow server`: the same report; importing again changes nothing; exported from there,
    the archive still gives the same report."""
    flags = ["--storage", services["storage"], "--tracking-uri", services["tracking"]]
    home = tmp_path / "home"
    ok(run("import", swept["archive"], *flags, home=home, cwd=tmp_path))
    assert "nothing to do" in ok(run("import", swept["archive"], *flags, home=home, cwd=tmp_path)).stdout
    ok(run("report", "tiny", "-o", tmp_path / "server", *flags, home=home, cwd=tmp_path))
    assert csv_differences(swept["report"], tmp_path / "server") == []
    assert len(all_runs(services["tracking"])) == 13
    ok(run("export", "tiny", "-o", tmp_path / "again.tar.gz", *flags, home=home, cwd=tmp_path))
    ok(run("report", "--from", tmp_path / "again.tar.gz", "-o", tmp_path / "again", home=home, cwd=tmp_path))
    assert csv_differences(swept["report"], tmp_path / "again") == []
    assert not home.exists()  # nothing went to the embedded stores


def test_the_committed_report_check_passes_a_true_report_and_catches_a_changed_number(swept, tmp_path):
    """test_committed_reports' rebuild, on a report laid out as reports/NAME/ with NAME.rnnsuite.tar.gz beside it."""
    import shutil

    from test_committed_reports import archive_of, rebuild_differences

    report = tmp_path / "reports" / "tiny"
    shutil.copytree(swept["report"], report)
    shutil.copy(swept["archive"], archive_of(report))
    assert rebuild_differences(report, tmp_path / "a") == []
    runs = pd.read_csv(report / "runs.csv")
    runs.loc[0, "val/mse"] *= 1 + 1e-7  # beyond the 1e-9 relative tolerance
    runs.to_csv(report / "runs.csv", index=False)
    differences = csv_differences(report, tmp_path / "a" / "rebuilt")  # the rebuild above, against the change
    assert [d for d in differences if d.startswith("runs.csv: column 'val/mse'")]


def test_checkpoints_travel_only_when_asked(swept, tmp_path):
    ok(run("export", "tiny", "-o", tmp_path / "ckpt.tar.gz", "--with-checkpoints", home=swept["home"], cwd=tmp_path))
    with tarfile.open(tmp_path / "ckpt.tar.gz") as tar:
        assert [n for n in tar.getnames() if n.startswith("checkpoints/") and n.endswith("last.ckpt")]
    home = tmp_path / "home"
    ok(run("import", tmp_path / "ckpt.tar.gz", home=home, cwd=tmp_path))
    trials = [r for r in all_runs(stores(home)[1]) if r.data.tags.get("rnnsuite.level") == "trial"]
    for r in trials:  # each run's checkpoints in this home's checkpoint folder, under the run's new id
        folder = Path(r.data.tags["rnnsuite.checkpoint_dir"])
        assert folder == home / "checkpoints" / r.info.run_id and (folder / "last.ckpt").is_file()
