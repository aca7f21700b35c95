"""A sweep on real services, as teams run it: PostgreSQL as the Optuna storage and as the backend of a real
`mlflow server`, two worker processes sharing the sweep. The servers are started here on 127.0.0.1 and stopped
after; where they cannot start the test fails (CI installs Debian's postgresql)."""
from __future__ import annotations

import psycopg2
import pytest

from servers import mlflow_server, postgres_server
from suite.tracking import sqlalchemy_url
from test_sweep import TINY, assert_exact, cli, write


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pg")
    with postgres_server(tmp) as url:
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn.cursor() as cur:  # Optuna and MLflow both keep an alembic_version table: one database each
            cur.execute("CREATE DATABASE optuna")
        conn.close()
        optuna_url = url.rsplit("/", 1)[0] + "/optuna"
        with mlflow_server(sqlalchemy_url(url), tmp / "artifacts") as tracking:
            yield {"storage": optuna_url, "tracking": tracking, "password": url.split(":")[2].split("@")[0]}


def test_two_workers_share_a_sweep_on_postgres_and_mlflow_server(services, tmp_path):
    spec = dict(TINY, name="pg", cells=["gru", "sgru"], budget={"trials": 3, "steps": 20})
    out = cli("sweep", str(write(tmp_path, spec)), "--storage", services["storage"], "--tracking-uri",
              services["tracking"], "--workers", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    runs = assert_exact(sqlalchemy_url(services["storage"]), services["tracking"], spec)
    assert any(r.data.tags.get("rnnsuite.level") == "sweep" for r in runs)
    # the database password never reaches the output or the MLflow records
    assert services["password"] not in out.stdout + out.stderr
    for r in runs:
        assert services["password"] not in str(r.data.params) + str(r.data.tags)


def test_wrong_database_password_is_one_line(services, tmp_path):
    bad = services["storage"].replace(services["password"], "wrong")
    out = cli("sweep", str(write(tmp_path, TINY)), "--storage", bad, "--tracking-uri",
              f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot open Optuna storage" in lines[0] and "wrong" not in lines[0]
