"""The downlink: a participant gets the global version as a full adapter, or as the
compressed differences since the version it already holds.

    payload = coordinator.download(version, held=participant_held_version)
    tensors = receive(payload, held, codec, expected=version)   # hash-checked

With a downlink pipeline (``compress.downlink``) the coordinator publishes, after each
round, one broadcast: the new server parameters minus the previously published version,
encoded. The published version (what every participant holds and trains from, and what
the version hash names) advances by the *decoded* broadcast, so its error stays on the
server and is carried into the next difference (error feedback on the server side, as in
double-compression schemes such as Tang et al. 2019, "DoubleSqueeze"). A participant that
held the previous version applies the broadcasts it missed, in order, and gets the new
version bit for bit; it checks that against the version's content hash, and the version
id against its parent, round and content (``protocol.version_id``).

Payload: safetensors of uint8 tensors with JSON metadata; ``kind`` is ``full`` (the
adapter's tensors themselves) or ``diff`` (``m0``, ``m1``, ... the broadcast payloads, with
their codec seeds); both name the version (id, parent, round, content hash).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import safetensors.torch
import torch

from zenfed.compress.base import Shape
from zenfed.compress.pipeline import Pipeline
from zenfed.config import CompressConfig
from zenfed.errors import ZenfedError
from zenfed.protocol.messages import (
    GlobalVersion,
    Tensors,
    safetensors_metadata,
    tensors_hash,
    version_id,
)


@dataclass(frozen=True)
class Broadcast:
    """One published step: version ``parent`` + decode(``payload``) = version ``version``."""

    version: str
    parent: str
    seed: int
    payload: bytes


def _version_meta(version: GlobalVersion) -> dict[str, str]:
    return {
        "format": "zenfed-version/1",
        "version": version.id,
        "parent": version.parent or "",
        "round": str(version.round),
        "content": version.content,
    }


def full_payload(tensors: Tensors, version: GlobalVersion) -> bytes:
    """The whole adapter as safetensors, labelled with its version."""
    return safetensors.torch.save(tensors, metadata={**_version_meta(version), "kind": "full"})


def diff_payload(chain: list[Broadcast], version: GlobalVersion) -> bytes:
    """The broadcasts that take a participant from ``chain[0].parent`` to ``version`` (the
    last one's)."""
    meta = {
        **_version_meta(version),
        "kind": "diff",
        "from": chain[0].parent,
        "seeds": json.dumps([b.seed for b in chain]),
    }
    parts = {
        f"m{i}": torch.frombuffer(bytearray(b.payload), dtype=torch.uint8)
        for i, b in enumerate(chain)
    }
    return safetensors.torch.save(parts, metadata=meta)


def apply_broadcast(public: Tensors, codec: Pipeline, payload: bytes, seed: int) -> Tensors:
    """``public`` advanced by one decoded broadcast (the same arithmetic on both sides)."""
    step = codec.unpack(payload, shared_seed=seed)
    return {k: public[k] + step[k] for k in public}


def downlink_pipeline(cfg: CompressConfig, shapes: dict[str, Shape]) -> Pipeline | None:
    """The pipeline of ``compress.downlink`` for these tensors, or None (full versions)."""
    if not cfg.downlink:
        return None
    return Pipeline(cfg.model_copy(update={"pipeline": cfg.downlink}), shapes)


def receive(payload: bytes, held: Tensors | None, codec: Pipeline | None, expected: str) -> Tensors:
    """The tensors of version ``expected`` from a download: their hash is checked against
    the content the payload names, and ``expected`` against that content's commit id."""
    tensors, meta = _load(payload)
    try:
        parent, server_round, content = meta["parent"] or None, int(meta["round"]), meta["content"]
    except (KeyError, ValueError) as e:
        raise ZenfedError("download does not name its version", fix="download again") from e
    if version_id(parent, server_round, content) != expected:
        raise ZenfedError(
            f"downloaded payload is not version {expected[:12]}", fix="download the version again"
        )
    if meta.get("kind") == "diff":
        if held is None or codec is None:
            raise ZenfedError(
                "a difference arrived but no version or downlink codec is held",
                fix="download the version in full",
            )
        seeds = json.loads(meta["seeds"])
        out = held
        for i, seed in enumerate(seeds):
            out = apply_broadcast(out, codec, tensors[f"m{i}"].numpy().tobytes(), seed)
    else:
        out = tensors
    if tensors_hash(out) != content:
        raise ZenfedError(
            f"downloaded version {expected[:12]} does not match its content hash",
            fix="download the version in full",
        )
    return out


def _load(payload: bytes) -> tuple[Tensors, dict[str, str]]:
    try:
        tensors = dict(safetensors.torch.load(payload))
        meta = safetensors_metadata(payload)
    except Exception as e:
        raise ZenfedError(f"download is not a valid version payload ({e})", fix="retry") from e
    return tensors, meta
