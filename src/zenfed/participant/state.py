"""What a participant keeps across rounds and restarts, and its one byte form.

    data = state.to_bytes()                   # the run checkpoint; zenfed join's state file
    state = ParticipantState.from_bytes(data)

AdamW moments (when ``keep_optimizer_state`` is on), the error-feedback residual of a lossy
codec pipeline, how many rounds it trained, and the ledger of its own record-level DP.
The bytes are a safetensors record (``zenfed.store.records``): tensors plus JSON, nothing
unpickled. Files an earlier zenfed wrote with ``torch.save`` still load.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import torch

from zenfed.errors import ZenfedError
from zenfed.store.records import join_tensors, pack_record, split_tensors, unpack_record
from zenfed.tensors import Tensors
from zenfed.train.trainer import OptimizerState

KIND = "zenfed-participant-state/2"


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
        """Everything but ``held`` (re-downloaded after a restart), as one record."""
        tensors: Tensors = {}
        fields = {
            "optimizer": split_tensors(self.optimizer, tensors),
            "rounds_trained": self.rounds_trained,
            "extra": split_tensors(self.extra, tensors),
            "record_privacy": [list(r) for r in self.record_privacy],
        }
        return pack_record(KIND, tensors, fields)

    @classmethod
    def from_bytes(cls, data: bytes) -> ParticipantState:
        """The state :meth:`to_bytes` wrote (or a ``torch.save`` file of an earlier zenfed)."""
        if not data.startswith(b"PK"):  # a zip archive: torch.save's format
            tensors, f = unpack_record(data, KIND)
            return cls(
                optimizer=join_tensors(f["optimizer"], tensors),
                rounds_trained=int(f["rounds_trained"]),
                extra=join_tensors(f["extra"], tensors),
                record_privacy=[(float(q), float(z)) for q, z in f["record_privacy"]],
            )
        try:
            blob = torch.load(io.BytesIO(data), weights_only=True)
        except Exception as e:
            raise ZenfedError(f"unreadable participant state ({e})", fix="remove it") from e
        if not isinstance(blob, dict):
            raise ZenfedError(
                "not a zenfed participant state",
                fix="keep it aside (it holds this participant's record-level privacy ledger) "
                "and start with a fresh one",
            )
        return cls(
            optimizer=blob.get("optimizer"),
            rounds_trained=int(blob.get("rounds_trained", 0)),
            extra=blob.get("extra", {}),
            record_privacy=[(float(q), float(z)) for q, z in blob.get("record_privacy", [])],
        )
