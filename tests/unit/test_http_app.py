"""The coordinator service over HTTP (FastAPI app, in process): every route and refusal."""

import base64
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from tests.loopback import update_path
from zenfed.config import parse_config
from zenfed.protocol.auth import Identity, sign_request
from zenfed.service.persistent import PersistentCoordinator
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Database
from zenfed.transport.http.app import create_app

INITIAL = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
OP = {"authorization": "Bearer op-secret"}


@pytest.fixture
def env(tmp_path: Path) -> Any:
    cfg = parse_config(
        {
            "data": {"categories": ["ai"]},
            "sampling": {"min_participants": 2},
            "run": {"rounds": 2},
            "service": {"long_poll_s": 1.0, "min_memory_gb": 4.0},
        }
    )
    fed = PersistentCoordinator(
        cfg, INITIAL, Database(f"sqlite:///{tmp_path / 'f.db'}"), BlobStore(tmp_path / "b")
    )
    with TestClient(create_app(fed, "op-secret", tick_s=0.05)) as client:
        yield client, fed


def _enroll(client: TestClient, name: str) -> tuple[str, Identity]:
    token = client.post("/v1/invites", json={"label": name}, headers=OP).json()["token"]
    me = Identity(Ed25519PrivateKey.generate())
    r = client.post(
        "/v1/enroll",
        json={
            "token": token,
            "name": name,
            "public_key": base64.b64encode(me.public_key).decode(),
            "capacity": {"memory_gb": 16},
            "data_profile": {"examples": 10},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["config"]["run"]["rounds"] == 2
    _get(client, me, "/v1/task?wait=0")  # an agent asks for work: from now on it is sampled
    return r.json()["participant"], me


def _get(client: TestClient, me: Identity, path: str) -> Any:
    return client.get(path, headers=sign_request(me, "GET", path, b""))


def _task(client: TestClient, me: Identity) -> dict[str, Any]:
    for _ in range(50):
        r = _get(client, me, "/v1/task?wait=0.5")
        if r.status_code == 200:
            return dict(r.json())
    raise AssertionError("no task")


def _put(client: TestClient, me: Identity, task: dict[str, Any], body: bytes, **meta: Any) -> Any:
    path = update_path(task, **meta)
    headers = {**sign_request(me, "PUT", path, body), "content-type": "application/octet-stream"}
    return client.put(path, content=body, headers=headers)


def _payload(fed: PersistentCoordinator, value: float) -> bytes:
    codec = fed.engine.codec
    return codec.to_bytes(
        codec.encode({k: torch.full_like(v, value) for k, v in INITIAL.items()}, shared_seed=0)
    )


def test_health_metrics_and_operator_routes(env: Any) -> None:
    client, _ = env
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.post("/v1/invites", json={"label": "x"})
    assert r.status_code == 401 and "operator credential" in r.json()["error"]
    assert client.get("/v1/status", headers={"authorization": "Bearer nope"}).status_code == 401
    assert client.get("/v1/status", headers=OP).json()["round"] == 0
    assert "zenfed_rejections_total" in client.get("/metrics").text


def test_enrollment_refusals_are_4xx_with_a_reason(env: Any) -> None:
    client, _ = env
    token = client.post("/v1/invites", json={}, headers=OP).json()["token"]
    base = {"token": token, "name": "n", "capacity": {"memory_gb": 1}, "data_profile": {}}
    r = client.post("/v1/enroll", json={**base, "public_key": "%%%"})
    assert r.status_code == 403 and "not base64" in r.json()["error"]
    key = base64.b64encode(b"k" * 32).decode()
    r = client.post("/v1/enroll", json={**base, "public_key": key})
    assert r.status_code == 403 and "below the federation's 4.0 GB" in r.json()["error"]
    r = client.post(
        "/v1/enroll", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "invalid request" in r.json()["error"]
    r = client.post("/v1/enroll", json={**base, "public_key": key, "extra": 1})
    assert r.status_code == 422


def test_a_round_over_http_with_every_upload_refusal(env: Any) -> None:
    client, fed = env
    a, me_a = _enroll(client, "a")
    _, me_b = _enroll(client, "b")
    task_a, task_b = _task(client, me_a), _task(client, me_b)
    assert task_a["participant"] == a and task_a["round"] == 0

    # download in full, with an ETag, and resume from an offset with HTTP Range
    path = f"/v1/versions/{task_a['version']}"
    full = _get(client, me_a, path)
    assert full.status_code == 200 and full.headers["etag"].strip('"') == fed.version_blob(
        task_a["version"]
    )
    part = client.get(path, headers={**sign_request(me_a, "GET", path, b""), "range": "bytes=100-"})
    assert part.status_code == 206 and part.content == full.content[100:]
    assert client.get(path).status_code == 401  # unsigned
    replay = sign_request(me_a, "GET", path, b"")
    assert client.get(path, headers=replay).status_code == 200
    r = client.get(path, headers=replay)
    assert r.status_code == 401 and "replay" in r.json()["error"]

    good = _payload(fed, 1.0)
    nan = _payload(fed, math.nan)
    kept = set(fed.blobs.digests())
    assert _put(client, me_a, task_a, nan).status_code == 422
    assert set(fed.blobs.digests()) == kept  # a refused update's payload is not kept
    r = _put(client, me_a, task_a, good, num_examples="many")
    assert r.status_code == 422 and "num_examples" in r.json()["error"]
    r = _put(client, me_a, task_a, good[:-7])
    assert r.status_code == 422 and "not valid safetensors" in r.json()["error"]
    r = _put(client, me_a, task_a, b"x" * (fed.engine.codec.max_payload_bytes() + 1))
    assert r.status_code == 413
    path_q = f"/v1/rounds/0/update?base_version={task_a['version']}"
    r = client.put(path_q, content=good, headers={**sign_request(me_a, "PUT", path_q, good)})
    assert r.status_code == 415
    # a forged body under a valid signature, and a replay of a request
    q, before = update_path(task_a), set(fed.blobs.digests())
    h = {**sign_request(me_a, "PUT", q, good), "content-type": "application/octet-stream"}
    r = client.put(q, content=good + b"!", headers=h)
    assert r.status_code == 401 and "signed hash" in r.json()["error"]
    assert set(fed.blobs.digests()) == before  # nothing of the forged body was stored
    assert _put(client, me_a, task_a, good).json() == {"status": "accepted"}
    assert _put(client, me_a, task_a, good).json() == {"status": "duplicate"}
    r = _put(client, me_b, {**task_b, "round": 5}, good)
    assert r.status_code == 409 and "not open" in r.json()["error"]
    assert _put(client, me_b, task_b, _payload(fed, 3.0)).status_code == 200

    for _ in range(100):  # the ticker closes the round at quorum
        if client.get("/v1/status", headers=OP).json()["round"] == 1:
            break
        time.sleep(0.05)
    status = client.get("/v1/status", headers=OP).json()
    assert status["round"] == 1 and status["version"] != task_a["version"]
    torch.testing.assert_close(fed.engine.state.params["a"], torch.full((2, 3), 2.0))
    metrics = client.get("/metrics").text
    assert "zenfed_rounds_closed_total 1.0" in metrics
    assert 'zenfed_rejections_total{reason="update"}' in metrics
    actions = [act for _, act, _ in fed.audit_log()]
    assert actions.count("upload") == 2 and "commit_version" in actions
