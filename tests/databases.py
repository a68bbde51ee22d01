"""The databases the deployment is tested against: SQLite (the default) and PostgreSQL
(the production database; this machine kind runs a server on 127.0.0.1:5432 with trust
authentication). Each PostgreSQL test gets a database of its own, dropped afterwards."""

from __future__ import annotations

import glob
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _connect() -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection to the server (started once if it is down)."""
    try:
        return psycopg.connect(ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError:
        for version in glob.glob("/etc/postgresql/*"):  # Debian's cluster, as documented
            cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", Path(version).name, "main"]
            subprocess.run([*cmd, "start"], check=False, capture_output=True)
        for _ in range(50):
            try:
                return psycopg.connect(ADMIN, autocommit=True, connect_timeout=5)
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty PostgreSQL database, dropped on exit."""
    name = f"zenfed_test_{uuid.uuid4().hex[:12]}"
    with _connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        yield f"{SERVER}/{name}"
    finally:
        with _connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL for a deployment test: SQLite in ``tmp_path/state`` (where ``zenfed
    serve`` puts it by default), or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'zenfed.db'}"
        return
    with fresh_postgres() as url:
        yield url


def serve_args(url: str) -> tuple[str, ...]:
    """``zenfed serve`` options for ``url`` (none for the default SQLite file)."""
    return () if url.startswith("sqlite") else ("--db", url)
