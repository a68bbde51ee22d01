"""Over real HTTP (a coordinator service and four agent processes on loopback, the tiny
model): a scaling attacker among three honest agents is flagged, quarantined after two
rounds and sampled no more, and the model still improves on the honest data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
from sqlalchemy import select

from tests.integration.test_deploy import (  # noqa: F401
    FED_TOML,
    _finish_with,
    _invite,
    _join,
    _port,
    _serve,
    _wait_healthy,
    procs,
)
from zenfed.config import load_config
from zenfed.sim.baselines import union_eval
from zenfed.sim.setup import build_world
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Audit, Database, Round, Update, Version

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOML = (
    FED_TOML.replace("min_participants = 3", "min_participants = 4").replace(
        "rounds = 2", "rounds = 4"
    )
    + '[server]\naggregator = "median"\n[detect]\nenabled = true\n'
)


def test_a_scaling_attacker_is_quarantined_and_the_model_still_improves(
    tmp_path: Path,
    procs: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    cfg = tmp_path / "federation.toml"
    cfg.write_text(TOML)
    port, state = _port(), tmp_path / "state"
    url = f"http://127.0.0.1:{port}"
    procs.append(_serve(cfg, state, port))
    _wait_healthy(url, procs[0])
    honest = [_join(url, state, tmp_path, c) for c in ("ai", "emotion", "literature")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [url, "mallory", str(tmp_path / "mallory.pem"), _invite(url, state), "trivia"]
    attacker = subprocess.Popen(
        [sys.executable, "-m", "tests.scaling_agent", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    procs.extend([*honest, attacker])
    _finish_with(honest, 4)
    _finish_with([attacker], 2)  # two rounds in, then never sampled again

    db = Database(f"sqlite:///{state / 'zenfed.db'}")
    with db.transaction() as s:
        actions = [(a.actor, a.action, a.detail) for a in s.scalars(select(Audit))]
        rounds = s.scalars(select(Round).order_by(Round.number)).all()
        versions = s.scalars(select(Version).order_by(Version.round)).all()
        n_updates = len(s.scalars(select(Update)).all())
    quarantined = [d for _, a, d in actions if a == "quarantine"]
    assert len(quarantined) == 1 and "norm" in quarantined[0]["why"]
    mallory = quarantined[0]["participant"]
    assert [a for who, a, _ in actions if who == mallory].count("flagged") == 2
    assert [len(r.tasks) for r in rounds] == [4, 4, 3, 3] and n_updates == 14
    assert all(mallory not in [t["participant"] for t in r.tasks] for r in rounds[2:])
    world = build_world(load_config(cfg))
    final = dict(safetensors.torch.load(BlobStore(state / "blobs").get(versions[-1].blob_sha256)))
    before, after = union_eval(world, world.initial)[0].loss, union_eval(world, final)[0].loss
    assert after < before - 0.02, (before, after)
    db.close()
