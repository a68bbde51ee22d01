"""Shamir secret sharing of 32-byte secrets, on PyCryptodome's ``Shamir`` (GF(2^128)).

    shares = split(secret, threshold=3, count=5)    # [(1, 32 bytes), ..., (5, 32 bytes)]
    secret = combine(shares[:3], threshold=3)

PyCryptodome shares 16-byte secrets; a 32-byte secret (an X25519 private key, a mask
seed) is shared as its two halves with the same indices, each share 32 bytes.
"""

from __future__ import annotations

from Crypto.Protocol.SecretSharing import Shamir

from zenfed.errors import ZenfedError

SECRET_BYTES = 32


class ShamirError(ZenfedError):
    """Too few shares, or shares that do not fit together."""


def split(secret: bytes, threshold: int, count: int) -> list[tuple[int, bytes]]:
    """``count`` shares of ``secret``, any ``threshold`` of which reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"secret of {len(secret)} bytes", fix=f"share {SECRET_BYTES} bytes")
    if not 1 <= threshold <= count:
        raise ShamirError(
            f"threshold {threshold} for {count} shares", fix="1 <= threshold <= count"
        )
    lo = Shamir.split(threshold, count, secret[:16])
    hi = Shamir.split(threshold, count, secret[16:])
    return [(i, a + b) for (i, a), (j, b) in zip(lo, hi, strict=True) if i == j]


def combine(shares: list[tuple[int, bytes]], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares with distinct indices (the first
    ``threshold`` are used)."""
    distinct = {i: s for i, s in shares}
    if len(distinct) < threshold:
        raise ShamirError(
            f"{len(distinct)} distinct shares, {threshold} needed",
            fix="collect shares from more survivors",
        )
    use = sorted(distinct.items())[:threshold]
    if any(len(s) != SECRET_BYTES for _, s in use):
        raise ShamirError("a share has the wrong length", fix=f"shares are {SECRET_BYTES} bytes")
    lo = Shamir.combine([(i, s[:16]) for i, s in use])
    hi = Shamir.combine([(i, s[16:]) for i, s in use])
    return bytes(lo + hi)
