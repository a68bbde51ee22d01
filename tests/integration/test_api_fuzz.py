"""Schemathesis against the coordinator's OpenAPI: generated requests never get a 5xx.

Every operation of the service's schema gets property-based requests (valid and invalid
bodies, queries, paths and headers), once anonymously and once with the operator's
token (so the operator routes' bodies are fuzzed too, not only refused at the door);
each answer must be below 500 and a refusal must carry a JSON error.
"""

import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, given, settings

from zenfed.config import parse_config
from zenfed.service.persistent import PersistentCoordinator
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Database
from zenfed.transport.http.app import create_app

pytestmark = pytest.mark.integration

_TMP = tempfile.TemporaryDirectory(prefix="zenfed-fuzz-")
_DIR = Path(_TMP.name)
_FED = PersistentCoordinator(
    parse_config({"data": {"categories": ["ai"]}, "service": {"long_poll_s": 0.0}}),
    {"a": torch.zeros(2, 3)},
    Database(f"sqlite:///{_DIR / 'f.db'}"),
    BlobStore(_DIR / "blobs"),
)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", create_app(_FED, "op-secret"))
OPERATIONS = [op.ok() for op in SCHEMA.get_all_operations()]


AUTH = {"anonymous": {}, "operator": {"authorization": "Bearer op-secret"}}


@pytest.mark.parametrize("auth", sorted(AUTH))
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: f"{op.method} {op.path}")
def test_no_request_gets_a_server_error(operation: Any, auth: str) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call(headers=AUTH[auth])
        assert response.status_code < 500, (case.method, case.path, response.text[:300])
        if response.status_code >= 400:
            assert "error" in response.json(), response.text[:300]

    check()
