"""The open round as the engine holds it, and the error of a round that cannot finish."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from zenfed.aggregate import Accumulator
from zenfed.coordinator.secure import SecureRound
from zenfed.errors import ZenfedError
from zenfed.protocol.messages import Task, Update
from zenfed.tensors import Tensors

Spill = Callable[[str, Tensors], Callable[[], Tensors]]  # (participant, tensors) -> loader


class RoundAborted(ZenfedError):
    """A round that cannot produce a version (empty cohort, too few secure survivors);
    the global version stays."""


@dataclass
class OpenRound:
    """The open round as the engine holds it (``engine.current``): read it, only the
    engine changes it."""

    round: int
    version: str  # the version its tasks start from
    codec_seed: int
    tasks: dict[str, Task]  # the cohort's
    accumulator: Accumulator
    deadline: float
    secure: SecureRound | None = None
    received: dict[str, Update] = field(default_factory=dict)  # metadata; payload dropped
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)

    def task_for(self, participant: str) -> Task | None:
        """``participant``'s task, unless it has none or has uploaded."""
        return None if participant in self.received else self.tasks.get(participant)
