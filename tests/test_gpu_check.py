"""make gpu-check (scripts/gpu-check): the dry run a machine without a GPU does, and the stage machinery that
keeps one hung stage from eating the GPU machine's few minutes."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from suite import cells

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_dry_run_says_so_in_one_line_and_writes_its_results(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, GPU_CHECK_PYTHON=sys.executable, GPU_CHECK_DRY_RUN="1")
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check"), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: ") and "dry run" in lines[0]
    summary = json.loads((out / "gpu-check.json").read_text())
    assert summary["mode"] == "dry-run" and summary["ok"] is True
    stages = summary["stages"]
    assert set(stages) == {"environment", "syntax", "syntax-py", "collect-cuda-tests", "sweep-file", "bench-cells"}
    assert all(s["rc"] == 0 and not s["timed_out"] for s in stages.values())
    env_info = summary["environment"]
    assert env_info["torch"] and env_info["python"] and env_info["missing"] == []
    # every CUDA test the GPU run will select is collected: at least the per-cell ones (forward, bf16, backward)
    assert stages["collect-cuda-tests"]["result"]["collected"] >= 3 * len(cells.names())
    bench = json.loads((out / "bench-cells.json").read_text())
    assert set(bench["cells"]) == set(cells.names()) and bench["precision"]["precision.cudnn_rnn_fp32"] == "ieee"
    assert bench["sections"] == ["cells"] and "packed" not in bench
    log = (out / "gpu-check.log").read_text()
    for name in stages:
        assert f"===== {name}: rc=0" in log


def test_a_hung_stage_is_killed_at_its_limit_and_the_next_one_runs(tmp_path):
    gc = load_script()
    check = gc.Check(tmp_path, sys.executable, dry=True, budget=60)
    started = time.monotonic()
    hung = check.stage("hung", [sys.executable, "-c", "import time, subprocess, sys; "
                                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                                "time.sleep(60)"], limit=1.5)
    assert hung["timed_out"] is True and hung["rc"] is None and hung["ok"] is False
    assert time.monotonic() - started < 15  # the whole process group went, its child too
    after = check.stage("after", [sys.executable, "-c", "print('{\"x\": 1}')"], limit=10, parse=gc._last_json)
    assert after["ok"] and after["result"] == {"x": 1}
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    assert summary["ok"] is False and set(summary["stages"]) == {"hung", "after"}
    assert check.finish() == 1


def test_stage_limits_keep_time_back_for_the_later_stages(tmp_path):
    gc = load_script()
    check = gc.Check(tmp_path, sys.executable, dry=False, budget=200)
    later = sum(gc.LIMITS[k][1] for k in ("bench-cells", "bench-packed", "sweep", "sweep-record"))
    assert check.limit("cuda-tests") <= 200 - later
    check.deadline = time.monotonic() + 30  # almost spent: a stage still gets a few seconds, never a negative limit
    assert 5.0 <= check.limit("sweep") <= 30


def test_junit_results_become_counts_and_failing_names(tmp_path):
    gc = load_script()
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
                   '<testcase classname="tests.test_cuda" name="test_a"/>'
                   '<testcase classname="tests.test_cuda" name="test_b"><failure message="assert 1 == 2&#10;more">'
                   'tb</failure></testcase><testcase classname="tests.test_cuda" name="test_c"><skipped/></testcase>'
                   '</testsuite></testsuites>')
    assert gc._junit(xml) == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1, "passed": 1,
                              "failed": ["tests.test_cuda::test_b: assert 1 == 2"]}
