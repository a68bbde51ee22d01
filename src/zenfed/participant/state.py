"""What a participant keeps across rounds and restarts, and its one byte form.

    data = state.to_bytes()                   # the run checkpoint; zenfed join's state file
    state = ParticipantState.from_bytes(data)

AdamW moments (when ``keep_optimizer_state`` is on), the error-feedback residual of a lossy
codec pipeline, how many rounds it trained, and the ledger of its own record-level DP.
The bytes are ``torch.save`` of tensors and plain values, read back with
``weights_only=True`` (no arbitrary objects are unpickled).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import torch

from zenfed.errors import ZenfedError
from zenfed.tensors import Tensors
from zenfed.train.trainer import OptimizerState

FORMAT = "zenfed-participant-state/1"


@dataclass
class ParticipantState:
    """What a participant keeps across rounds and restarts."""

    optimizer: OptimizerState | None = None
    rounds_trained: int = 0
    extra: dict[str, Tensors] = field(default_factory=dict)
    # The last global version received, kept only with a downlink codec (to apply the
    # broadcasts to). Not saved: after a restart the next download is in full.
    held: tuple[str, Tensors] | None = None
    # DP-SGD: the (sampling rate, noise multiplier) of every private local step taken:
    # this holder's own privacy ledger for its records.
    record_privacy: list[tuple[float, float]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """Everything but ``held`` (re-downloaded after a restart)."""
        buf = io.BytesIO()
        torch.save(
            {
                "format": FORMAT,
                "optimizer": self.optimizer,
                "rounds_trained": self.rounds_trained,
                "extra": self.extra,
                "record_privacy": [list(r) for r in self.record_privacy],
            },
            buf,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ParticipantState:
        """The state :meth:`to_bytes` wrote."""
        try:
            blob = torch.load(io.BytesIO(data), weights_only=True)
        except Exception as e:
            raise ZenfedError(f"unreadable participant state ({e})", fix="remove it") from e
        # Files from before the format was named hold the same keys without it.
        if not isinstance(blob, dict) or blob.get("format", FORMAT) != FORMAT:
            raise ZenfedError(
                "not a zenfed participant state",
                fix="keep it aside (it holds this participant's record-level privacy ledger) "
                "and start with a fresh one",
            )
        return cls(
            optimizer=blob["optimizer"],
            rounds_trained=int(blob["rounds_trained"]),
            extra=blob["extra"],
            record_privacy=[(float(q), float(z)) for q, z in blob.get("record_privacy", [])],
        )
