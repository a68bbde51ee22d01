"""The primitives of secure aggregation, all from ``cryptography``.

    sk, pk = keypair()
    key = agree(sk, peer_pk, b"zenfed/secagg/mask")    # X25519 then HKDF-SHA256 -> 32 bytes
    blob = seal(key, plaintext, aad); plaintext = open_sealed(key, blob, aad)  # AES-256-GCM
    words = prg(key, n)                                 # AES-256-CTR keystream as uint32

The PRG expands a 32-byte key into n 32-bit words: the keystream of AES-256 in counter
mode over zero bytes (AES-NI makes it a few GB/s).
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from zenfed.errors import ZenfedError


class CryptoError(ZenfedError):
    """A ciphertext that does not authenticate, or a malformed key."""


def keypair() -> tuple[X25519PrivateKey, bytes]:
    """A fresh X25519 key pair: (private key, 32-byte raw public key)."""
    sk = X25519PrivateKey.generate()
    return sk, public_bytes(sk)


def public_bytes(sk: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of ``sk``."""
    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_from_seed(seed: bytes) -> X25519PrivateKey:
    """The X25519 private key derived from a seed (HKDF-SHA256 to 32 bytes): sharing the
    16-byte seed shares the key."""
    return X25519PrivateKey.from_private_bytes(derive(seed, b"zenfed/secagg/x25519"))


def agree(sk: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
    """A 32-byte key shared with the owner of ``peer_public``: X25519, then HKDF-SHA256."""
    try:
        shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as e:
        raise CryptoError(f"bad X25519 public key ({e})", fix="advertise a valid key") from e
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def derive(secret: bytes, info: bytes) -> bytes:
    """A 32-byte key from a seed (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: a random 12-byte nonce, then the ciphertext and tag."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Decrypt and authenticate what ``seal`` made (CryptoError if tampered)."""
    try:
        return AESGCM(key).decrypt(blob[:12], blob[12:], aad)
    except (InvalidTag, ValueError) as e:
        raise CryptoError(
            "an encrypted share does not authenticate", fix="the share was altered or misrouted"
        ) from e


def prg(key: bytes, n: int) -> np.ndarray:
    """``n`` pseudo-random uint32 words from a 32-byte key (AES-256-CTR keystream)."""
    enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
    return np.frombuffer(enc.update(bytes(4 * n)), dtype=np.uint32)
