"""What the round port tells the outside world, and the words it uses.

    class StoreJournal(Journal): ...        # the deployment writes each change down
    what: Tick = port.tick()

``Journal`` hears of every state change of the port before it takes effect; ``Tick`` is
what one tick did; ``UploadResult`` one upload's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from zenfed.coordinator.rounds import OpenRound
from zenfed.coordinator.state import Commit, CoordinatorState
from zenfed.coordinator.validate import UpdateRejected
from zenfed.protocol.messages import Task, Update

UploadResult = Literal["accepted", "duplicate"] | UpdateRejected
Tick = Literal[
    "idle", "opened", "stage", "closed", "forwarded", "rejected", "aborted", "skipped", "exhausted"
]


class Journal:
    """Hears of every state change of the port: an update, a version, a round's opening
    before it takes effect (a failure stops it); refusals and stage messages once they
    are decided, for the record. This base keeps
    nothing (the simulation's state lives in memory and its run checkpoint); the
    deployment's ``StoreJournal`` writes each change to its database and blob store."""

    def opened(self, r: OpenRound) -> None:
        """A round opened (its tasks; a buffer's: those in flight, carried over)."""

    def issued(self, task: Task) -> None:
        """Buffered aggregation: a task handed out in the open buffer, before the
        participant sees it (raise to withhold it)."""

    def storing(self, updates: Sequence[Update]) -> None:
        """Accepted updates, before they are counted (raise to refuse them all)."""

    def rejected(self, update: Update, error: UpdateRejected) -> None:
        """A refused update."""

    def forwarding(self, server_round: int, update: Update, why: str) -> None:
        """A regional coordinator's round ends: ``update`` goes to the root (raise to keep
        the round open)."""

    def committing(self, result: Commit, why: str) -> None:
        """A round's result, before the engine adopts it (raise to keep the round open)."""

    def rejecting(self, server_round: int, state: CoordinatorState, reason: str) -> None:
        """An evaluation gate refused the open round's result: the round ends without a
        version; ``state`` is the coordinator's from now on (the round number and the
        privacy ledger moved on)."""

    def aborted(self, server_round: int, reason: str) -> None:
        """The open round ended without a version."""

    def skipped(self, server_round: int, reason: str) -> None:
        """A round could not open and was skipped."""

    def exhausted(self, reason: str) -> None:
        """The privacy budget allows no further round."""

    def staged(self, participant: str, server_round: int, stage: str) -> None:
        """A secure-aggregation stage message was accepted."""
