"""The port's messages as JSON (bytes in base64): what the HTTP app and client exchange.

    body = stage_message_to_json(keys)                         # the client posts
    msg = stage_message_from_json("advertise_keys", pid, body)  # the app decodes
    inp = stage_input_from_json("share_keys", answer)           # the client reads

Every decoder raises SecAggError (a 4xx for the app) naming what is malformed. Tasks
travel as ``Task.to_dict`` and updates' metadata as ``Update.metadata`` (in the signed
query string), their one plain forms.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from zenfed.privacy.secagg import SecAggError
from zenfed.protocol.messages import Task
from zenfed.protocol.port import NeighbourKeys, Shares, StageInput, StageMessage
from zenfed.protocol.secagg import AdvertiseKeys, UnmaskRequest


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


def stage_message_to_json(m: StageMessage) -> dict[str, Any]:
    """A stage message as the body the client posts."""
    if isinstance(m, AdvertiseKeys):
        return {"keys": keys_to_json(m)}
    return {"shares": blobs_to_json(m.shares)}


def stage_message_from_json(stage: str, participant: str, d: Any) -> StageMessage:
    """A posted stage message (the sender is the request's signer)."""
    if not isinstance(d, dict):
        raise SecAggError("the body is not a JSON object", fix="send a JSON object")
    if stage == "advertise_keys":
        return keys_from_json(participant, d.get("keys"))
    return Shares(blobs_from_json(d.get("shares"), "shares"))


def stage_input_to_json(inp: StageInput) -> dict[str, Any]:
    """What a stage needs, as the app answers it."""
    if isinstance(inp, NeighbourKeys):
        return {
            "keys": {v: keys_to_json(k) for v, k in inp.keys.items()},
            "identities": blobs_to_json(inp.identities),
        }
    if isinstance(inp, Shares):
        return {"inbox": blobs_to_json(inp.shares)}
    return {"round": inp.round, "survivors": inp.survivors, "dropped": inp.dropped}


def stage_input_from_json(stage: str, d: Any) -> StageInput:
    """What the client reads for ``stage`` (SecAggError if malformed)."""
    if not isinstance(d, dict):
        raise SecAggError(f"the answer for stage {stage} is not a JSON object", fix="refused")
    if stage == "share_keys":
        raw = d.get("keys")
        if not isinstance(raw, dict):
            raise SecAggError("the coordinator sent no neighbour keys", fix="refused")
        keys = {str(v): keys_from_json(str(v), k) for v, k in raw.items()}
        return NeighbourKeys(keys, blobs_from_json(d.get("identities"), "identities"))
    if stage == "masked_input":
        return Shares(blobs_from_json(d.get("inbox"), "inbox"))
    try:
        return UnmaskRequest(
            int(d["round"]),
            tuple(str(x) for x in d["survivors"]),
            tuple(str(x) for x in d["dropped"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SecAggError(f"malformed unmask request ({e})", fix="refused") from e


def task_from_json(d: Any) -> Task:
    """A task the app sent (SecAggError if malformed)."""
    if not isinstance(d, dict):
        raise SecAggError("the task is not a JSON object", fix="refused")
    try:
        return Task.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise SecAggError(f"malformed task ({e})", fix="refused") from e
