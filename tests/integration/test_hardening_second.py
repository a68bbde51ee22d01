"""The second hardening pass (issue 26), on loopback: slow request heads and the open-file
limit (a real `zenfed serve` process under a lowered limit), connections answered before
their body, refusals of the protocol layer, one enrollment's weight, version rows that
name exactly what was combined, and secrets kept out of the process list and the logs."""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from sqlalchemy import select
from typer.testing import CliRunner

from tests.conftest import tiny_config
from tests.integration.test_deploy import FED_TOML, _port
from tests.integration.test_hardening import INITIAL, OP, Agent, _status, invite, payload, wait_for
from tests.loopback import serving
from zenfed.cli import app
from zenfed.config import FederationConfig, load_config, parse_config
from zenfed.protocol.auth import check_proof, sign_request
from zenfed.service.persistent import PersistentCoordinator
from zenfed.service.recompute import check_manifests, recompute_versions
from zenfed.sim import run_simulation
from zenfed.sim.runner import load_run
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Database, Version
from zenfed.store.db import Update as UpdateRow

pytestmark = pytest.mark.integration

HUGE = 2**31 - 1


def _cfg(minimum: int = 3, rounds: int = 1, **sections: Any) -> FederationConfig:
    raw: dict[str, Any] = {
        "data": {"categories": ["ai"]},
        "sampling": {"fraction": 1.0, "min_participants": minimum},
        "run": {"rounds": rounds},
        "service": {"quorum": 1.0, "long_poll_s": 1.0},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw)


def _fed(tmp: Path, cfg: FederationConfig) -> PersistentCoordinator:
    return PersistentCoordinator(
        cfg, INITIAL, Database(f"sqlite:///{tmp / 'f.db'}"), BlobStore(tmp / "blobs")
    )


# ---- 1. slow heads against a coordinator at a low open-file limit --------------------------

FILES = 256  # the coordinator's open-file limit, soft and hard
SLOW = 300  # slow-head connections, more than the limit, from 30 addresses (10 each)


def _serve_limited(tmp: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    cfg, port = tmp / "federation.toml", _port()
    cfg.write_text(FED_TOML)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    args = ["serve", "--config", str(cfg), "--state", str(tmp / "state"), "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "zenfed.cli", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=lower,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("coordinator did not come up")


def _enroll(agent: Agent, operator: str) -> None:
    """Enroll ``agent`` with an invite from a coordinator whose operator token is
    ``operator``, then ask for work once (as an agent does)."""
    r = agent.http.post("/v1/invites", json={}, headers={"authorization": f"Bearer {operator}"})
    assert r.status_code == 200, r.text
    r = agent.http.post("/v1/enroll", json=agent.enroll_body(r.json()["token"]))
    assert r.status_code == 200, r.text
    agent.pid = str(r.json()["participant"])
    assert agent.get("/v1/task?wait=0").status_code == 204


class SlowHead:
    """A connection from ``source`` that sends a request head one header line a second;
    records when the coordinator cut it off and what it answered."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((source, 0))
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        self.started = time.monotonic()
        self.closed_after: float | None = None
        self.answer = b""

    def run(self, until: float) -> None:
        try:
            self.sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            while time.monotonic() < until:
                self.sock.settimeout(1.0)
                try:
                    got = self.sock.recv(4096)
                except TimeoutError:
                    self.sock.sendall(b"x-slow: 1\r\n")
                    continue
                self.answer += got
                if not got:
                    break
        except OSError:
            pass
        self.closed_after = time.monotonic() - self.started
        self.sock.close()


def test_slow_heads_cannot_exhaust_the_files_of_a_coordinator_at_a_low_limit(
    tmp_path: Path,
) -> None:
    log = tmp_path / "serve.log"
    proc, url = _serve_limited(tmp_path, log)
    try:
        port = int(url.rsplit(":", 1)[1])
        operator = (tmp_path / "state" / "operator-token").read_text().strip()
        honest = Agent(url, "honest")
        _enroll(honest, operator)
        slow = [SlowHead(port, f"127.0.0.{2 + i // 10}") for i in range(SLOW)]
        until = time.monotonic() + 14
        threads = [threading.Thread(target=s.run, args=(until,), daemon=True) for s in slow]
        for t in threads:
            t.start()
        failures, served = [], 0
        late = Agent(url, "late")  # enrolls while the slow heads hold on
        while time.monotonic() < until - 2:
            try:
                health = httpx.get(f"{url}/healthz", timeout=5)
                task = honest.get("/v1/task?wait=0")
                served += 1
                if health.status_code != 200 or task.status_code != 204:
                    failures.append((health.status_code, task.status_code))
                if served == 5:
                    _enroll(late, operator)
            except httpx.HTTPError as e:
                failures.append(repr(e))
            time.sleep(0.3)
        for t in threads:
            t.join(20)
        assert not failures, failures[:5]
        assert served >= 20 and late.pid
        # every slow head was cut off within the head deadline (5 s) and some slack, or at
        # once when the coordinator was at its limit; none was left to hold a descriptor
        assert all(s.closed_after is not None and s.closed_after < 9 for s in slow)
        answers = {s.answer.split(b"\r\n", 1)[0] for s in slow}
        assert answers <= {b"HTTP/1.1 408 Request Timeout", b"HTTP/1.1 503 Service Unavailable"}
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(20)
    text = log.read_text()
    assert "open_file_limit_low" in text and f'"open_file_limit": {FILES}' in text


def test_connections_are_capped_per_address_and_answered_ones_are_not_held(
    tmp_path: Path,
) -> None:
    fed = _fed(tmp_path, _cfg(2, service={"head_timeout_s": 2.0, "max_connections_per_client": 4}))
    with serving(fed) as url:
        port = int(url.rsplit(":", 1)[1])
        # a fifth connection from one address is refused at once, in JSON
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        fifth = socket.create_connection(("127.0.0.1", port))
        fifth.settimeout(5)
        refused = fifth.recv(4096)
        assert refused.startswith(b"HTTP/1.1 503")
        assert "max_connections_per_client" in json.loads(refused.split(b"\r\n\r\n", 1)[1])["fix"]
        # ...and the idle four, which never sent a byte, are closed at the head deadline
        for s in held:
            s.settimeout(5)
            assert s.recv(4096).startswith(b"HTTP/1.1 408")
            s.close()
        fifth.close()
        # an upload refused before its body (no signature) does not keep its connection
        # open for a client that goes on trickling the body
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(5)
            s.sendall(
                b"PUT /v1/rounds/0/update HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/octet-stream\r\ncontent-length: 64\r\n\r\n"
            )
            assert s.recv(4096).startswith(b"HTTP/1.1 401")
            t0 = time.monotonic()
            with pytest.raises(OSError):  # reset or broken pipe: the coordinator closed it
                for _ in range(40):  # 40 of the 64 bytes, one at a time
                    s.sendall(b"x")
                    time.sleep(0.1)
                    if not s.recv(4096):
                        raise ConnectionResetError("closed")
            assert time.monotonic() - t0 < 3


def test_refusals_of_the_protocol_layer_are_json(tmp_path: Path) -> None:
    fed = _fed(tmp_path, _cfg(2))
    with serving(fed) as url:
        port = int(url.rsplit(":", 1)[1])
        for request, status in (
            (b"GET /" + b"a" * (70 << 10) + b" HTTP/1.1\r\nhost: x\r\n\r\n", b"431"),
            (b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + b"x-big: y\r\n" * 8000 + b"\r\n", b"431"),
            (b"\x16\x03\x01 not http at all\r\n\r\n", b"400"),
        ):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.settimeout(5)
                s.sendall(request)
                answer = b""
                while chunk := s.recv(4096):
                    answer += chunk
            head, body = answer.split(b"\r\n\r\n", 1)
            assert head.split(b" ")[1] == status and b"application/json" in head
            refusal = json.loads(body)
            assert refusal["error"] and refusal["fix"]


# ---- 2. one enrollment's weight ------------------------------------------------------------


def test_one_enrollment_cannot_claim_most_of_a_round_over_http(tmp_path: Path) -> None:
    fed = _fed(tmp_path, _cfg(3))
    with serving(fed) as url:
        agents = {n: Agent(url, n) for n in ("big", "a", "b")}
        agents["big"].enroll(examples=HUGE, poll=False)
        agents["a"].enroll(poll=False)
        agents["b"].enroll(poll=False)
        for a in agents.values():  # all three are ready before the round opens
            assert a.get("/v1/task?wait=0").status_code in (200, 204)
        for name, a in agents.items():
            t = a.task()
            weight, value = (HUGE, -1.0) if name == "big" else (10, 1.0)
            assert a.upload(t, payload(fed, value), num_examples=weight).status_code == 200
        wait_for(lambda: _status(agents["a"].http)["round"] == 1)
    v = fed.engine.version
    # (20 x -1 + 10 x 1 + 10 x 1) / 40: the declaration buys half the round, not all of it
    torch.testing.assert_close(fed.engine.state.params["a"], torch.zeros(2, 3))
    shares = dict(zip(v.participants, v.weights, strict=True))
    assert shares[agents["big"].pid] == 20.0 == sum(shares.values()) / 2


def test_enrollment_beyond_the_operators_expectation_is_refused(tmp_path: Path) -> None:
    fed = _fed(tmp_path, _cfg(2, service={"max_examples": 5000}))
    with serving(fed) as url:
        greedy = Agent(url, "greedy")
        token = invite(greedy.http)
        r = greedy.http.post("/v1/enroll", json=greedy.enroll_body(token, examples=HUGE))
        assert r.status_code == 403
        assert "service.max_examples" in r.json()["error"]
        assert greedy.enroll(examples=5000)  # at the bound: welcome


def test_a_simulation_caps_the_largest_holders_share_of_every_round(tmp_path: Path) -> None:
    # tech_support holds 1,050 conversations, ai and emotion 153 between them (87 %)
    cfg = tiny_config(
        data={"categories": ["tech_support", "ai", "emotion"]},
        sampling={"fraction": 1.0, "min_participants": 3},
        train={"local_steps": 1},
        run={"rounds": 2},
    )
    run_simulation(cfg, tmp_path, fresh=True)
    state, _, _ = load_run(tmp_path)
    for v in state.versions[1:]:
        shares = dict(zip(v.participants, v.weights, strict=True))
        assert len(shares) == 3 and max(shares.values()) == pytest.approx(
            0.5 * sum(shares.values())
        )


# ---- 3. version rows name exactly what was combined ----------------------------------------


DETECTION_TOML = """
[data]
categories = ["ai"]
[sampling]
fraction = 1.0
min_participants = 5
[run]
rounds = 2
[service]
long_poll_s = 1.0
[server]
aggregator = "median"
[detect]
enabled = true
"""


def test_every_version_of_a_detection_run_recomputes_from_its_row(tmp_path: Path) -> None:
    (tmp_path / "f.toml").write_text(DETECTION_TOML)
    cfg = load_config(tmp_path / "f.toml")
    fed = _fed(tmp_path, cfg)
    examples = {"a": 10, "b": 20, "c": 30, "d": 40, "mallory": 50}
    with serving(fed) as url:
        agents = {n: Agent(url, n) for n in examples}
        for n, a in agents.items():
            a.enroll(examples=examples[n], poll=False)
        for a in agents.values():
            assert a.get("/v1/task?wait=0").status_code in (200, 204)
        for r in range(2):
            for i, (n, a) in enumerate(agents.items()):
                t = a.task()
                value = 5.0 if n == "mallory" else 0.1 + 0.01 * i + 0.05 * r  # 50x the norm
                assert a.upload(t, payload(fed, value), num_examples=examples[n]).status_code == 200
            wait_for(lambda r=r: _status(agents["a"].http)["round"] == r + 1)
    mallory = agents["mallory"].pid
    with fed.db.transaction() as s:
        rows = s.scalars(select(Version).where(Version.round >= 0)).all()
        assert len(rows) == 2
        for row in rows:  # the flagged update is not in the row, nor are its examples
            assert mallory not in row.participants and row.num_examples == 100
            assert row.weights == [float(examples[n]) for n in _by_pid(agents, row.participants)]
    checks = recompute_versions(cfg, fed.db, fed.blobs)
    assert [c.status for c in checks] == ["ok", "ok"] and max(c.max_error for c in checks) < 1e-6
    assert check_manifests(fed.db) == []  # the version log agrees with the rows
    keys = {a.pid: a.me.public_key for a in agents.values()}
    with fed.db.transaction() as s:  # each stored upload carries its sender's signature
        for u in s.scalars(select(UpdateRow)).all():
            assert check_proof(keys[u.participant_id], u.signature, u.payload_sha256)
    cli = ["recompute", "--config", str(tmp_path / "f.toml"), "--state", str(tmp_path)]
    cli += ["--db", f"sqlite:///{tmp_path / 'f.db'}"]
    out = CliRunner().invoke(app, cli)
    assert out.exit_code == 0 and out.output.count(" ok ") == 2, out.output
    # a row that claims the flagged update went in does not recompute
    with fed.db.transaction() as s:
        row = s.scalars(select(Version).where(Version.round == 0)).one()
        row.participants, row.weights = [*row.participants, mallory], [*row.weights, 50.0]
    bad = recompute_versions(cfg, fed.db, fed.blobs)
    assert bad[0].status == "mismatch" and bad[0].max_error > 1e-3
    out = CliRunner().invoke(app, cli)
    assert out.exit_code == 1 and "mismatch" in out.output


def _by_pid(agents: dict[str, Agent], pids: list[str]) -> list[str]:
    names = {a.pid: n for n, a in agents.items()}
    return [names[p] for p in pids]


# ---- 4. and 5. secrets: the process list, the access log, file modes; revoked keys -----------


def test_an_upstream_token_on_the_command_line_is_warned_of_and_a_file_is_offered(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text(FED_TOML)
    runner = CliRunner()
    out = runner.invoke(
        app,
        ["serve", "--config", str(cfg), "--state", str(tmp_path / "s"), "--upstream-token", "T"],
    )
    assert out.exit_code == 2  # no --upstream: refused, after the warning
    assert "process list" in out.output and "--upstream-token-file" in out.output
    (tmp_path / "invite").write_text("T\n")
    both = ["--upstream-token", "T", "--upstream-token-file", str(tmp_path / "invite")]
    out = runner.invoke(app, ["serve", "--config", str(cfg), "--state", str(tmp_path / "s"), *both])
    assert out.exit_code == 2 and "not both" in out.output


def test_the_access_log_never_shows_a_secret_query_parameter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fed = _fed(tmp_path, _cfg(2))
    with serving(fed) as url:
        access = logging.getLogger("uvicorn.access")  # as uvicorn configured it
        access.setLevel(logging.INFO)
        access.addHandler(caplog.handler)
        try:
            httpx.get(f"{url}/healthz?token=s3cret-Invite&round=2&operator_token=op-secret")
        finally:
            access.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert lines and "round=2" in lines[-1] and "token=[redacted]" in lines[-1]
    assert not any("s3cret" in line or "op-secret" in line for line in lines)


def test_a_revoked_key_is_not_told_to_enroll_again(tmp_path: Path) -> None:
    fed = _fed(tmp_path, _cfg(2))
    with serving(fed) as url:
        a = Agent(url, "a")
        a.enroll()
        assert a.http.post(f"/v1/participants/{a.name}/revoke", headers=OP).status_code == 200
        r = a.get("/v1/task?wait=0")
        assert r.status_code == 401 and "revoked" in r.json()["error"]
        assert "enroll again" not in r.json()["fix"] and "operator" in r.json()["fix"]
        path = "/v1/task?wait=0"
        stranger = Agent(url, "stranger")
        r = stranger.http.get(path, headers=sign_request(stranger.me, "GET", path, b""))
        assert r.status_code == 401 and "unknown" in r.json()["error"]


def test_an_agents_enrollment_record_is_its_owners_only(tmp_path: Path) -> None:
    from zenfed.deploy import _json

    record = tmp_path / "a.enrollment.json"
    record.write_text("{}")
    record.chmod(0o644)  # as an earlier zenfed left it
    _json(record, {"participant": "x"})
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    fresh = tmp_path / "b.enrollment.json"
    _json(fresh, {"participant": "y"})
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
