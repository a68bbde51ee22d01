"""Synchronous rounds: a cohort drawn at the round's start, closed at a quorum of it or at
its deadline.

    policy = SyncRounds(cfg)     # service.quorum, service.round_timeout_s
    tasks, new = policy.open(server_round, now, draw)   # the drawn cohort's tasks

The round closes once ``quorum`` of the cohort has uploaded, or at the deadline with what
arrived; with nothing by the deadline it is aborted and the version stays (the port then
moves on to the next round number, in the simulation and the service alike).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import replace

from zenfed.aggregate.registry import AggregationRule
from zenfed.config import FederationConfig
from zenfed.coordinator.metrics import round_metrics
from zenfed.coordinator.rounds.base import Draw, MakeTask, OpenRound
from zenfed.coordinator.rounds.trigger import Decision, RoundProgress, SyncRound
from zenfed.errors import ZenfedError
from zenfed.protocol.messages import Task, Update
from zenfed.tensors import Tensors


class SyncRounds:
    """``[buffered]`` off: the synchronous round."""

    closes_on_arrival = False
    retry_rounds = 1  # the last round's digests: a retry whose acknowledgement was lost

    def __init__(self, cfg: FederationConfig) -> None:
        self.cfg = cfg
        self.trigger = SyncRound(cfg.service.quorum, cfg.service.round_timeout_s)

    def check_setup(self, rule: AggregationRule, pool: int) -> None:
        """A rule that needs each update must get enough of them from a cohort."""
        if not rule.streaming:  # a mean takes any count; Krum needs 2f + 3
            rule.check_count(math.floor(self.cfg.sampling.expected_size(pool)))

    def holders(self, pool: int) -> float:
        """Everyone in the pool may contribute to a version over a run."""
        return float(pool)

    def expected_cohort(self, pool: int, r: OpenRound | None) -> float:
        """The matcher's mean cohort."""
        return self.cfg.sampling.expected_size(pool)

    def open(self, server_round: int, now: float, draw: Draw) -> tuple[list[Task], list[Task]]:
        """A freshly drawn cohort, with the round's deadline."""
        tasks = draw(self.deadline(now))
        return tasks, tasks

    def restore(
        self, tasks: list[Task], server_round: int, version: str, deadline: float | None
    ) -> list[Task]:
        """The stored round's tasks, which must be of the engine's round and version,
        ending at ``deadline`` (the stored round's)."""
        if not tasks or any(t.round != server_round for t in tasks):
            raise ZenfedError(
                f"tasks do not belong to round {server_round}", fix="restore the open round"
            )
        if tasks[0].version != version:
            raise ZenfedError(
                "the stored round starts from another version than the latest",
                fix="the store is inconsistent; restore it from a backup",
            )
        return tasks if deadline is None else [replace(t, deadline=deadline) for t in tasks]

    def deadline(self, now: float) -> float:
        """``now`` plus the round's time."""
        return self.trigger.deadline(now)

    def round_deadline(self, tasks: list[Task]) -> float:
        """The cohort's deadline (its tasks share it)."""
        return tasks[0].deadline

    def round_seed(self, tasks: list[Task], server_round: int) -> int:
        """The cohort's shared codec seed."""
        return tasks[0].codec_seed if tasks else server_round

    def task_for(
        self, r: OpenRound, participant: str, now: float, make: MakeTask, pool: Collection[str]
    ) -> Task | None:
        """Its task in the cohort, until it has uploaded."""
        return r.task_for(participant)

    def admit(
        self, r: OpenRound | None, update: Update, task: Task | None
    ) -> tuple[int | None, str]:
        """The open round, from its version."""
        return (r.round, r.version) if r is not None else (None, "")

    def check(self, update: Update) -> None:
        """Nothing beyond the round's own checks."""

    def upload_round(self, r: OpenRound, participant: str) -> int:
        """The open round's number."""
        return r.round

    def weigh(self, r: OpenRound, participant: str, tensors: Tensors) -> Tensors:
        """Every update of a round is as fresh as the others."""
        return tensors

    def decide(self, progress: RoundProgress) -> Decision:
        """Quorum or deadline."""
        return self.trigger.decide(progress)

    def expired(self, now: float) -> list[str]:
        """No task outlives its round."""
        return []

    def forget(self, r: OpenRound | None, participant: str) -> None:
        """Nothing is in flight outside the round."""

    def withdraw(self, r: OpenRound, participant: str, masked: bool) -> None:
        """Out of the cohort unless it uploaded; with nobody left the round ends at once."""
        if masked or participant in r.received:
            return
        r.tasks.pop(participant, None)
        if not r.tasks:  # nobody left: the trigger aborts it at the deadline
            r.deadline = -math.inf

    def next_deadline(self, r: OpenRound) -> float:
        """The round's deadline."""
        return r.deadline

    def committed(self, server_round: int, rollback: bool) -> None:
        """Nothing carries over."""

    def metrics(self, r: OpenRound, dense_update_bytes: int) -> dict[str, float]:
        """Counts, cost and traffic against the cohort."""
        ups = list(r.received.values())
        return round_metrics(ups, len(r.tasks), r.bytes_up, r.bytes_down, dense_update_bytes)

    def close_reason(self) -> str:
        """A round that closes early has its quorum."""
        return "quorum"
