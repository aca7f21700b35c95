"""The archive format (docs/archives.md): members, the manifest, writing and validated reading.

An archive is a gzip-compressed tar file whose first member is ``manifest.json``::

    manifest.json              format, version, sweep name and origin, versions, sweep file, sha256 per member
    optuna/studies.jsonl       one study per line: name, directions, user_attrs, system_attrs
    optuna/trials.jsonl        one trial per line: study, number, state, values, datetime_start/_complete, params,
                               distributions (optuna.distributions.distribution_to_json), user_attrs, system_attrs,
                               intermediate_values
    mlflow/experiment.json     name and tags of the sweep's MLflow experiment
    mlflow/runs.jsonl          one run per line: run_id, parent_run_id, run_name, status, start/end time, tags, params
    mlflow/metrics.csv         run_id, key, step, timestamp, value: every logged value (full histories)
    artifacts/RUN_ID/PATH      the runs' artifacts (config.yaml, diagnostics/...), not the logged report
    checkpoints/RUN_ID/FILE    only with --with-checkpoints

Reading validates everything before anything is returned: a truncated, corrupted (checksum), foreign or newer
archive is one SuiteError line. Older versions are upgraded on read (UPGRADES), so an archive written before a
refactor still imports.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..registry import SuiteError

FORMAT = "rnnsuite-sweep-archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STUDIES, TRIALS = "optuna/studies.jsonl", "optuna/trials.jsonl"
EXPERIMENT, RUNS, METRICS = "mlflow/experiment.json", "mlflow/runs.jsonl", "mlflow/metrics.csv"
METRIC_COLUMNS = ["run_id", "key", "step", "timestamp", "value"]
REQUIRED = (STUDIES, TRIALS, EXPERIMENT, RUNS, METRICS)
RUN_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
UPGRADES: dict = {}  # version -> function(Archive) bringing an archive of that version to the next one


@dataclass
class Archive:
    """A validated archive, extracted into `root` (artifacts and checkpoints are read from there)."""

    path: Path
    root: Path
    manifest: dict
    studies: list[dict] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    experiment: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)
    metrics: dict[str, list[tuple]] = field(default_factory=dict)  # run_id -> [(key, step, timestamp, value)]

    @property
    def name(self) -> str:
        return self.manifest["sweep"]

    @property
    def origin(self) -> str:
        return self.manifest["origin"]

    def files(self, top: str, run_id: str) -> list[tuple[Path, str]]:
        """(local file, path relative to the run's folder) for artifacts/ or checkpoints/ of one run."""
        base = self.root / top / run_id
        return sorted((p, p.relative_to(base).as_posix()) for p in base.rglob("*") if p.is_file()) \
            if base.is_dir() else []


# ---------------------------------------------------------------------------------------------- writing
def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")  # key order kept: a trial's params in the order it sampled them


def write_metrics(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(METRIC_COLUMNS)
        for run_id, key, step, timestamp, value in rows:
            out.writerow([run_id, key, step, timestamp, repr(float(value))])  # repr: the exact float back


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pack(staging: Path, manifest: dict, out: Path) -> None:
    """Tar staging/ into `out` with manifest.json first (its members' checksums filled in); written beside `out`
    and renamed into place, so a kill never leaves half an archive under the final name."""
    members = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    manifest = dict(manifest, members={m: sha256(staging / m) for m in members})
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.writing-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for name in [MANIFEST, *members]:
                tar.add(staging / name, arcname=name, recursive=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- reading
def _safe_name(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


def _extract(path: Path, root: Path) -> None:
    """Every member a regular file with a safe relative name, written under root; any damage is one line."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if not member.isfile() or not _safe_name(member.name):
                    raise SuiteError(f"{path}: not an rnnsuite archive (unexpected member {member.name[:80]!r})")
                target = root / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
    except SuiteError:
        raise
    except tarfile.ReadError as exc:
        if "gzip" in str(exc) or "invalid header" in str(exc) or "empty file" in str(exc):
            raise SuiteError(f"{path}: not an rnnsuite archive (not a gzip-compressed tar file)") from None
        raise SuiteError(f"{path}: truncated or damaged archive ({_reason(exc)})") from None
    except (EOFError, zlib.error, tarfile.TarError, OSError) as exc:
        raise SuiteError(f"{path}: truncated or damaged archive ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else exc.__class__.__name__


def read_archive(path: str | Path, workdir: str | Path) -> Archive:
    """Extract `path` into workdir and validate it whole: format, version, members, checksums, contents."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"no archive at {path}")
    root = Path(tempfile.mkdtemp(prefix="archive-", dir=workdir))
    _extract(path, root)
    manifest_path = root / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise SuiteError(f"{path}: not an rnnsuite archive (no readable {MANIFEST})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SuiteError(f"{path}: not an rnnsuite archive ({MANIFEST} does not name the format {FORMAT!r})")
    version = manifest.get("version")
    if not isinstance(version, int) or version < 1:
        raise SuiteError(f"{path}: damaged archive (format version {version!r} is not a positive integer)")
    if version > FORMAT_VERSION:
        raise SuiteError(f"{path}: archive format version {version} is newer than this rnnsuite reads "
                         f"({FORMAT_VERSION}); upgrade rnnsuite (the archive says rnnsuite "
                         f"{manifest.get('rnnsuite', '?')})")
    _check_members(path, root, manifest)
    archive = Archive(path=path, root=root, manifest=manifest)
    try:
        _parse(archive)
    except (ValueError, KeyError, TypeError) as exc:
        raise SuiteError(f"{path}: damaged archive (unreadable content: {_reason(exc)})") from None
    while archive.manifest["version"] < FORMAT_VERSION:  # archives of older versions, brought up to date
        UPGRADES[archive.manifest["version"]](archive)
    return archive


def _check_members(path: Path, root: Path, manifest: dict) -> None:
    listed = manifest.get("members")
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise SuiteError(f"{path}: damaged archive ({MANIFEST} lists no member checksums)")
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {MANIFEST}
    missing = sorted(set(listed) - present)
    if missing:
        raise SuiteError(f"{path}: truncated or damaged archive (member {missing[0]!r} is missing)")
    extra = sorted(present - set(listed))
    if extra:
        raise SuiteError(f"{path}: damaged archive (member {extra[0]!r} is not in the manifest)")
    for name in sorted(listed):
        if sha256(root / name) != listed[name]:
            raise SuiteError(f"{path}: corrupted archive (checksum mismatch in {name})")
    absent = [m for m in REQUIRED if m not in listed]
    if absent:
        raise SuiteError(f"{path}: damaged archive (required member {absent[0]!r} is missing)")
    for key in ("sweep", "origin"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise SuiteError(f"{path}: damaged archive ({MANIFEST} has no {key!r})")
    if "/" in manifest["sweep"]:
        raise SuiteError(f"{path}: damaged archive (sweep name {manifest['sweep'][:60]!r} holds '/')")


def _jsonl(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path.name}: a line is not a JSON object")
    return rows


def _require(row: dict, keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{what} without {missing[0]!r}")


def _parse(a: Archive) -> None:
    a.studies = _jsonl(a.root / STUDIES)
    a.trials = _jsonl(a.root / TRIALS)
    a.experiment = json.loads((a.root / EXPERIMENT).read_text(encoding="utf-8"))
    a.runs = _jsonl(a.root / RUNS)
    for s in a.studies:
        _require(s, ("name", "directions"), "a study")
    names = {s["name"] for s in a.studies}
    for t in a.trials:
        _require(t, ("study", "number", "state", "params", "distributions"), "a trial")
        if t["study"] not in names:
            raise ValueError(f"trial of unknown study {t['study']!r}")
    for r in a.runs:
        _require(r, ("run_id", "origin_id", "status", "tags", "params"), "a run")
        if not RUN_ID.fullmatch(str(r["run_id"])):  # it names folders of artifacts/ and checkpoints/
            raise ValueError(f"run id {str(r['run_id'])[:40]!r} is not an MLflow run id")
    ids = {r["run_id"] for r in a.runs}
    with open(a.root / METRICS, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        if next(rows, None) != METRIC_COLUMNS:
            raise ValueError(f"{METRICS}: header is not {','.join(METRIC_COLUMNS)}")
        for run_id, key, step, timestamp, value in rows:
            if run_id not in ids:
                raise ValueError(f"metric of unknown run {run_id!r}")
            a.metrics.setdefault(run_id, []).append((key, int(step), int(timestamp), float(value)))
