"""Ed25519 identities and signed requests: what verifies, and every way it must not."""

import stat
import time
from pathlib import Path

import pytest

from zenfed.errors import ZenfedError
from zenfed.protocol.auth import (
    H_NONCE,
    H_SIG,
    H_TS,
    AuthError,
    Identity,
    sign_request,
    verify_request,
)

NOW = 1_800_000_000.0


def test_identity_file_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "id" / "key.pem"
    me = Identity.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).public_key == me.public_key and len(me.id) == 64
    with pytest.raises(ZenfedError, match="already exists"):
        Identity.create(path)  # never overwrites a key
    path.chmod(0o644)
    with pytest.raises(ZenfedError, match="readable by others"):
        Identity.load(path)
    with pytest.raises(ZenfedError, match="does not exist"):
        Identity.load(tmp_path / "nope.pem")


@pytest.fixture(scope="module")
def me() -> Identity:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Identity(Ed25519PrivateKey.generate())


def test_a_signed_request_verifies_once_per_nonce(me: Identity) -> None:
    h = sign_request(me, "put", "/v1/rounds/3/update", b"payload", now=NOW)
    nonce = verify_request(me.public_key, "PUT", "/v1/rounds/3/update", b"payload", h, NOW + 5)
    assert nonce == h[H_NONCE]
    assert sign_request(me, "PUT", "/x", b"", now=NOW)[H_NONCE] != nonce  # fresh nonces


@pytest.mark.parametrize(
    ("method", "path", "body", "now", "edit", "message"),
    [
        ("PUT", "/v1/rounds/3/update", b"payloaX", NOW, {}, "body does not match"),
        ("PUT", "/v1/rounds/4/update", b"payload", NOW, {}, "signature does not verify"),
        ("GET", "/v1/rounds/3/update", b"payload", NOW, {}, "signature does not verify"),
        ("PUT", "/v1/rounds/3/update", b"payload", NOW + 301, {}, "from the server's clock"),
        ("PUT", "/v1/rounds/3/update", b"payload", NOW, {H_TS: "abc"}, "timestamp"),
        ("PUT", "/v1/rounds/3/update", b"payload", NOW, {H_SIG: "AAAA"}, "does not verify"),
        ("PUT", "/v1/rounds/3/update", b"payload", NOW, {H_SIG: "!!"}, "does not verify"),
        ("PUT", "/v1/rounds/3/update", b"payload", NOW, {H_NONCE: "0" * 32}, "does not verify"),
        ("PUT", "/v1/rounds/3/update", b"payload", NOW, {H_NONCE: "zz"}, "nonce"),
    ],
)
def test_tampered_stale_or_malformed_requests_are_refused(
    me: Identity,
    method: str,
    path: str,
    body: bytes,
    now: float,
    edit: dict[str, str],
    message: str,
) -> None:
    h = {**sign_request(me, "PUT", "/v1/rounds/3/update", b"payload", now=NOW), **edit}
    with pytest.raises(AuthError, match=message):
        verify_request(me.public_key, method, path, body, h, now)


def test_another_key_and_missing_headers_are_refused(me: Identity) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = Identity(Ed25519PrivateKey.generate())
    h = sign_request(other, "GET", "/v1/task", b"", now=time.time())
    with pytest.raises(AuthError, match="does not verify"):
        verify_request(me.public_key, "GET", "/v1/task", b"", h, time.time())
    del h[H_SIG]
    with pytest.raises(AuthError, match="lacks the x-zenfed-signature header"):
        verify_request(other.public_key, "GET", "/v1/task", b"", h, time.time())
