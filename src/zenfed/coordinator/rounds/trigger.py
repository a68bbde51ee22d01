"""When a round closes: a policy the engine consults at each tick of the port (after
arrivals, and as deadlines pass).

    trigger = SyncRound(quorum=0.8, timeout_s=600)
    deadline = trigger.deadline(opened_at)
    trigger.decide(RoundProgress(cohort=10, received=8, now=t, deadline=deadline))  # "close"

``SyncRound`` is the synchronous round: close once ``quorum`` of the cohort has uploaded,
or at the deadline with what arrived; with nothing by the deadline the round is aborted
and the version stays. The simulation drives the same policy on a virtual clock (it jumps
to the deadline when no participant can make progress), the service on the wall clock.
A buffered asynchronous policy (FedBuff) will be a second implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

Decision = Literal["wait", "close", "abort"]


@dataclass(frozen=True)
class RoundProgress:
    """What a trigger decides on."""

    cohort: int
    received: int
    now: float
    deadline: float


class Trigger(Protocol):
    """Decides when the open round is aggregated."""

    def deadline(self, opened_at: float) -> float:
        """When a round opened at ``opened_at`` ends at the latest."""
        ...

    def decide(self, p: RoundProgress) -> Decision:
        """Wait, close (aggregate what arrived), or abort (nothing to aggregate)."""
        ...


@dataclass(frozen=True)
class SyncRound:
    """The synchronous round with a quorum and a deadline."""

    quorum: float
    timeout_s: float

    def deadline(self, opened_at: float) -> float:
        """``opened_at + timeout_s``."""
        return opened_at + self.timeout_s

    def decide(self, p: RoundProgress) -> Decision:
        """Close at quorum or at the deadline; abort an empty round at its deadline."""
        if p.received and p.received >= math.ceil(self.quorum * p.cohort):
            return "close"
        if p.now >= p.deadline:
            return "close" if p.received else "abort"
        return "wait"
