"""Run checkpoints: written atomically after every round, read by ``--resume``.

    save_checkpoint(path, coordinator.state.to_bytes(), {name: state.to_bytes()}, history)
    coord_bytes, participant_bytes, history = load_checkpoint(path)

One file, a safetensors record (``records``): the coordinator's state and every
participant's, each in its own one byte form (``CoordinatorState.to_bytes``,
``ParticipantState.to_bytes``, the same bytes a deployment stores) carried as uint8
tensors, plus the metrics history as JSON. Written to a temporary name and renamed, so a
kill at any moment leaves either the previous checkpoint or the new one, never half.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from zenfed.errors import ZenfedError
from zenfed.store.records import bytes_tensor, pack_record, tensor_bytes, unpack_record

KIND = "zenfed-run-checkpoint/3"  # 3: each state in its own byte form


def save_checkpoint(
    path: Path, coordinator: bytes, participants: dict[str, bytes], history: list[dict[str, Any]]
) -> None:
    """Atomically write everything a resumed run needs."""
    tensors = {"coordinator": bytes_tensor(coordinator)}
    tensors |= {f"participant/{k}": bytes_tensor(v) for k, v in participants.items()}
    data = pack_record(KIND, tensors, {"history": history})
    atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: Path) -> tuple[bytes, dict[str, bytes], list[dict[str, Any]]]:
    """(coordinator state bytes, participant state bytes by name, history)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ZenfedError(f"no checkpoint at '{path}'", fix="run without --resume") from e
    tensors, fields = unpack_record(data, KIND)
    parts = {k.split("/", 1)[1]: tensor_bytes(v) for k, v in tensors.items() if k != "coordinator"}
    return tensor_bytes(tensors["coordinator"]), parts, fields["history"]


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
