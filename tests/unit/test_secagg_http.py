"""Secure aggregation over the HTTP service (in process): the stage routes carry a full
round to the same result as plaintext, and refuse what is out of place."""

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import torch
from fastapi.testclient import TestClient

from tests.unit.test_http_app import INITIAL, _enroll, _get, _put, _task
from zenfed.config import parse_config
from zenfed.privacy.secagg import SecAggClient
from zenfed.protocol.auth import Identity, sign_request
from zenfed.service.persistent import PersistentCoordinator
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Database
from zenfed.transport.http import wire
from zenfed.transport.http.app import create_app


@pytest.fixture
def secure(tmp_path: Path) -> Any:
    cfg = parse_config(
        {
            "data": {"categories": ["ai"]},
            "sampling": {"min_participants": 3},
            "run": {"rounds": 2},
            "service": {"long_poll_s": 0.5},
            "secagg": {"enabled": True, "clip_norm": 100.0, "min_survivors": 3},
        }
    )
    fed = PersistentCoordinator(
        cfg, INITIAL, Database(f"sqlite:///{tmp_path / 'f.db'}"), BlobStore(tmp_path / "b")
    )
    with TestClient(create_app(fed, "op-secret", tick_s=0.05)) as client:
        yield client, fed


def _post(client: TestClient, me: Identity, path: str, body: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**sign_request(me, "POST", path, data), "content-type": "application/json"}
    return client.post(path, content=data, headers=headers)


def _wait(client: TestClient, me: Identity, path: str) -> dict[str, Any]:
    for _ in range(100):
        r = _get(client, me, path + "?wait=0.2")
        if r.status_code == 200:
            return dict(r.json())
        assert r.status_code == 204, r.text
    raise AssertionError(f"{path} never began")


def test_a_secure_round_over_http_commits_the_plaintext_mean(secure: Any) -> None:
    client, fed = secure
    people = [_enroll(client, n) for n in ("a", "b", "c")]
    tasks = {pid: _task(client, me) for pid, me in people}
    base = "/v1/rounds/0/secagg"
    me0 = people[0][1]
    # the neighbours' keys are not there before everyone advertised
    assert _get(client, me0, f"{base}/share_keys").status_code == 204
    clients = {}
    for pid, me in people:
        setup = wire.task_from_json(tasks[pid]).secagg
        clients[pid] = SecAggClient(pid, setup, me.key.sign)
        r = _post(
            client,
            me,
            f"{base}/advertise_keys",
            {"keys": wire.keys_to_json(clients[pid].advertise())},
        )
        assert r.status_code == 200, r.text
    # a task is not handed out again once its keys are advertised
    assert _get(client, me0, "/v1/task?wait=0").status_code == 204
    for pid, me in people:
        got = _wait(client, me, f"{base}/share_keys")
        keys = {v: wire.keys_from_json(v, k) for v, k in got["keys"].items()}
        ids = wire.blobs_from_json(got["identities"], "identities")
        shares = clients[pid].share_keys(keys, ids)
        r = _post(client, me, f"{base}/share_keys", {"shares": wire.blobs_to_json(shares)})
        assert r.status_code == 200, r.text
    values = {pid: float(i + 1) for i, (pid, _) in enumerate(people)}
    n = fed.engine.codec.flat_length()
    for pid, me in people:
        inbox = _wait(client, me, f"{base}/masked_input")["inbox"]
        clients[pid].receive_shares(wire.blobs_from_json(inbox, "inbox"))
        words = clients[pid].mask(np.full(n, values[pid]))
        r = _put(client, me, tasks[pid], safetensors.numpy.save({"masked": words}))
        assert r.status_code == 200, r.text
    for pid, me in people:
        req = wire.stage_input_from_json("unmask", _wait(client, me, f"{base}/unmask"))
        shares = clients[pid].unmask(req)
        r = _post(client, me, f"{base}/unmask", {"shares": wire.blobs_to_json(shares)})
        assert r.status_code == 200, r.text
    for _ in range(100):
        if fed.engine.state.round == 1:
            break
        time.sleep(0.05)
    assert fed.engine.state.round == 1 and len(fed.engine.state.versions) == 2
    for k, v in INITIAL.items():  # equal examples: the plain mean of 1, 2, 3 is 2
        torch.testing.assert_close(fed.engine.state.params[k], v + 2.0, atol=1e-5, rtol=0)


def test_stage_messages_out_of_place_are_refused(secure: Any) -> None:
    client, _ = secure
    people = [_enroll(client, n) for n in ("a", "b", "c")]
    tasks = {pid: _task(client, me) for pid, me in people}
    base = "/v1/rounds/0/secagg"
    (pid_a, me_a), (_, me_b), _ = people
    r = _post(client, me_a, f"{base}/unmask", {"shares": {}})
    assert r.status_code == 409 and "in advertise_keys" in r.json()["error"]
    forged = SecAggClient(pid_a, wire.task_from_json(tasks[pid_a]).secagg, me_b.key.sign)
    r = _post(
        client, me_a, f"{base}/advertise_keys", {"keys": wire.keys_to_json(forged.advertise())}
    )
    assert r.status_code == 409 and "not signed by its identity" in r.json()["error"]
    assert _post(client, me_a, f"{base}/advertise_keys", b"{nope").status_code == 409
    r = _post(client, me_a, f"{base}/advertise_keys", {"keys": {"cipher_key": "%%"}})
    assert r.status_code == 409 and "not base64" in r.json()["error"]
    assert _post(client, me_a, "/v1/rounds/5/secagg/advertise_keys", {}).status_code == 409
    assert _post(client, me_a, f"{base}/masked_input", {}).status_code == 409
    unsigned = client.post(f"{base}/advertise_keys", content=b"{}")
    assert unsigned.status_code == 401
    assert _get(client, me_a, f"{base}/nonsense").status_code == 409
