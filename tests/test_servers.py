"""The rule of tests/servers.py: a server or browser the integration tests need that is not installed skips those
tests with a one-line reason on a developer's machine, and fails them under CI (CI=true), so that they can never
silently stop running where it matters."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = '''
from servers import browser_path, postgres_bin


def test_needs_postgres():
    postgres_bin()


def test_needs_a_browser():
    browser_path()
'''


def _pytest(tmp_path, *targets, ci: bool):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(RNNSUITE_TEST_HIDE="postgresql,chromium", PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{ROOT}")
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", *targets],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)


def test_missing_servers_skip_with_their_reason_outside_ci(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    real = f"{ROOT / 'tests' / 'test_ui.py'}::test_postgres_and_mlflow_server_helpers"
    out = _pytest(tmp_path, str(probe), real, ci=False)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "3 skipped" in out.stdout and "failed" not in out.stdout, out.stdout[-3000:]
    assert "PostgreSQL server binaries are not installed" in out.stdout
    assert "Chromium is not installed" in out.stdout


def test_missing_servers_fail_under_ci(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    out = _pytest(tmp_path, str(probe), ci=True)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "2 failed" in out.stdout and "CI=true: the integration tests must run" in out.stdout, out.stdout[-3000:]


def test_make_test_installs_or_names_what_is_missing():
    """scripts/test-deps, with installing switched off, names what is missing and does not fail make."""
    env = dict(os.environ, RNNSUITE_NO_APT="1", PATH="/nonexistent")
    out = subprocess.run(["/bin/bash", str(ROOT / "scripts" / "test-deps")], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0
    assert "chromium not installed" in out.stdout and "will skip" in out.stdout, out.stdout
