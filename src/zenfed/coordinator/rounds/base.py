"""A round as the engine holds it, the error of a round that cannot finish, and the
protocol of the policies that run rounds (``sync.py``, ``buffered.py``, ``regions.py``)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from zenfed.aggregate import Accumulator
from zenfed.aggregate.registry import AggregationRule
from zenfed.coordinator.rounds.trigger import Decision, RoundProgress
from zenfed.errors import ZenfedError
from zenfed.protocol.adapter import AdapterSpec
from zenfed.protocol.messages import Task, Update
from zenfed.tensors import Tensors

if TYPE_CHECKING:
    from zenfed.coordinator.secure import SecureRound

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
    secure: SecureRound | None = None  # the round's SecAgg+ server, if it runs one
    # Updates of an adapter shape other than the whole adapter go to their own
    # accumulators (by spec id); ``specs``: every shape that has sent an update.
    by_spec: dict[str, Accumulator] = field(default_factory=dict)
    specs: dict[str, AdapterSpec] = field(default_factory=dict)
    received: dict[str, Update] = field(default_factory=dict)  # metadata; payload dropped
    bytes_up: dict[str, int] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # payload sha256 by participant
    bytes_down: dict[str, int] = field(default_factory=dict)

    def accumulator_of(self, spec_id: str) -> Accumulator:
        """Where updates of adapter spec ``spec_id`` go ("": the whole adapter's)."""
        return self.by_spec[spec_id] if spec_id else self.accumulator

    def task_for(self, participant: str) -> Task | None:
        """``participant``'s task, unless it has none or has uploaded."""
        return None if participant in self.received else self.tasks.get(participant)


Draw = Callable[[float], list[Task]]  # deadline -> a freshly drawn cohort's tasks
MakeTask = Callable[[int, str, float], Task]  # (round, participant, deadline) -> a task


class RoundPolicy(Protocol):
    """What differs between ways of running rounds; the engine's lifecycle (open, check,
    accept, decide, aggregate, commit) asks its policy at each of these points."""

    @property
    def closes_on_arrival(self) -> bool:
        """Whether the update that completes a round closes it at once (a buffer) rather
        than at the next tick."""
        ...

    @property
    def retry_rounds(self) -> int:
        """How many rounds back an accepted upload may still be retried (its
        acknowledgement lost): its digest is kept that long."""
        ...

    def check_setup(self, rule: AggregationRule, pool: int) -> None:
        """ZenfedError (before round 1) if ``pool`` participants can never run a round."""
        ...

    def holders(self, pool: int) -> float:
        """How many updates make one version (what the privacy planner warns about)."""
        ...

    def expected_cohort(self, pool: int, r: OpenRound | None) -> float:
        """The DP-FedAvg denominator q N (the open round ``r`` may tell it)."""
        ...

    def open(self, server_round: int, now: float, draw: Draw) -> tuple[list[Task], list[Task]]:
        """The tasks of the round that opens now and those newly handed out (drawn with
        ``draw``, or none: a buffer carries the tasks still in flight)."""
        ...

    def restore(
        self, tasks: list[Task], server_round: int, version: str, deadline: float | None
    ) -> list[Task]:
        """The round's tasks as stored (a restart), checked against the engine's round
        and version (``deadline``: the stored round's, where its tasks share one)."""
        ...

    def round_deadline(self, tasks: list[Task]) -> float:
        """When the round of ``tasks`` ends at the latest."""
        ...

    def round_seed(self, tasks: list[Task], server_round: int) -> int:
        """The round's shared seed (what a bucketed robust rule draws its buckets from)."""
        ...

    def task_for(
        self, r: OpenRound, participant: str, now: float, make: MakeTask, pool: Collection[str]
    ) -> Task | None:
        """``participant``'s task in ``r`` now (``make`` builds a new one; ``pool``: who
        may be given one), or None."""
        ...

    def admit(
        self, r: OpenRound | None, update: Update, task: Task | None
    ) -> tuple[int | None, str]:
        """The round number and base version ``update`` must name (UpdateRejected if it
        may not land in ``r`` at all)."""
        ...

    def check(self, update: Update) -> None:
        """What the policy itself requires of an update, after the round's own checks
        (UpdateRejected)."""
        ...

    def upload_round(self, r: OpenRound, participant: str) -> int:
        """The round an upload from ``participant`` names while ``r`` is open."""
        ...

    def weigh(self, r: OpenRound, participant: str, tensors: Tensors) -> Tensors:
        """An arrived update as it enters the round (a stale one scaled down)."""
        ...

    def decide(self, progress: RoundProgress) -> Decision:
        """Wait, close, or abort the open round."""
        ...

    def expired(self, now: float) -> list[str]:
        """Participants whose tasks ran past their deadlines (they are forgotten)."""
        ...

    def forget(self, r: OpenRound | None, participant: str) -> None:
        """Drop ``participant``'s task in flight (expired, never delivered, revoked)."""
        ...

    def withdraw(self, r: OpenRound, participant: str, masked: bool) -> None:
        """``participant`` was revoked: out of ``r``'s cohort unless it uploaded (or the
        round is ``masked``: its masks are in the others' shares; it drops out)."""
        ...

    def next_deadline(self, r: OpenRound) -> float:
        """When ``r``'s next timed event is due."""
        ...

    def committed(self, server_round: int, rollback: bool) -> None:
        """A version was committed; ``server_round`` is next (``rollback``: the tasks in
        flight from undone versions are void)."""
        ...

    def metrics(self, r: OpenRound, dense_update_bytes: int) -> dict[str, float]:
        """What the round's version records of it."""
        ...

    def close_reason(self) -> str:
        """What closing before the deadline is called ("quorum", "buffer full")."""
        ...
