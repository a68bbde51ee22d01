"""The stage messages of secure aggregation as JSON (bytes in base64), for HTTP.

body = {"keys": keys_to_json(client.advertise())}
keys = keys_from_json(pid, body["keys"])          # SecAggError if malformed
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from zenfed.privacy.secagg.protocol import AdvertiseKeys, SecAggError, SecAggSetup, UnmaskRequest


def b64(data: bytes) -> str:
    """Base64 text of ``data``."""
    return base64.b64encode(data).decode()


def unb64(text: Any, what: str) -> bytes:
    """Bytes from base64 text (SecAggError naming ``what`` if it is not)."""
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError) as e:
        raise SecAggError(f"{what} is not base64", fix="send bytes as base64 text") from e


def keys_to_json(k: AdvertiseKeys) -> dict[str, str]:
    """An advertisement as JSON."""
    return {
        "participant": k.participant,
        "cipher_key": b64(k.cipher_key),
        "mask_key": b64(k.mask_key),
        "seed_commitment": b64(k.seed_commitment),
        "signature": b64(k.signature),
    }


def keys_from_json(participant: str, d: Any) -> AdvertiseKeys:
    """An advertisement from JSON; the sender is who the request is signed by."""
    if not isinstance(d, dict):
        raise SecAggError("keys must be a JSON object", fix="send keys_to_json(...)")
    return AdvertiseKeys(
        participant,
        unb64(d.get("cipher_key"), "cipher_key"),
        unb64(d.get("mask_key"), "mask_key"),
        unb64(d.get("seed_commitment"), "seed_commitment"),
        unb64(d.get("signature"), "signature"),
    )


def blobs_to_json(d: dict[str, bytes]) -> dict[str, str]:
    """{participant: bytes} as JSON."""
    return {k: b64(v) for k, v in d.items()}


def blobs_from_json(d: Any, what: str) -> dict[str, bytes]:
    """{participant: base64} from JSON."""
    if not isinstance(d, dict):
        raise SecAggError(f"{what} must be a JSON object", fix="map participant ids to base64")
    return {str(k): unb64(v, f"{what}[{k}]") for k, v in d.items()}


def setup_from_json(d: Any) -> SecAggSetup:
    """A task's secure-aggregation setup from JSON (SecAggError if malformed)."""
    try:
        return SecAggSetup(
            int(d["round"]),
            tuple(str(x) for x in d["neighbours"]),
            int(d["threshold"]),
            int(d["length"]),
            float(d["bound"]),
            float(d["scale"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SecAggError(f"malformed secure-aggregation setup ({e})", fix="refused") from e


def request_from_json(d: Any) -> UnmaskRequest:
    """The unmask request from JSON (SecAggError if malformed)."""
    try:
        return UnmaskRequest(
            int(d["round"]),
            tuple(str(x) for x in d["survivors"]),
            tuple(str(x) for x in d["dropped"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SecAggError(f"malformed unmask request ({e})", fix="refused") from e
