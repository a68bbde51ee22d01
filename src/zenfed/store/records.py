"""One byte format for a saved state: named tensors plus JSON-able fields, as safetensors.

    data = pack_record("zenfed-coordinator-state/2", {"params/a": t}, {"round": 3})
    tensors, fields = unpack_record(data, "zenfed-coordinator-state/2")

The fields travel as one JSON string in the safetensors metadata, so a record is a file
any safetensors reader opens (the tensors never go through pickle). ``kind`` names the
record's format and version; reading a record of another kind is refused with a clear
error instead of a wrong state.
"""

from __future__ import annotations

import json
from typing import Any

import safetensors.torch
import torch

from zenfed.errors import ZenfedError
from zenfed.tensors import Tensors, safetensors_metadata


def pack_record(kind: str, tensors: Tensors, fields: dict[str, Any]) -> bytes:
    """``tensors`` and ``fields`` (JSON-able) as safetensors bytes labelled ``kind``."""
    meta = {"format": kind, "fields": json.dumps(fields, allow_nan=True)}
    return safetensors.torch.save({k: t.contiguous() for k, t in tensors.items()}, metadata=meta)


def unpack_record(data: bytes, kind: str) -> tuple[Tensors, dict[str, Any]]:
    """The tensors and fields of a record made by :func:`pack_record` with ``kind``."""
    try:
        meta = safetensors_metadata(data)
        tensors = dict(safetensors.torch.load(data))
    except Exception as e:  # safetensors raises its own errors
        raise ZenfedError(f"not a saved {kind} ({e})", fix="restore it from a backup") from e
    if meta.get("format") != kind:
        raise ZenfedError(
            f"a saved state is '{meta.get('format', 'unknown')}', not '{kind}'",
            fix="it was written by another zenfed version; finish that run with it",
        )
    fields = json.loads(meta["fields"])
    if not isinstance(fields, dict):
        raise ZenfedError(f"a saved {kind} has no fields", fix="restore it from a backup")
    return tensors, fields


def bytes_tensor(data: bytes) -> torch.Tensor:
    """``data`` as a uint8 tensor (to carry bytes inside a record or a checkpoint)."""
    return (
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if data
        else torch.zeros(0, dtype=torch.uint8)
    )


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The bytes :func:`bytes_tensor` packed."""
    return bytes(t.numpy().tobytes())
