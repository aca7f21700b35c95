#!/usr/bin/env python3
"""``make gpu-check``: prove the CUDA path in one short run and keep everything it measured.

On a machine with an NVIDIA GPU, in stages that each have their own time limit inside one overall budget
(``GPU_CHECK_BUDGET_S``, default 450 s, so the whole check ends in under 8 minutes): the environment (GPU model,
driver, torch, CUDA and cuDNN versions), an install of what is missing WITHOUT touching the machine's torch
(wheels carried in ``.whl/`` installed into a side folder, or pip with the installed torch pinned), the CUDA tests
(``pytest -m cuda``), ``rnnsuite bench --device cuda`` (cells at the fastrnns shape against cuDNN, with the fused
loops eager and then replayed from CUDA graphs; packed trials per hour at M in {1, 8, 32, 64}, H=64, eager and
from CUDA graphs), a short packed sweep on CUDA with two workers trained from CUDA graphs, and what its MLflow runs
recorded. Results go to OUT (argument, else $OUT, else ./gpu-check-out): ``gpu-check.json`` (every stage: command,
exit code, seconds, parsed results), ``gpu-check.log`` (every stage's output), ``bench-cells.json``,
``bench-cells-graphs.json``, ``bench-packed.json`` and ``bench-packed-graphs.json``. A stage that hangs is killed at its limit (its process
group) and the next one runs.

Without a GPU (or with GPU_CHECK_DRY_RUN=1) it prints one line saying so, then dry-runs what needs no GPU: the
script's syntax, the collection of the CUDA tests, the sweep file's validation, a tiny ``bench`` section on the
CPU, and the JSON writing; exit 0 when those pass. Only the standard library is imported here: it runs before
anything is installed.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SWEEP = "scripts/gpu-check-sweep.yaml"
CUDA_TESTS = ["tests/test_cuda.py", "tests/test_cells_contract.py"]
NEEDED = ["torch", "lightning", "mlflow", "optuna", "optuna_integration", "pandas", "scipy", "yaml", "matplotlib",
          "pytest"]
# stage -> (limit s, seconds kept back for it while earlier stages run): the limits sum past the budget, the
# reserves keep a slow early stage from starving the later ones
LIMITS = {"environment": (40, 10), "install": (90, 0), "cuda-tests": (170, 30), "bench-cells": (90, 30),
          "bench-cells-graphs": (80, 20), "bench-packed": (150, 60),
          "bench-packed-graphs": (120, 40), "sweep": (120, 40), "sweep-record": (30, 10)}
# the sweep stage runs a two-worker packed sweep itself: the test that does the same is left to `pytest -m cuda`
CUDA_TESTS_DESELECT = "not two_worker_packed_sweep"

ENV_PROBE = r"""
import importlib, json, platform, sys
info = {"python": sys.version.split()[0], "platform": platform.platform(), "executable": sys.executable}
missing = []
for name in NEEDED:
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing.append(f"{name} ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})")
info["missing"] = missing
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    gpu_memory_gib=round(p.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
except Exception as exc:
    info["torch_error"] = f"{exc.__class__.__name__}: {exc}"
print(json.dumps(info))
"""

SWEEP_RECORD = r"""
import collections, json, sys
import mlflow
client = mlflow.MlflowClient(sys.argv[1])
exp = client.get_experiment_by_name("gpu-check")
runs = client.search_runs([exp.experiment_id], max_results=5000) if exp else []
trials = [r for r in runs if "trial" in r.data.tags]
tags = collections.defaultdict(collections.Counter)
for r in trials:
    for key in ("device", "device.name", "precision.cudnn_rnn_fp32", "precision.matmul_fp32", "pack.size",
                "cuda.graphs"):
        tags[key][r.data.tags.get(key, "-")] += 1
print(json.dumps({"trial_runs": len(trials), "status": dict(collections.Counter(r.info.status for r in trials)),
                  "tags": {k: dict(v) for k, v in tags.items()}}))
"""


class Check:
    def __init__(self, out: Path, python: str, dry: bool, budget: float):
        self.out, self.python, self.dry = out, python, dry
        self.started = time.monotonic()
        self.deadline = self.started + budget
        self.scratch = Path(tempfile.mkdtemp(prefix="rnnsuite-gpu-check-"))
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", RNNSUITE_QUIET="1", RNNSUITE_HOME=str(self.scratch / "home"))
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.log_path = out / "gpu-check.log"
        self.log_path.write_text("")
        self.summary: dict = {"mode": "dry-run" if dry else "gpu", "python": python, "budget_s": budget,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git": _git(),
                              "stages": {}}

    # ------------------------------------------------------------------ running a stage
    def limit(self, name: str) -> float:
        cap, _ = LIMITS[name]
        later = list(LIMITS)[list(LIMITS).index(name) + 1:]
        keep = sum(LIMITS[k][1] for k in later if not (self.dry and k not in ("environment",)))
        return max(5.0, min(cap, self.deadline - time.monotonic() - keep))

    def stage(self, name: str, cmd: list[str], env: dict | None = None, limit: float | None = None,
              parse=None) -> dict:
        limit = limit or self.limit(name)
        record = {"command": " ".join(shlex.quote(c) for c in cmd), "limit_s": round(limit, 1)}
        self._log(f"\n===== {name}: {record['command']} (limit {limit:.0f} s)\n")
        t0 = time.monotonic()
        with open(self.scratch / f"{name}.out", "w+") as capture:
            proc = subprocess.Popen(cmd, cwd=ROOT, env={**self.env, **(env or {})}, stdout=capture,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                record["rc"] = proc.wait(timeout=limit)
                record["timed_out"] = False
            except subprocess.TimeoutExpired:  # kill the whole group: pytest's or a sweep's children too
                _kill_group(proc)
                record["rc"], record["timed_out"] = None, True
            capture.seek(0)
            text = capture.read()
        record["seconds"] = round(time.monotonic() - t0, 1)
        self._log(text)
        self._log(f"===== {name}: rc={record['rc']} timed_out={record['timed_out']} in {record['seconds']} s\n")
        if parse is not None:
            try:
                record["result"] = parse(text)
            except Exception as exc:  # a stage that printed nothing parseable: say so, keep going
                record["parse_error"] = f"{exc.__class__.__name__}: {exc}"
        record["ok"] = record["rc"] == 0 and "parse_error" not in record
        self.summary["stages"][name] = record
        self.write()
        return record

    def _log(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(text)

    def write(self) -> None:
        self.summary["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.summary["ok"] = all(s.get("ok") for s in self.summary["stages"].values())
        tmp = self.out / ".gpu-check.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=1, sort_keys=True))
        os.replace(tmp, self.out / "gpu-check.json")

    def py(self, *args: str) -> list[str]:
        return [self.python, *args]

    # ------------------------------------------------------------------ stages
    def environment(self, name: str = "environment") -> dict:
        probe = ENV_PROBE.replace("NEEDED", repr(NEEDED))
        rec = self.stage(name, self.py("-c", probe), parse=_last_json,
                         limit=None if name in LIMITS else LIMITS["environment"][0])
        info = rec.get("result") or {}
        info["nvidia_smi"] = _nvidia_smi()
        self.summary["environment"] = info
        self.write()
        return info

    def install(self, missing: list[str]) -> None:
        """What is missing, without replacing this machine's torch: carried wheels into a side folder, else pip
        with torch pinned to the installed version."""
        wheels = sorted((ROOT / ".whl").glob("*.whl")) if (ROOT / ".whl").is_dir() else []
        site = self.scratch / "site"
        if wheels:
            script = INSTALL_WHEELS.format(site=str(site), wheels=[str(w) for w in wheels])
            self.stage("install", self.py("-c", script))
        else:
            names = [m.split()[0] for m in missing if not m.startswith("torch")]
            pin = self.scratch / "torch-pin.txt"
            version = (self.summary.get("environment") or {}).get("torch")
            pin.write_text(f"torch=={version}\n" if version else "")
            pkgs = [{"yaml": "PyYAML", "optuna_integration": "optuna-integration"}.get(n, n) for n in names]
            self.stage("install", self.py("-m", "pip", "install", "--quiet", "-c", str(pin), *pkgs))
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(site), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep)

    def cuda_tests(self) -> None:
        junit = self.scratch / "junit.xml"
        self.stage("cuda-tests", self.py("-m", "pytest", "-q", "-m", "cuda", "-k", CUDA_TESTS_DESELECT, "-p",
                                         "no:cacheprovider", "-o", "addopts=-ra", f"--junitxml={junit}", *CUDA_TESTS),
                   parse=lambda text: _junit(junit))
        rec = self.summary["stages"]["cuda-tests"]
        if rec.get("result", {}).get("passed") == 0:  # every test skipped: torch saw no GPU in pytest
            rec["ok"], rec["note"] = False, "no CUDA test ran (all skipped or deselected)"
            self.write()

    def bench(self, section: str, graphs: bool = False) -> None:
        name = f"bench-{section}" + ("-graphs" if graphs else "")
        limit = self.limit(name)
        timeout = max(5, int(limit) - 25)  # the section stops itself first; imports and JSON take the rest
        dest = self.out / f"{name}.json"
        profile = "tiny" if self.dry else "gpu-check"
        device = "cpu" if self.dry else "cuda"

        def keep(text: str) -> dict:
            result = _last_json(text)
            dest.write_text(json.dumps(result, indent=1))
            return {"file": dest.name, "skipped": result.get("skipped"), "targets": result.get("targets"),
                    "precision": result.get("precision"), "device_name": result.get("device_name")}

        self.stage(name, self.py("-m", "suite", "bench", "--device", device, "--json", "--sections", section,
                                 "--section-timeout", str(timeout)),
                   env={"RNNSUITE_BENCH_PROFILE": profile, "RNNSUITE_CUDA_GRAPHS": "1" if graphs else "0"},
                   parse=keep, limit=limit)

    def sweep(self) -> None:
        storage = self.scratch / "optuna.journal"
        uri = f"sqlite:///{self.scratch / 'mlflow.db'}"
        self.stage("sweep", self.py("-m", "suite", "sweep", SWEEP, "--storage", str(storage), "--tracking-uri", uri,
                                    "--workers", "2", "--quiet"), parse=lambda text: {"tail": text.splitlines()[-8:]},
                   env={"RNNSUITE_CUDA_GRAPHS": "1"})  # training from CUDA graphs: the bench times them, this trains

        self.stage("sweep-record", self.py("-c", SWEEP_RECORD, uri), parse=_last_json)

    def dry_run(self) -> None:
        self.stage("syntax", ["bash", "-n", "scripts/gpu-check"], limit=20)
        self.stage("syntax-py", self.py("-m", "py_compile", "scripts/gpu_check.py"), limit=20)
        self.stage("collect-cuda-tests", self.py("-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-k",
                                                 CUDA_TESTS_DESELECT, "-p", "no:cacheprovider", *CUDA_TESTS), limit=90,
                   parse=_collected)
        self.stage("sweep-file", self.py("-c", "import sys; from suite.sweep import load_sweep; s = load_sweep(sys."
                                         "argv[1]); print(s.name, s.pack, s.cells)", SWEEP), limit=60)
        self.bench("cells")

    def finish(self) -> int:
        self.write()
        shutil.rmtree(self.scratch, ignore_errors=True)
        return 0 if self.summary["ok"] else 1


INSTALL_WHEELS = r"""
import importlib.metadata as md, re, subprocess, sys
wheels = {wheels!r}
have = {{re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in md.distributions()}}
need = [w for w in wheels if re.sub(r"[-_.]+", "-", w.rsplit("/", 1)[-1].split("-")[0]).lower() not in have]
print(f"{{len(need)}} of {{len(wheels)}} carried wheels are missing here:", [w.rsplit("/", 1)[-1] for w in need])
pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile", "--target",
       {site!r}]
if need and subprocess.run(pip + need).returncode != 0:  # one wheel for another Python: install the rest
    failed = [w for w in need if subprocess.run(pip + ["--upgrade", w]).returncode != 0]
    print("could not install:", [w.rsplit("/", 1)[-1] for w in failed])
    sys.exit(1 if failed else 0)
"""


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def _junit(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = []
    for case in suite.iter("testcase"):
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                message = (node.get("message") or "").splitlines()[0][:300] if node.get("message") else ""
                failed.append(f"{case.get('classname')}::{case.get('name')}: {message}")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed": failed}


def _collected(text: str) -> dict:
    ids = [line for line in text.splitlines() if "::" in line]
    m = re.search(r"(\d+)(?:/\d+)? tests? collected", text)
    return {"collected": len(ids), "summary": m.group(0) if m else text.strip().splitlines()[-1:]}


def _git() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _nvidia_smi() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else os.environ.get("OUT") or "gpu-check-out").absolute()
    out.mkdir(parents=True, exist_ok=True)
    python = os.environ.get("GPU_CHECK_PYTHON") or sys.executable
    budget = float(os.environ.get("GPU_CHECK_BUDGET_S") or 450)
    check = Check(out, python, dry=True, budget=budget)
    info = check.environment()
    gpu = bool(info.get("cuda_available")) and not os.environ.get("GPU_CHECK_DRY_RUN")
    if not gpu:
        why = "GPU_CHECK_DRY_RUN is set" if info.get("cuda_available") else \
            f"no CUDA GPU visible to {python} (torch {info.get('torch', 'not importable')})"
        print(f"gpu-check: {why}: dry run only (no GPU stages); results in {out}", flush=True)
        check.dry_run()
        return check.finish()
    check.dry = False
    check.summary["mode"] = "gpu"
    print(f"gpu-check: {info.get('gpu')} (torch {info.get('torch')}, CUDA {info.get('torch_cuda')}, cuDNN "
          f"{info.get('cudnn')}); results in {out}", flush=True)
    if info.get("missing"):
        check.install(info["missing"])
        info = check.environment("environment-after-install")
        if info.get("missing"):
            print(f"gpu-check: still missing after the install: {', '.join(info['missing'])}", flush=True)
    for step in (check.cuda_tests, lambda: check.bench("cells"), lambda: check.bench("cells", graphs=True),
                 lambda: check.bench("packed"), lambda: check.bench("packed", graphs=True), check.sweep):
        step()
        stage = list(check.summary["stages"].items())[-1]
        print(f"gpu-check: {stage[0]}: rc={stage[1]['rc']} in {stage[1]['seconds']} s", flush=True)
    code = check.finish()
    print(f"gpu-check: {'all stages passed' if code == 0 else 'some stages failed'} in "
          f"{check.summary['elapsed_s']} s; see {out / 'gpu-check.json'}", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
