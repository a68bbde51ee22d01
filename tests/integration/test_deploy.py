"""The networked deployment as an operator runs it: a coordinator service and three
participant processes on loopback, a SIGKILL of the coordinator, TLS; the store's tests
run on SQLite and on PostgreSQL (``db_url``)."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import safetensors.torch
from sqlalchemy import select

from tests.databases import serve_args
from zenfed.config import load_config
from zenfed.participant.state import ParticipantState
from zenfed.sim.baselines import union_eval
from zenfed.sim.setup import build_world
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Audit, Database, Participant, Round, Update, Version

pytestmark = pytest.mark.integration

FED_TOML = """
[model]
name = "tiny-llama"
[data]
corpus = "chatterbot"
categories = ["ai", "emotion", "literature"]
max_seq_len = 48
[train]
lr = 1e-2
local_steps = 2
batch_size = 4
[sampling]
min_participants = 3
[run]
rounds = 2
[service]
round_timeout_s = 300
long_poll_s = 2
"""
CATEGORIES = ("ai", "emotion", "literature")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _zenfed(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "zenfed.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _wait_healthy(url: str, proc: subprocess.Popen[str], verify: Any = True) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise AssertionError(f"coordinator exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{url}/healthz", verify=verify, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("coordinator did not come up")


@pytest.fixture
def fed_toml(tmp_path: Path) -> Path:
    p = tmp_path / "federation.toml"
    p.write_text(FED_TOML)
    return p


def _serve(
    cfg: Path, state: Path, port: int, *tls: str, db: str = "sqlite"
) -> subprocess.Popen[str]:
    args = ("--config", str(cfg), "--state", str(state), "--port", str(port), *serve_args(db))
    return _zenfed("serve", *args, *tls)


def _invite(url: str, state: Path, verify: Any = True) -> str:
    token = (state / "operator-token").read_text().strip()
    r = httpx.post(
        f"{url}/v1/invites", json={}, headers={"authorization": f"Bearer {token}"}, verify=verify
    )
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def _join(url: str, state: Path, tmp: Path, cat: str, *extra: str) -> subprocess.Popen[str]:
    return _zenfed(
        "join",
        "--url",
        url,
        "--name",
        cat,
        "--identity",
        str(tmp / f"{cat}.pem"),
        "--token",
        _invite(url, state, _ctx(extra[1]) if extra else True),
        "--chatterbot",
        cat,
        *extra,
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def _finish(agents: list[subprocess.Popen[str]], timeout: float = 600) -> None:
    _finish_with(agents, 2, timeout)


def _finish_with(agents: list[subprocess.Popen[str]], updates: int, timeout: float = 600) -> None:
    """Wait for every agent to end well, each having had ``updates`` updates accepted."""
    end = time.monotonic() + timeout
    for a in agents:
        out, _ = a.communicate(timeout=max(1.0, end - time.monotonic()))
        assert a.returncode == 0, out
        assert f"federation finished; {updates} updates accepted" in out, out


def _check_store(state: Path, cfg_path: Path, url: str) -> None:
    db = Database(url)
    blobs = BlobStore(state / "blobs")
    with db.transaction() as s:
        people = s.scalars(select(Participant)).all()
        ups = s.scalars(select(Update)).all()
        versions = s.scalars(select(Version).order_by(Version.round)).all()
        rounds = s.scalars(select(Round).where(Round.status == "closed")).all()
        actions = [a.action for a in s.scalars(select(Audit).order_by(Audit.id))]
    # enrollment declared capacity (with a measured throughput) and data, never data
    assert len(people) == 3 and all(p.capacity["train_tokens_per_s"] > 0 for p in people)
    assert all(p.data_profile["examples"] > 0 and p.data_profile["tokens"] > 0 for p in people)
    # every accepted update is in the database and the blob store, once per round
    assert len(ups) == 6 and len({(u.round_id, u.participant_id) for u in ups}) == 6
    assert all(blobs.has(u.payload_sha256) for u in ups)
    assert [v.round for v in versions] == [-1, 0, 1] and len(rounds) == 2
    assert all(blobs.has(v.blob_sha256) for v in versions)
    # downloads served from the blob store are counted as the round's traffic (in memory:
    # a round a restart interrupted misses those made before the crash)
    assert versions[1].metrics["bytes_down"] > 0
    # the coordinator's whole state (CoordinatorState.to_bytes) is kept for the newest
    # version; an older one's is superseded (it would grow with the rounds squared)
    latest = versions[-1].server_state_sha256
    assert latest is not None and blobs.has(latest)
    assert all(v.server_state_sha256 is None for v in versions[:-1])
    for action, n in (
        ("invite", 3),
        ("enroll", 3),
        ("open_round", 2),
        ("upload", 6),
        ("commit_version", 3),
    ):
        assert actions.count(action) == n, (action, actions)
    # the global adapter improved on the participants' held-out data
    world = build_world(load_config(cfg_path))
    final = dict(safetensors.torch.load(blobs.get(versions[-1].blob_sha256)))
    before, after = union_eval(world, world.initial)[0].loss, union_eval(world, final)[0].loss
    assert after < before - 0.02, (before, after)
    db.close()


class Running:
    """A service on ``port`` with its ``state`` folder, and its three joined agents."""

    def __init__(self, cfg: Path, tmp: Path, procs: list[subprocess.Popen[str]], db: str):
        self.cfg, self.db, self.procs = cfg, db, procs
        self.port, self.state = _port(), tmp / "state"
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = self.serve()
        self.agents = [_join(self.url, self.state, tmp, c) for c in CATEGORIES]
        procs.extend(self.agents)

    def serve(self) -> subprocess.Popen[str]:
        """Start (or restart) the service and wait until it answers."""
        self.server = _serve(self.cfg, self.state, self.port, db=self.db)
        self.procs.append(self.server)
        _wait_healthy(self.url, self.server)
        return self.server


def _federation(
    cfg: Path, tmp_path: Path, procs: list[subprocess.Popen[str]], db: str = "sqlite"
) -> Path:
    """Serve ``cfg`` on database ``db`` (default: SQLite in the state folder), join the
    three participants, wait until they finish; the state dir."""
    run = Running(cfg, tmp_path, procs, db)
    _finish(run.agents)
    return run.state


def test_a_coordinator_and_three_participants_train_two_rounds(
    tmp_path: Path, fed_toml: Path, procs: list[subprocess.Popen[str]], db_url: str
) -> None:
    _check_store(_federation(fed_toml, tmp_path, procs, db_url), fed_toml, db_url)


def test_coordinator_sigkill_mid_round_then_restart_finishes_without_duplicates(
    tmp_path: Path, fed_toml: Path, procs: list[subprocess.Popen[str]], db_url: str
) -> None:
    run = Running(fed_toml, tmp_path, procs, db_url)
    server, agents, state = run.server, run.agents, run.state
    db = Database(db_url)
    held = agents[-1]  # paused once its first update is stored, so round 1 cannot finish
    _await_uploads(db, 3, CATEGORIES[-1])
    held.send_signal(signal.SIGSTOP)
    _await_uploads(db, 4)  # round 1 (the second) has some uploads: kill the coordinator
    server.send_signal(signal.SIGKILL)
    server.wait()
    held.send_signal(signal.SIGCONT)
    with db.transaction() as s:  # the kill really came mid-round
        open_round = s.scalar(select(Round).where(Round.status == "open"))
        assert open_round is not None and open_round.number == 1
        stored = s.scalars(select(Update).where(Update.round_id == open_round.id)).all()
        assert 1 <= len(stored) < 3
    db.close()
    time.sleep(1.0)  # the agents see connection errors and back off meanwhile
    run.serve()
    _finish(agents)
    _check_store(state, fed_toml, db_url)


def _await_uploads(db: Database, n: int, sender: str | None = None) -> None:
    """Wait until ``n`` updates are stored (and one of them is ``sender``'s, if named)."""
    for _ in range(6000):
        with db.transaction() as s:
            ups = s.scalars(select(Update)).all()
            names = {s.get(Participant, u.participant_id).name for u in ups}  # type: ignore[union-attr]
        if len(ups) >= n and (sender is None or sender in names):
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} updates after 300 s")


def test_the_service_runs_over_tls_with_compressed_uplink_and_downlink(
    tmp_path: Path, fed_toml: Path, procs: list[subprocess.Popen[str]]
) -> None:
    fed_toml.write_text(
        FED_TOML
        + '[[compress.pipeline]]\ncodec = "sign"\n[[compress.pipeline]]\ncodec = "zstd"\n'
        + '[[compress.downlink]]\ncodec = "quantize"\nbits = 8\n'
    )
    cert, key = _self_signed(tmp_path)
    port, state = _port(), tmp_path / "state"
    url = f"https://127.0.0.1:{port}"
    server = _serve(fed_toml, state, port, "--tls-cert", str(cert), "--tls-key", str(key))
    procs.append(server)
    _wait_healthy(url, server, verify=_ctx(str(cert)))
    with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused
        httpx.get(f"{url}/healthz")
    agents = [_join(url, state, tmp_path, c, "--cafile", str(cert)) for c in CATEGORIES]
    procs.extend(agents)
    _finish(agents)
    db = Database(f"sqlite:///{state / 'zenfed.db'}")
    with db.transaction() as s:
        sizes = [u.size for u in s.scalars(select(Update))]
        versions = s.scalars(select(Version).order_by(Version.round)).all()
    dense = BlobStore(state / "blobs").size(versions[0].blob_sha256)
    assert len(sizes) == 6 and max(sizes) * 10 < dense  # 1-bit signs, not float32
    assert all(v.broadcast_sha256 for v in versions[1:])  # each version was broadcast
    db.close()
    for c in CATEGORIES:  # each agent kept its error-feedback residual on disk, private
        state_file = tmp_path / f"{c}.state.safetensors"
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
        kept = ParticipantState.from_bytes(state_file.read_bytes())
        assert kept.rounds_trained == 2 and kept.extra["error_feedback"]


def _ctx(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_secure_aggregation_over_http_the_coordinator_stores_only_masked_updates(
    tmp_path: Path, procs: list[subprocess.Popen[str]], db_url: str
) -> None:
    import numpy as np
    import safetensors.numpy
    from scipy import stats

    cfg = tmp_path / "secure.toml"
    cfg.write_text(FED_TOML + "[secagg]\nenabled = true\nclip_norm = 10.0\nmin_survivors = 3\n")
    state = _federation(cfg, tmp_path, procs, db_url)
    _check_store(state, cfg, db_url)  # 2 rounds, 6 updates stored, and the model improved
    db = Database(db_url)
    blobs = BlobStore(state / "blobs")
    with db.transaction() as s:
        ups = s.scalars(select(Update)).all()
        actions = [a.action for a in s.scalars(select(Audit))]
    for u in ups:  # what the coordinator holds of each update: masked words, uniform
        words = safetensors.numpy.load(blobs.get(u.payload_sha256))["masked"]
        assert words.dtype == np.uint32
        counts = np.bincount((words >> 24).astype(np.int64), minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-4
    for stage in ("advertise_keys", "share_keys", "unmask"):
        assert actions.count(f"secagg_{stage}") == 6, (stage, actions)
    db.close()


def test_sigterm_stops_the_service_within_seconds_while_a_long_poll_waits(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    import base64
    import contextlib
    import threading

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from zenfed.protocol.auth import Identity, sign_request

    cfg = tmp_path / "slow-poll.toml"
    cfg.write_text(FED_TOML.replace("long_poll_s = 2", "long_poll_s = 60"))
    port, state = _port(), tmp_path / "state"
    url = f"http://127.0.0.1:{port}"
    server = _serve(cfg, state, port)
    procs.append(server)
    _wait_healthy(url, server)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for f in ("zenfed.db", "zenfed.db-wal", "zenfed.db-shm", "operator-token"):
        assert stat.S_IMODE((state / f).stat().st_mode) == 0o600, f
    me = Identity(Ed25519PrivateKey.generate())
    body = {
        "token": _invite(url, state),
        "name": "a",
        "public_key": base64.b64encode(me.public_key).decode(),
        "capacity": {"memory_gb": 8},
        "data_profile": {"examples": 5},
    }
    assert httpx.post(f"{url}/v1/enroll", json=body).status_code == 200
    path = "/v1/task?wait=60"  # one participant never makes a round: this poll waits 60 s

    def poll() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{url}{path}", headers=sign_request(me, "GET", path, b""), timeout=90)

    threading.Thread(target=poll, daemon=True).start()
    time.sleep(1.0)
    t0 = time.monotonic()
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    assert time.monotonic() - t0 < 6.0
