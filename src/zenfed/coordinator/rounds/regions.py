"""A root over regional coordinators (``[regions]``): synchronous rounds whose members are
regions, each reporting the pool it samples from.

    policy = OverRegions(SyncRounds(cfg), cfg.regions.fraction, accounted=True)

Every region gets the round's task; the DP-FedAvg denominator is ``regions.fraction``
times the pools the regions reported in the open round, and an update must come from a
region (it reports its pool; under DP its weight is its count of clipped updates, at most
that pool). Everything else is the synchronous round's.
"""

from __future__ import annotations

from collections.abc import Collection

from zenfed.aggregate.registry import AggregationRule
from zenfed.coordinator.rounds.base import Draw, MakeTask, OpenRound
from zenfed.coordinator.rounds.sync import SyncRounds
from zenfed.coordinator.rounds.trigger import Decision, RoundProgress
from zenfed.coordinator.validate import check_region
from zenfed.protocol.messages import Task, Update
from zenfed.tensors import Tensors


class OverRegions:
    """The synchronous round of a root whose participants are regions."""

    closes_on_arrival = False
    retry_rounds = 1

    def __init__(self, sync: SyncRounds, fraction: float, accounted: bool) -> None:
        self.sync, self.fraction, self.accounted = sync, fraction, accounted

    def check_setup(self, rule: AggregationRule, pool: int) -> None:
        """As a synchronous round."""
        self.sync.check_setup(rule, pool)

    def holders(self, pool: int) -> float:
        """As a synchronous round."""
        return self.sync.holders(pool)

    def expected_cohort(self, pool: int, r: OpenRound | None) -> float:
        """``regions.fraction`` times the participants the regions sample from."""
        pools = (u.pool_size or 0 for u in (r.received.values() if r else ()))
        return self.fraction * sum(pools)

    def open(self, server_round: int, now: float, draw: Draw) -> tuple[list[Task], list[Task]]:
        """As a synchronous round."""
        return self.sync.open(server_round, now, draw)

    def restore(
        self, tasks: list[Task], server_round: int, version: str, deadline: float | None
    ) -> list[Task]:
        """As a synchronous round."""
        return self.sync.restore(tasks, server_round, version, deadline)

    def round_deadline(self, tasks: list[Task]) -> float:
        """As a synchronous round."""
        return self.sync.round_deadline(tasks)

    def round_seed(self, tasks: list[Task], server_round: int) -> int:
        """As a synchronous round."""
        return self.sync.round_seed(tasks, server_round)

    def task_for(
        self, r: OpenRound, participant: str, now: float, make: MakeTask, pool: Collection[str]
    ) -> Task | None:
        """As a synchronous round."""
        return self.sync.task_for(r, participant, now, make, pool)

    def admit(
        self, r: OpenRound | None, update: Update, task: Task | None
    ) -> tuple[int | None, str]:
        """As a synchronous round."""
        return self.sync.admit(r, update, task)

    def check(self, update: Update) -> None:
        """A region's update (UpdateRejected otherwise)."""
        check_region(update, self.accounted)

    def upload_round(self, r: OpenRound, participant: str) -> int:
        """As a synchronous round."""
        return self.sync.upload_round(r, participant)

    def weigh(self, r: OpenRound, participant: str, tensors: Tensors) -> Tensors:
        """As a synchronous round."""
        return tensors

    def decide(self, progress: RoundProgress) -> Decision:
        """As a synchronous round."""
        return self.sync.decide(progress)

    def expired(self, now: float) -> list[str]:
        """As a synchronous round."""
        return []

    def forget(self, r: OpenRound | None, participant: str) -> None:
        """As a synchronous round."""

    def withdraw(self, r: OpenRound, participant: str, masked: bool) -> None:
        """As a synchronous round."""
        self.sync.withdraw(r, participant, masked)

    def next_deadline(self, r: OpenRound) -> float:
        """As a synchronous round."""
        return self.sync.next_deadline(r)

    def committed(self, server_round: int, rollback: bool) -> None:
        """As a synchronous round."""

    def metrics(self, r: OpenRound, dense_update_bytes: int) -> dict[str, float]:
        """As a synchronous round."""
        return self.sync.metrics(r, dense_update_bytes)

    def close_reason(self) -> str:
        """As a synchronous round."""
        return self.sync.close_reason()
