"""Run checkpoints: written atomically after every round, read by ``--resume``.

    save_checkpoint(path, coordinator.state, participant_states, history)
    coord_state, participant_states, history = load_checkpoint(path)

One file (``torch.save`` of tensors and plain data, loaded with ``weights_only=True``),
written to a temporary name and renamed, so a kill at any moment leaves either the previous
checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from zenfed.aggregate.server_opt import ServerOptState
from zenfed.compress.downlink import Broadcast
from zenfed.coordinator.engine import CoordinatorState
from zenfed.errors import ZenfedError
from zenfed.participant.agent import ParticipantState
from zenfed.privacy.dp import PrivacyLedger
from zenfed.protocol.messages import GlobalVersion

FORMAT = 2  # 2: versions are named by commit (parent, round, content), not by content


def save_checkpoint(
    path: Path,
    coord: CoordinatorState,
    participants: dict[str, ParticipantState],
    history: list[dict[str, Any]],
) -> None:
    """Atomically write everything a resumed run needs."""
    blob = {
        "format": FORMAT,
        "round": coord.round,
        "params": coord.params,
        "server": {
            "m": coord.server_state.m,
            "v": coord.server_state.v,
            "step": coord.server_state.step,
        },
        "versions": [asdict(v) for v in coord.versions],
        "public": coord.public,
        "broadcasts": [
            {**asdict(b), "payload": torch.frombuffer(bytearray(b.payload), dtype=torch.uint8)}
            for b in coord.broadcasts
        ],
        "participants": {k: participant_blob(s) for k, s in participants.items()},
        "history": history,
        # The privacy ledger: every released round's (sampling rate, noise multiplier).
        "privacy": {
            "rounds": [list(r) for r in coord.privacy.rounds],
            "clip_norm": coord.privacy.clip_norm,
        },
    }
    atomic_write(path, lambda f: torch.save(blob, f))


def load_checkpoint(
    path: Path,
) -> tuple[CoordinatorState, dict[str, ParticipantState], list[dict[str, Any]]]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
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
            fix=f"this zenfed reads format {FORMAT}",
        )
    s = blob["server"]
    versions = [
        GlobalVersion(**{**v, "participants": tuple(v["participants"])}) for v in blob["versions"]
    ]
    broadcasts = [
        Broadcast(**{**b, "payload": b["payload"].numpy().tobytes()})
        for b in blob.get("broadcasts", [])
    ]
    coord = CoordinatorState(
        blob["round"],
        blob["params"],
        ServerOptState(m=s["m"], v=s["v"], step=s["step"]),
        versions,
        blob.get("public"),
        broadcasts,
        PrivacyLedger(
            [(float(q), float(z)) for q, z in blob.get("privacy", {}).get("rounds", [])],
            blob.get("privacy", {}).get("clip_norm"),
        ),
    )
    parts = {k: participant_from_blob(p) for k, p in blob["participants"].items()}
    return coord, parts, blob["history"]


def participant_blob(state: ParticipantState) -> dict[str, Any]:
    """What of a participant's state is saved (``held`` is not: it is re-downloaded)."""
    return {
        "optimizer": state.optimizer,
        "rounds_trained": state.rounds_trained,
        "extra": state.extra,
        "record_privacy": [list(r) for r in state.record_privacy],
    }


def participant_from_blob(blob: dict[str, Any]) -> ParticipantState:
    """Inverse of :func:`participant_blob`."""
    return ParticipantState(
        optimizer=blob["optimizer"],
        rounds_trained=blob["rounds_trained"],
        extra=blob["extra"],
        record_privacy=[(float(q), float(z)) for q, z in blob.get("record_privacy", [])],
    )


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
