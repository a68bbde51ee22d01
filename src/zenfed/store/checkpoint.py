"""Run checkpoints: written atomically after every round, read by ``--resume``.

    save_checkpoint(path, coordinator.state.to_bytes(), {name: state.to_bytes()}, history)
    coord_bytes, participant_bytes, history = load_checkpoint(path)

One file: the coordinator's state and every participant's, each in its own one byte form
(``CoordinatorState.to_bytes``, ``ParticipantState.to_bytes``, the same bytes a deployment
stores), carried as uint8 tensors, plus the metrics history; ``torch.save``, loaded with
``weights_only=True``. Written to a temporary name and renamed, so a kill at any moment
leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from zenfed.errors import ZenfedError
from zenfed.store.records import bytes_tensor, tensor_bytes

FORMAT = 3  # 3: each state in its own byte form (2: versions named by commit)


def save_checkpoint(
    path: Path, coordinator: bytes, participants: dict[str, bytes], history: list[dict[str, Any]]
) -> None:
    """Atomically write everything a resumed run needs."""
    blob = {
        "format": FORMAT,
        "coordinator": bytes_tensor(coordinator),
        "participants": {k: bytes_tensor(v) for k, v in participants.items()},
        "history": history,
    }
    atomic_write(path, lambda f: torch.save(blob, f))


def load_checkpoint(path: Path) -> tuple[bytes, dict[str, bytes], list[dict[str, Any]]]:
    """(coordinator state bytes, participant state bytes by name, history)."""
    try:
        blob = torch.load(path, weights_only=True)
    except FileNotFoundError as e:
        raise ZenfedError(f"no checkpoint at '{path}'", fix="run without --resume") from e
    except Exception as e:
        raise ZenfedError(
            f"checkpoint '{path}' is unreadable ({e})", fix="remove it and start over with --fresh"
        ) from e
    if blob.get("format") != FORMAT:
        raise ZenfedError(
            f"checkpoint '{path}' has format {blob.get('format')}",
            fix=f"this zenfed reads format {FORMAT}; finish that run with the zenfed that made it",
        )
    parts = {k: tensor_bytes(v) for k, v in blob["participants"].items()}
    return tensor_bytes(blob["coordinator"]), parts, blob["history"]


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
