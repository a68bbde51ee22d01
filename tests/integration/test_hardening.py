"""The service under attack, on loopback: each test is one defect found by trying to break
a real coordinator (uvicorn, SQLite, blob store) as an adversarial user or a bad network
would. They guard the engine's restructuring: none may regress."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.loopback import free_port, serving, update_path
from zenfed.config import FederationConfig, parse_config
from zenfed.errors import ZenfedError
from zenfed.protocol.auth import Identity, sign_request
from zenfed.service.persistent import PersistentCoordinator
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Database
from zenfed.transport.http.client import CoordinatorClient

pytestmark = pytest.mark.integration

INITIAL = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
OP = {"authorization": "Bearer op-secret"}


def _cfg(**service: Any) -> FederationConfig:
    return parse_config(
        {
            "data": {"categories": ["ai"]},
            "sampling": {"fraction": 1.0, "min_participants": 2},
            "run": {"rounds": 2},
            "service": {"quorum": 1.0, "long_poll_s": 1.0, **service},
        }
    )


def _fed(tmp: Path, cfg: FederationConfig | None = None) -> PersistentCoordinator:
    return PersistentCoordinator(
        cfg or _cfg(), INITIAL, Database(f"sqlite:///{tmp / 'f.db'}"), BlobStore(tmp / "blobs")
    )


class Agent:
    """A participant speaking raw HTTP to the service (no training)."""

    def __init__(self, url: str, name: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)
        self.name = name
        self.me = Identity(Ed25519PrivateKey.generate())
        self.pid = ""

    def enroll_body(self, token: str, examples: int = 10) -> dict[str, Any]:
        return {
            "token": token,
            "name": self.name,
            "public_key": base64.b64encode(self.me.public_key).decode(),
            "capacity": {"memory_gb": 16},
            "data_profile": {"examples": examples},
        }

    def enroll(self, examples: int = 10, poll: bool = True) -> str:
        """Enroll, then (as an agent does) ask for work once."""
        token = invite(self.http)
        r = self.http.post("/v1/enroll", json=self.enroll_body(token, examples))
        assert r.status_code == 200, r.text
        self.pid = str(r.json()["participant"])
        if poll:
            assert self.get("/v1/task?wait=0").status_code == 204
        return self.pid

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path, headers=sign_request(self.me, "GET", path, b""))

    def task(self, timeout: float = 10.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = self.get("/v1/task?wait=0.5")
            if r.status_code == 200:
                return dict(r.json())
            assert r.status_code == 204, r.text
        raise AssertionError(f"{self.name}: no task within {timeout} s")

    def upload(self, task: dict[str, Any], body: bytes, **meta: Any) -> httpx.Response:
        path = update_path(task, **meta)
        headers = {
            **sign_request(self.me, "PUT", path, body),
            "content-type": "application/octet-stream",
        }
        return self.http.put(path, content=body, headers=headers)


def signed_upload_head(agent: Agent, task: dict[str, Any], body: bytes) -> bytes:
    """The raw HTTP head of a signed upload of ``body`` (to send the body as one likes)."""
    path = update_path(task)
    signed = "".join(f"{k}: {v}\r\n" for k, v in sign_request(agent.me, "PUT", path, body).items())
    return (
        f"PUT {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n"
        f"content-length: {len(body)}\r\n{signed}\r\n"
    ).encode()


def invite(http: httpx.Client, **body: Any) -> str:
    r = http.post("/v1/invites", json=body, headers=OP)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def payload(fed: PersistentCoordinator, value: float) -> bytes:
    codec = fed.engine.codec
    tensors = {k: torch.full_like(v, value) for k, v in INITIAL.items()}
    return codec.to_bytes(codec.encode(tensors, shared_seed=0))


def wait_for(check: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _status(http: httpx.Client) -> dict[str, Any]:
    return dict(http.get("/v1/status", headers=OP).json())


def _blob_count(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


# ---- 1. an all-zero update ---------------------------------------------------------------


def test_rounds_whose_result_equals_the_parent_still_commit_and_the_federation_finishes(
    tmp_path: Path,
) -> None:
    fed = _fed(tmp_path)
    with serving(fed) as url:
        agents = [Agent(url, n) for n in ("a", "b")]
        for a in agents:
            a.enroll()
        for r in range(2):
            for a in agents:
                t = a.task()
                assert t["round"] == r
                assert a.upload(t, payload(fed, 0.0)).json() == {"status": "accepted"}
            wait_for(lambda r=r: _status(agents[0].http)["round"] == r + 1)
        assert agents[0].get("/v1/task?wait=0").status_code == 410
        assert agents[0].http.get("/healthz").json()["status"] == "ok"
    versions = fed.engine.state.versions
    assert len({v.id for v in versions}) == 3  # three commits, one content
    assert len({v.content for v in versions}) == 1
    assert [v.parent for v in versions[1:]] == [versions[0].id, versions[1].id]
    again = _fed(tmp_path)  # a restart comes back finished, at the same version
    assert again.finished() and again.engine.version.id == versions[-1].id


def test_a_failing_tick_is_logged_retried_and_reported_by_healthz_and_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = _fed(tmp_path)
    real_tick = fed.tick
    broken = {"on": True}

    def tick() -> Any:
        if broken["on"]:
            raise RuntimeError("disk on fire")
        return real_tick()

    monkeypatch.setattr(fed, "tick", tick)
    with serving(fed) as url:
        http = httpx.Client(base_url=url)
        wait_for(lambda: http.get("/healthz").status_code == 503)
        health = http.get("/healthz").json()
        assert health["status"] == "degraded" and "disk on fire" in health["error"]
        assert "zenfed_tick_errors_total" in http.get("/metrics").text
        broken["on"] = False  # the ticker was not dead: it retries and recovers
        wait_for(lambda: http.get("/healthz").status_code == 200, timeout=15)


# ---- 2. a lost enrollment response; participants that never polled -------------------------


class DroppingProxy:
    """A TCP proxy that forwards everything but swallows the response to the first
    ``POST /v1/enroll`` (the coordinator commits it; the client never hears back)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self.dropped = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        assert self.ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._conn, "127.0.0.1", self.port)
        )
        self.ready.set()
        self.loop.run_until_complete(server.serve_forever())

    async def _conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
        first = await cr.read(65536)
        drop = first.startswith(b"POST /v1/enroll") and self.dropped == 0
        uw.write(first)

        async def up() -> None:
            while data := await cr.read(65536):
                uw.write(data)
                await uw.drain()

        pump = asyncio.ensure_future(up())
        if drop:
            await ur.read(1)  # the coordinator answered, so the enrollment committed
            self.dropped += 1
            cw.transport.abort()  # ...and the answer is lost
        else:
            while data := await ur.read(65536):
                cw.write(data)
                await cw.drain()
            cw.close()
        pump.cancel()
        uw.close()


def test_an_enrollment_whose_response_is_lost_is_retried_to_the_same_answer(
    tmp_path: Path,
) -> None:
    fed = _fed(tmp_path)
    with serving(fed) as url:
        proxy = DroppingProxy(int(url.rsplit(":", 1)[1]))
        me = Identity(Ed25519PrivateKey.generate())
        token = invite(httpx.Client(base_url=url))
        client = CoordinatorClient(f"http://127.0.0.1:{proxy.port}", me, backoff_s=0.05)
        pid, cfg = client.enroll(token, "clinic", {"memory_gb": 16}, {"examples": 10})
        assert proxy.dropped == 1 and pid == me.id and cfg["run"]["rounds"] == 2
        # the same token and key later still get the same answer; another key does not
        again, _ = client.enroll(token, "clinic", {"memory_gb": 16}, {"examples": 10})
        assert again == pid
        other = CoordinatorClient(url, Identity(Ed25519PrivateKey.generate()))
        with pytest.raises(ZenfedError, match="already used"):
            other.enroll(token, "thief", {"memory_gb": 16}, {"examples": 10})
        # and an agent that lost its enrollment record finds out who it is
        assert client.me()["participant"] == pid and client.me()["name"] == "clinic"
        client.close()


def test_participants_that_never_asked_for_a_task_are_not_sampled(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    with serving(fed) as url:
        agents = [Agent(url, n) for n in ("a", "b", "silent")]
        for a in agents:
            a.enroll(poll=a.name != "silent")
        tasks = [a.task() for a in agents[:2]]
        assert tasks[0]["round"] == 0
        assert _status(agents[0].http)["open_round"]["cohort"] == 2
        for a, t in zip(agents[:2], tasks, strict=True):
            assert a.upload(t, payload(fed, 1.0)).status_code == 200
        wait_for(lambda: _status(agents[0].http)["round"] == 1)  # nobody waited for 'silent'


# ---- 3. slow bodies; 4. oversized bodies ---------------------------------------------------


def _trickle(port: int, head: bytes, stop: threading.Event) -> None:
    """Send ``head``, then one byte a second until ``stop`` (a slowloris body)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head)
        while not stop.wait(1.0):
            try:
                s.sendall(b"x")
            except OSError:
                return


def test_slow_bodies_without_a_credential_do_not_delay_a_signed_upload(tmp_path: Path) -> None:
    fed = _fed(tmp_path, _cfg(body_timeout_s=2.0))
    stop = threading.Event()
    with serving(fed) as url:
        port = int(url.rsplit(":", 1)[1])
        agents = [Agent(url, n) for n in ("a", "b")]
        for a in agents:
            a.enroll()
        t_a, t_b = agents[0].task(), agents[1].task()
        head = (
            f"PUT /v1/rounds/0/update?base_version={t_a['version']} HTTP/1.1\r\n"
            "host: x\r\ncontent-type: application/octet-stream\r\ncontent-length: 100000\r\n"
            f"x-zenfed-participant: {agents[0].pid}\r\n\r\n"
        ).encode()
        for _ in range(6):
            threading.Thread(target=_trickle, args=(port, head, stop), daemon=True).start()
        time.sleep(0.5)
        t0 = time.monotonic()
        r = agents[0].upload(t_a, payload(fed, 1.0))
        assert r.status_code == 200 and time.monotonic() - t0 < 2.0
        # a signed upload whose body never arrives is cut off, and frees its slot
        body = payload(fed, 2.0)
        slow_head = signed_upload_head(agents[1], t_b, body)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(slow_head + body[:10])
            s.settimeout(10)
            t0 = time.monotonic()
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 5
        assert agents[1].upload(t_b, body).status_code == 200
    stop.set()


def _answer_after(port: int, head: bytes, body: bytes) -> bytes:
    """Send a request's head and the first part of its body, then read the answer (a
    service that reads the whole body before refusing it would never give one)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(10)
        s.sendall(head + body)
        answer = s.recv(4096)
        s.settimeout(1)
        try:
            while more := s.recv(4096):
                answer += more
        except (TimeoutError, ConnectionResetError):
            pass
        return answer


def test_oversized_bodies_are_refused_while_reading(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    with serving(fed) as url:
        port = int(url.rsplit(":", 1)[1])
        huge = 256 << 20  # 256 MiB declared: refused on the headers alone
        head = f"POST /v1/enroll HTTP/1.1\r\nhost: x\r\ncontent-length: {huge}\r\n\r\n"
        answer = _answer_after(port, head.encode(), b"{")
        assert answer.startswith(b"HTTP/1.1 413") and b"limit" in answer
        # chunked, no declared length: refused once 128 KiB of an endless body arrived
        chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
        head = "POST /v1/enroll HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        assert _answer_after(port, head.encode(), chunk * 2).startswith(b"HTTP/1.1 413")
        http = httpx.Client(base_url=url, timeout=20)
        big = b"{" + b" " * (2 << 20) + b"}"
        r = http.post("/v1/invites", content=big, headers={**OP, "content-type": "x"})
        assert r.status_code == 413
        a = Agent(url, "a")
        a.enroll()
        path = "/v1/rounds/0/secagg/advertise_keys"
        body = b"{" + b" " * (3 << 20) + b"}"
        headers = {**sign_request(a.me, "POST", path, body), "content-type": "application/json"}
        r = a.http.post(path, content=body, headers=headers)
        assert r.status_code == 413


# ---- 5. unbounded long-poll values ---------------------------------------------------------


def test_non_finite_or_negative_waits_are_refused_at_once(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    with serving(fed) as url:
        a = Agent(url, "a")
        a.enroll()
        a.http.timeout = httpx.Timeout(5.0)
        for bad in ("nan", "inf", "-1", "1e300"):
            for path in (f"/v1/task?wait={bad}", f"/v1/rounds/0/secagg/share_keys?wait={bad}"):
                r = a.get(path)
                assert r.status_code == 422 and "wait" in r.json()["error"], (path, r.text)


# ---- 6. unbounded metadata; 7. an inflated weight -----------------------------------------


def test_out_of_range_metadata_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    with serving(fed) as url:
        agents = [Agent(url, n) for n in ("a", "b")]
        for a in agents:
            a.enroll()
        t = agents[0].task()
        blobs = _blob_count(tmp_path / "blobs")
        body = payload(fed, 1.0)
        for field, value in (
            ("num_tokens", 2**63),
            ("examples_seen", 2**63),
            ("steps", -1),
            ("seconds", math.nan),
            ("seconds", math.inf),
            ("train_loss", math.nan),
            ("train_loss", 1e308),
            ("record_epsilon", -1.0),
        ):
            r = agents[0].upload(t, body, **{field: value})
            assert r.status_code == 422 and field in r.json()["error"], (field, r.text)
        assert _blob_count(tmp_path / "blobs") == blobs
        http = agents[0].http
        for bad in ({"ttl_s": 1e17}, {"ttl_s": -5}, {"label": "x" * 1000}):
            r = http.post("/v1/invites", json=bad, headers=OP)
            assert r.status_code == 422, (bad, r.text)
        raw = b'{"ttl_s": NaN}'
        json_type = {**OP, "content-type": "application/json"}
        r = http.post("/v1/invites", content=raw, headers=json_type)
        assert r.status_code == 422
        assert agents[0].upload(t, body).status_code == 200


def test_a_declared_weight_beyond_the_enrolled_examples_is_refused_and_audited(
    tmp_path: Path,
) -> None:
    fed = _fed(tmp_path)
    with serving(fed) as url:
        agents = [Agent(url, n) for n in ("a", "b")]
        for a in agents:
            a.enroll(examples=10)
        t = agents[0].task()
        r = agents[0].upload(t, payload(fed, 1.0), num_examples=10**12)
        assert r.status_code == 422 and "enrolled with 10" in r.json()["error"]
        assert agents[0].upload(t, payload(fed, 1.0), num_examples=10).status_code == 200
    rejects = [d for _, action, d in fed.audit_log() if action == "reject_update"]
    assert len(rejects) == 1 and "enrolled with 10" in rejects[0]["reason"]


def test_orphan_blobs_are_collected_at_start(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    kept = fed.version_blob(fed.engine.version.id)
    orphan = fed.blobs.put(b"an upload whose row was never committed")
    again = _fed(tmp_path)
    assert not again.blobs.has(orphan) and again.blobs.has(kept)


# ---- 8. an agent outlives its coordinator's restarts ---------------------------------------


def test_the_client_waits_for_an_absent_coordinator_with_capped_backoff(tmp_path: Path) -> None:
    port = free_port()
    lines: list[str] = []
    me = Identity(Ed25519PrivateKey.generate())
    client = CoordinatorClient(
        f"http://127.0.0.1:{port}", me, backoff_s=0.05, max_backoff_s=0.3, log=lines.append
    )
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(client.federation()))
    worker.start()
    time.sleep(3.0)  # many more attempts than any fixed retry count would allow
    assert worker.is_alive()
    with serving(_fed(tmp_path), port=port):
        worker.join(10)
    assert result["run"]["rounds"] == 2
    assert any("waiting for the coordinator" in line for line in lines)
    assert len(lines) < 30  # it says so, but does not flood the log
    client.close()


# ---- 9. revocation ----------------------------------------------------------------------


def test_the_operator_revokes_a_participant_over_the_network(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    with serving(fed) as url:
        a, b = Agent(url, "a"), Agent(url, "b")
        a.enroll()
        b.enroll()
        assert a.http.post("/v1/participants/a/revoke").status_code == 401  # not the operator
        r = a.http.post("/v1/participants/nobody/revoke", headers=OP)
        assert r.status_code == 404 and "nobody" in r.json()["error"]
        r = a.http.post("/v1/participants/a/revoke", headers=OP)
        assert r.status_code == 200 and r.json()["participant"] == a.pid
        r = a.get("/v1/task?wait=0")
        assert r.status_code == 401 and "revoked" in r.json()["error"]
        assert _status(a.http)["revoked"] == 1
    assert ("operator", "revoke") in [(actor, act) for actor, act, _ in fed.audit_log()]
    assert a.pid not in _fed(tmp_path).engine.participants  # and it stays revoked


def test_zenfed_revoke_on_the_command_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from zenfed.cli import app

    fed = _fed(tmp_path)
    with serving(fed) as url:
        a = Agent(url, "clinic")
        a.enroll()
        args = ["revoke", "clinic", "--url", url, "--operator-token", "op-secret"]
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 0 and f"revoked clinic ({a.pid[:12]})" in out.output
        assert a.get("/v1/task?wait=0").status_code == 401
        out = CliRunner().invoke(app, ["revoke", "nobody", *args[2:]])
        assert out.exit_code == 2 and "no participant named 'nobody'" in out.output


# ---- the operator's routes under the fuzzer are in test_api_fuzz; 10. is in test_deploy ---


def test_enroll_answers_json_errors_for_every_malformed_field(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    with serving(fed) as url:
        a = Agent(url, "a")
        token = invite(a.http)
        good = a.enroll_body(token)
        for bad in (
            {"name": ""},
            {"name": "n" * 500},
            {"token": "t" * 5000},
            {"data_profile": {"examples": 2**70}},
            {"capacity": {"memory_gb": json.loads("1e999")}},
        ):
            body = json.dumps({**good, **bad}).encode()  # Infinity as Python writes it
            r = a.http.post("/v1/enroll", content=body, headers={"content-type": "x"})
            assert 400 <= r.status_code < 500 and "error" in r.json(), (bad, r.text)
        assert a.http.post("/v1/enroll", json=good).status_code == 200


# ---- found in review: the edges of the fixes above ----------------------------------------


def test_an_upload_outside_its_round_or_cohort_is_refused_before_its_body(tmp_path: Path) -> None:
    fed = _fed(tmp_path, _cfg(body_timeout_s=60.0))
    with serving(fed) as url:
        port = int(url.rsplit(":", 1)[1])
        a, b = Agent(url, "a"), Agent(url, "b")
        a.enroll()
        b.enroll()
        late = Agent(url, "late")  # asks for work after the round opened: not in its cohort
        t_a = a.task()
        late.enroll()
        body = payload(fed, 1.0)
        for who, task, status in ((late, t_a, b"422"), (a, {**t_a, "round": 7}, b"409")):
            head = signed_upload_head(who, task, body)
            t0 = time.monotonic()
            answer = _answer_after(port, head, b"")  # no body at all: answered anyway
            assert answer.startswith(b"HTTP/1.1 " + status), answer
            assert time.monotonic() - t0 < 3
        # one participant holds at most one upload slot at a time
        head = signed_upload_head(a, t_a, body)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(head + body[:10])  # holds a slot, trickling
            time.sleep(0.5)
            r = a.upload(t_a, body)
            assert r.status_code == 409 and "in progress" in r.json()["error"]
        wait_for(lambda: a.upload(t_a, body).status_code == 200)


def test_revoking_a_cohort_member_lets_the_round_close_without_it(tmp_path: Path) -> None:
    fed = _fed(tmp_path, _cfg(round_timeout_s=600.0))
    with serving(fed) as url:
        a, b = Agent(url, "a"), Agent(url, "b")
        a.enroll()
        b.enroll()
        t_a, t_b = a.task(), b.task()
        assert a.http.post("/v1/participants/b/revoke", headers=OP).status_code == 200
        assert b.upload(t_b, payload(fed, 5.0)).status_code == 401
        assert a.upload(t_a, payload(fed, 1.0)).status_code == 200
        wait_for(lambda: _status(a.http)["round"] == 1, timeout=10)  # not 600 s
    assert fed.engine.version.participants == (a.pid,)


def test_names_that_could_be_taken_for_ids_or_paths_are_refused(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    with serving(fed) as url:
        a = Agent(url, "x")
        for name, status in (("ab" * 32, 403), ("clinic/evil", 422)):
            body = {**a.enroll_body(invite(a.http)), "name": name}
            r = a.http.post("/v1/enroll", json=body)
            assert r.status_code == status and "error" in r.json(), r.text


def test_every_refusal_is_json_even_from_the_framework(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    with serving(fed) as url:
        http = httpx.Client(base_url=url)
        for r in (
            http.get("/no/such/route"),
            http.delete("/v1/task"),
            http.post("/v1/enroll", content=b"[" * 30000, headers={"content-type": "x"}),
        ):
            assert 400 <= r.status_code < 500 and "error" in r.json(), r.text


def test_a_body_cut_short_by_a_disconnect_is_not_acted_on(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    with serving(fed) as url:
        a = Agent(url, "a")
        token = invite(a.http)
        body = json.dumps(a.enroll_body(token)).encode()
        head = (
            "POST /v1/enroll HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body) + 1000}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
            s.sendall(head + body)  # a valid enrollment, but 1000 bytes short; then gone
        time.sleep(0.5)
        assert fed.enrolled == {}
        assert a.http.post("/v1/enroll", json=a.enroll_body(token)).status_code == 200


def test_the_client_outlives_more_failures_than_a_float_backoff_can_count(
    tmp_path: Path,
) -> None:
    port = free_port()
    me = Identity(Ed25519PrivateKey.generate())
    client = CoordinatorClient(
        f"http://127.0.0.1:{port}", me, backoff_s=1e-6, max_backoff_s=0.0, log=lambda _: None
    )
    attempts = {"n": 0}
    send = client.http.request

    def counted(*args: Any, **kwargs: Any) -> httpx.Response:
        attempts["n"] += 1
        return send(*args, **kwargs)

    client.http.request = counted  # type: ignore[method-assign]
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(client.federation()))
    worker.start()
    wait_for(lambda: attempts["n"] > 1100, timeout=60)  # 2 ** 1024 overflows a float
    with serving(_fed(tmp_path), port=port):
        worker.join(10)
    assert result["run"]["rounds"] == 2
    client.close()


def test_two_services_cannot_share_a_state_folder(tmp_path: Path) -> None:
    from zenfed.deploy import lock_state_dir

    held = lock_state_dir(tmp_path)
    with pytest.raises(ZenfedError, match="another zenfed serve"):
        lock_state_dir(tmp_path)
    held.close()
    lock_state_dir(tmp_path).close()  # free again once the first one is gone


def test_a_state_folder_written_by_an_older_zenfed_is_refused_clearly(tmp_path: Path) -> None:
    import safetensors.torch
    from sqlalchemy import update as sql_update

    from zenfed.store.db import Version

    fed = _fed(tmp_path)
    old = safetensors.torch.save(
        {"params/a": torch.zeros(2, 3)}, metadata={"format": "zenfed-server-state/1"}
    )
    digest = fed.blobs.put(old)
    with fed.db.transaction() as s:
        s.execute(sql_update(Version).values(server_state_sha256=digest))
    with pytest.raises(ZenfedError, match="zenfed-server-state/1"):
        _fed(tmp_path)
