"""Participant identities (Ed25519) and signed requests.

    me = Identity.create("~/.zenfed/identity.pem")      # 0600, refuses to overwrite
    headers = sign_request(me, "PUT", "/v1/rounds/3/update", body)
    verify_request(public_key, "PUT", "/v1/rounds/3/update", body, headers, now=time.time())

A request is signed over a canonical string: a domain label, the method, the path (with
its query), the sha256 of the body, a timestamp and a random nonce. The coordinator checks
the signature with the key the participant enrolled, refuses timestamps more than
``MAX_SKEW_S`` away from its clock, and remembers nonces so a captured request cannot be
replayed. A participant's id is the sha256 of its raw public key. Keys and signatures come
from ``cryptography``; nothing here is hand-rolled.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from zenfed.errors import ZenfedError

MAX_SKEW_S = 300
DOMAIN = "zenfed-request-v1"
H_ID, H_TS, H_NONCE, H_BODY, H_SIG = (
    "x-zenfed-participant",
    "x-zenfed-timestamp",
    "x-zenfed-nonce",
    "x-zenfed-body-sha256",
    "x-zenfed-signature",
)


class AuthError(ZenfedError):
    """A request whose signature, timestamp or nonce does not hold up."""


def participant_id(public_key: bytes) -> str:
    """A participant's id: the sha256 hex digest of its 32-byte raw public key."""
    return hashlib.sha256(public_key).hexdigest()


@dataclass(frozen=True)
class Identity:
    """A participant's signing key."""

    key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key (what enrollment sends)."""
        return self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def id(self) -> str:
        """The participant id derived from the public key."""
        return participant_id(self.public_key)

    @classmethod
    def create(cls, path: str | Path) -> Identity:
        """A new key, written to ``path`` readable by its owner only (0600)."""
        p = Path(path).expanduser()
        p.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as e:
            raise ZenfedError(
                f"identity file '{p}' already exists", fix="load it, or choose another path"
            ) from e
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return cls(key)

    @classmethod
    def load(cls, path: str | Path) -> Identity:
        """The key in ``path``; refused if others may read the file."""
        p = Path(path).expanduser()
        try:
            mode = p.stat().st_mode
            pem = p.read_bytes()
        except FileNotFoundError as e:
            raise ZenfedError(f"identity file '{p}' does not exist", fix="run zenfed join") from e
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ZenfedError(
                f"identity file '{p}' is readable by others (mode {stat.S_IMODE(mode):o})",
                fix=f"chmod 600 {p}",
            )
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ZenfedError(f"'{p}' does not hold an Ed25519 key", fix="create a new identity")
        return cls(key)


def _canonical(method: str, path: str, body_sha256: str, ts: str, nonce: str) -> bytes:
    return "\n".join((DOMAIN, method.upper(), path, body_sha256, ts, nonce)).encode()


def sign_request(
    identity: Identity, method: str, path: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """The headers that authenticate one request (a fresh nonce each call)."""
    import time

    ts = str(int(now if now is not None else time.time()))
    nonce = secrets.token_hex(16)
    body_sha = hashlib.sha256(body).hexdigest()
    sig = identity.key.sign(_canonical(method, path, body_sha, ts, nonce))
    return {
        H_ID: identity.id,
        H_TS: ts,
        H_NONCE: nonce,
        H_BODY: body_sha,
        H_SIG: base64.b64encode(sig).decode(),
    }


def verify_request(
    public_key: bytes,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    now: float,
) -> str:
    """Check one request's signature, body hash and timestamp; return its nonce.

    The caller must also refuse a nonce it has seen before from this participant.
    """
    nonce = verify_signature(public_key, method, path, headers, now)
    check_body(body, headers)
    return nonce


def verify_signature(
    public_key: bytes, method: str, path: str, headers: dict[str, str], now: float
) -> str:
    """Check the signature over the request line and the *declared* body hash, and the
    timestamp, before any of the body is read; return the nonce. The body must then be
    checked against its declared hash with :func:`check_body`."""
    try:
        ts, nonce, body_sha, sig = (headers[h] for h in (H_TS, H_NONCE, H_BODY, H_SIG))
    except KeyError as e:
        raise AuthError(f"request lacks the {e.args[0]} header", fix="sign every request") from e
    if not ts.isdigit() or abs(now - int(ts)) > MAX_SKEW_S:
        raise AuthError(
            f"request timestamp {ts[:20]} is more than {MAX_SKEW_S} s from the server's clock",
            fix="check the participant's clock",
        )
    if len(nonce) != 32 or any(c not in "0123456789abcdef" for c in nonce):
        raise AuthError("request nonce is not 16 random bytes in hex", fix="sign every request")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            base64.b64decode(sig, validate=True), _canonical(method, path, body_sha, ts, nonce)
        )
    except (InvalidSignature, ValueError) as e:
        raise AuthError(
            "request signature does not verify", fix="sign with the enrolled key"
        ) from e
    return nonce


def check_body(body: bytes, headers: dict[str, str]) -> None:
    """AuthError unless ``body`` is what the signed ``x-zenfed-body-sha256`` header says."""
    check_digest(hashlib.sha256(body).hexdigest(), headers.get(H_BODY))


def check_digest(digest: str, declared: str | None) -> None:
    """AuthError unless a body whose sha256 is ``digest`` is what the signed hash header
    declared (``declared``)."""
    if digest != declared:
        raise AuthError("request body does not match its signed hash", fix="resend it")


def request_proof(method: str, path: str, headers: Mapping[str, str]) -> dict[str, str]:
    """What shows a request was its sender's: the signed fields and the signature, as
    kept with a stored upload (``check_proof`` verifies it later, without a clock)."""
    lower = {k.lower(): v for k, v in headers.items()}
    return {
        "method": method,
        "path": path,
        "ts": lower.get(H_TS, ""),
        "nonce": lower.get(H_NONCE, ""),
        "body_sha256": lower.get(H_BODY, ""),
        "signature": lower.get(H_SIG, ""),
    }


def check_proof(public_key: bytes, proof: Mapping[str, str], body_sha256: str) -> bool:
    """Whether ``proof`` is a valid signature by ``public_key`` over a request whose body
    hashed to ``body_sha256``."""
    if proof.get("body_sha256") != body_sha256:
        return False
    message = _canonical(proof["method"], proof["path"], body_sha256, proof["ts"], proof["nonce"])
    try:
        sig = base64.b64decode(proof["signature"], validate=True)
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig, message)
    except (InvalidSignature, ValueError, KeyError):
        return False
    return True
