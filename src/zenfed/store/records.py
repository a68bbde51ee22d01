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


def split_tensors(obj: Any, tensors: Tensors, prefix: str = "t") -> Any:
    """``obj`` (nested dicts, lists, tuples, tensors and JSON scalars) as JSON-able data,
    its tensors moved into ``tensors`` and named in their place; dict keys keep their
    type (an optimizer's state is keyed by int). The inverse is :func:`join_tensors`."""
    if isinstance(obj, torch.Tensor):
        name = f"{prefix}{len(tensors)}"
        tensors[name] = obj.detach().cpu()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        items = [[k, split_tensors(v, tensors, prefix)] for k, v in obj.items()]
        return {"__dict__": items}
    if isinstance(obj, list | tuple):
        return [split_tensors(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise ZenfedError(f"cannot save a {type(obj).__name__}", fix="keep tensors and plain values")


def join_tensors(obj: Any, tensors: Tensors) -> Any:
    """The structure :func:`split_tensors` took apart (tuples come back as lists)."""
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: join_tensors(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


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
