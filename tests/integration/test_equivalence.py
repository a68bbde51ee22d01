"""One code path, two ways to run it: the same config and seed give the same global version,
bit for bit, through the simulation (one process, in-memory transport, virtual clock) and
through the deployment (a coordinator service and three participant processes on loopback,
signed HTTP, SQLite and a blob store)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.integration.test_deploy import FED_TOML, _federation, _zenfed, procs  # noqa: F401
from zenfed.store.db import Database, Version

pytestmark = pytest.mark.integration


def test_the_simulation_and_the_deployment_commit_the_same_versions(
    tmp_path: Path,
    procs: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    cfg = tmp_path / "federation.toml"
    cfg.write_text(FED_TOML)
    sim = _zenfed("simulate", "--config", str(cfg), "--out", str(tmp_path / "sim"), "--quiet")
    out, _ = sim.communicate(timeout=600)
    assert sim.returncode == 0, out
    history = [
        json.loads(line) for line in (tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()
    ]
    simulated = [row["version"] for row in history[1:]]  # the first 16 hex digits of each id

    state = _federation(cfg, tmp_path / "deploy", procs)
    db = Database(f"sqlite:///{state / 'zenfed.db'}")
    with db.transaction() as s:
        deployed = [v.id for v in s.scalars(select(Version).order_by(Version.round))][1:]
    db.close()
    assert len(deployed) == len(simulated) == 2
    assert [v[:16] for v in deployed] == simulated
    summary = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert summary["version"] == deployed[-1]
