"""Named tensors, their content hash and safetensors metadata: the ground floor that every
layer may use (it imports nothing of zenfed).

    h = tensors_hash({"a": torch.zeros(2)})      # sha256 over names, dtypes, shapes, bytes
    meta = safetensors_metadata(payload)          # the __metadata__ of safetensors bytes
"""

from __future__ import annotations

import hashlib
import json

import torch

Tensors = dict[str, torch.Tensor]


def tensors_hash(tensors: Tensors) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: a version's content."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def safetensors_metadata(payload: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (safetensors reads it only from files).

    Format: an 8-byte little-endian header length, then the JSON header. ValueError if
    the bytes are not that.
    """
    if len(payload) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + n])
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    meta = header.get("__metadata__", {})
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
