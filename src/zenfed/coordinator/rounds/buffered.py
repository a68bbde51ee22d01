"""Buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022) as a round policy:
the trigger, the tasks in flight and the staleness weights, pure.

    policy = BufferedRounds(cfg)                                               # [buffered]
    Buffered(cfg.buffered).decide(RoundProgress(9, 4, t, inf))                  # "close" at k=4
    staleness_weight(cfg.buffered, 3)                                          # 0.5

The engine keeps one open buffer instead of a round: a free participant is handed a task
from the current version whenever fewer than ``concurrency`` are training, and its update
lands in whatever buffer is open when it arrives. Staleness is how many versions were
committed since its task's: the update is scaled by ``staleness_weight`` (so a buffer of
stale updates moves the model less, as FedBuff's sum over the buffer does) or refused
beyond ``max_staleness``. A buffer closes at ``k`` arrivals; it has no deadline (each
task has its own: ``service.round_timeout_s`` after it was handed out).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from zenfed.aggregate.registry import AggregationRule
from zenfed.config import BufferedConfig, FederationConfig
from zenfed.coordinator.metrics import round_metrics
from zenfed.coordinator.rounds.base import Draw, MakeTask, OpenRound
from zenfed.coordinator.rounds.trigger import Decision, RoundProgress
from zenfed.coordinator.validate import UpdateRejected
from zenfed.errors import ZenfedError
from zenfed.protocol.messages import Task, Update
from zenfed.tensors import Tensors


def staleness_weight(cfg: BufferedConfig, staleness: int) -> float:
    """The factor of an update that started ``staleness`` versions ago (1 when fresh)."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if cfg.staleness == "constant":
        return 1.0
    if cfg.staleness == "polynomial":
        return float((1.0 + staleness) ** -cfg.exponent)
    if staleness <= cfg.hinge_at:
        return 1.0
    return 1.0 / (1.0 + cfg.exponent * (staleness - cfg.hinge_at))


@dataclass(frozen=True)
class Buffered:
    """The trigger of buffered aggregation: close the buffer at ``k`` arrivals."""

    cfg: BufferedConfig

    def deadline(self, opened_at: float) -> float:
        """A buffer has none (its tasks do)."""
        return math.inf

    def decide(self, p: RoundProgress) -> Decision:
        """Close once ``k`` updates are in the buffer; otherwise wait."""
        return "close" if p.received >= self.cfg.k else "wait"


def check_staleness(u: Update, task: Task | None, buffer: int, cfg: BufferedConfig) -> int:
    """The staleness of ``u`` in buffer ``buffer``: how many versions were committed since
    its task's (UpdateRejected if it has no task in flight, or is staler than allowed)."""
    if task is None or task.round != u.round:
        if u.round < buffer - cfg.max_staleness:
            raise UpdateRejected(
                f"update from '{u.participant}' started {buffer - u.round} versions ago, more "
                f"than buffered.max_staleness = {cfg.max_staleness}; it was dropped",
                fix="fetch a new task (it starts from the newest version)",
                reason="stale",
            )
        raise UpdateRejected(
            f"'{u.participant}' has no task of buffer {u.round} in flight",
            fix="fetch the current task",
            reason="not_in_cohort",
        )
    return buffer - u.round


def check_pool(cfg: BufferedConfig, pool: int) -> None:
    """ZenfedError if ``pool`` participants can never fill a buffer of ``k``."""
    if pool < cfg.k:
        raise ZenfedError(
            f"buffered.k = {cfg.k} updates per version, but only {pool} participants "
            "(each contributes once per buffer)",
            fix=f"lower buffered.k to at most {pool}",
        )


class InFlight:
    """The tasks handed out and not yet answered; they outlive the buffer they began in."""

    def __init__(self, cfg: BufferedConfig) -> None:
        self.cfg = cfg
        self.tasks: dict[str, Task] = {}

    def may_take(self, participant: str, pool: int) -> bool:
        """Whether ``participant`` (free) may take a task with ``pool`` participants."""
        busy = len(self.tasks)
        return participant not in self.tasks and busy < min(pool, self.cfg.concurrency or pool)

    def expired(self, now: float) -> list[str]:
        """Whose tasks are past their deadline at ``now``."""
        return [p for p, t in self.tasks.items() if t.deadline <= now]

    def staleness(self, u: Update, buffer: int) -> int:
        """``u``'s staleness in buffer ``buffer`` (UpdateRejected: see check_staleness)."""
        return check_staleness(u, self.tasks.get(u.participant), buffer, self.cfg)

    def weigh(self, participant: str, tensors: Tensors, buffer: int) -> Tensors:
        """``participant``'s arrived update scaled by its staleness weight; its task ends."""
        task = self.tasks.pop(participant)
        factor = staleness_weight(self.cfg, buffer - task.round)
        return {k: v * factor for k, v in tensors.items()}

    def carry(self, buffer: int, drop_all: bool = False) -> None:
        """Keep the tasks that may still arrive in time for buffer ``buffer`` (none after a
        rollback: deltas from undone versions are void)."""
        oldest = buffer - self.cfg.max_staleness
        self.tasks = {p: t for p, t in self.tasks.items() if not drop_all and t.round >= oldest}

    def metrics(self, ups: list[Update], buffer: int) -> dict[str, float]:
        """How stale a buffer's updates were (versions since their tasks')."""
        stale = [buffer - u.round for u in ups]
        return {"staleness_mean": sum(stale) / len(stale), "staleness_max": float(max(stale))}


class BufferedRounds:
    """``[buffered] enabled``: one open buffer at a time, tasks handed out as participants
    come free, the buffer closed by its k-th arrival."""

    closes_on_arrival = True

    def __init__(self, cfg: FederationConfig) -> None:
        self.cfg, self.buffered = cfg, cfg.buffered
        self.trigger = Buffered(cfg.buffered)
        self.inflight = InFlight(cfg.buffered)  # tasks handed out, not answered

    @property
    def retry_rounds(self) -> int:
        """An upload may land up to ``max_staleness`` buffers after its task's."""
        return self.buffered.max_staleness + 1

    def check_setup(self, rule: AggregationRule, pool: int) -> None:
        """A buffer of k needs k participants, and enough updates for the rule."""
        if not rule.streaming:
            rule.check_count(self.buffered.k)
        check_pool(self.buffered, pool)

    def holders(self, pool: int) -> float:
        """k updates make a version."""
        return float(self.buffered.k)

    def expected_cohort(self, pool: int, r: OpenRound | None) -> float:
        """k: every buffer sums exactly k updates."""
        return float(self.buffered.k)

    def open(self, server_round: int, now: float, draw: Draw) -> tuple[list[Task], list[Task]]:
        """An empty buffer; the tasks still in flight land in it."""
        return list(self.inflight.tasks.values()), []

    def restore(
        self, tasks: list[Task], server_round: int, version: str, deadline: float | None
    ) -> list[Task]:
        """The buffer's tasks in flight (of earlier buffers too, each with its own
        deadline)."""
        self.inflight.tasks = {t.participant: t for t in tasks}
        return tasks

    def round_deadline(self, tasks: list[Task]) -> float:
        """A buffer has none (its tasks do)."""
        return math.inf

    def round_seed(self, tasks: list[Task], server_round: int) -> int:
        """Each task has its own codec seed: the buffer's number seeds a bucketed rule."""
        return server_round

    def task_for(
        self, r: OpenRound, participant: str, now: float, make: MakeTask, pool: Collection[str]
    ) -> Task | None:
        """Its task in flight, or a new one from the current version if it is free, in
        the pool, has not contributed to the open buffer, and fewer than ``concurrency``
        are training."""
        if participant in r.received:
            return None
        if participant in self.inflight.tasks:
            return self.inflight.tasks[participant]
        if participant not in pool or not self.inflight.may_take(participant, len(pool)):
            return None
        task = make(r.round, participant, now + self.cfg.service.round_timeout_s)
        self.inflight.tasks[participant] = r.tasks[participant] = task
        return task

    def admit(
        self, r: OpenRound | None, update: Update, task: Task | None
    ) -> tuple[int | None, str]:
        """The round of its task, from its task's version (UpdateRejected if it has no
        task in flight or is staler than allowed)."""
        if r is None:
            return None, ""
        self.inflight.staleness(update, r.round)
        return update.round, task.version if task is not None else ""

    def check(self, update: Update) -> None:
        """Nothing beyond the round's own checks."""

    def upload_round(self, r: OpenRound, participant: str) -> int:
        """The round of its task in flight (the open buffer's if it has none)."""
        task = self.inflight.tasks.get(participant)
        return task.round if task is not None else r.round

    def weigh(self, r: OpenRound, participant: str, tensors: Tensors) -> Tensors:
        """Scaled by its staleness weight; its task ends."""
        return self.inflight.weigh(participant, tensors, r.round)

    def decide(self, progress: RoundProgress) -> Decision:
        """Close at k arrivals."""
        return self.trigger.decide(progress)

    def expired(self, now: float) -> list[str]:
        """Whose tasks are past their deadlines."""
        return self.inflight.expired(now)

    def forget(self, r: OpenRound | None, participant: str) -> None:
        """Its task in flight is dropped (it may take a new one)."""
        self.inflight.tasks.pop(participant, None)
        if r is not None and participant not in r.received:
            r.tasks.pop(participant, None)

    def withdraw(self, r: OpenRound, participant: str, masked: bool) -> None:
        """Its task in flight is dropped."""
        self.forget(r, participant)

    def next_deadline(self, r: OpenRound) -> float:
        """The earliest deadline of a task in flight that never answers."""
        return min((t.deadline for t in self.inflight.tasks.values()), default=math.inf)

    def committed(self, server_round: int, rollback: bool) -> None:
        """The tasks that may still arrive in time for the next buffer are kept."""
        self.inflight.carry(server_round, drop_all=rollback)

    def metrics(self, r: OpenRound, dense_update_bytes: int) -> dict[str, float]:
        """Counts and traffic against the buffer's updates, and how stale they were."""
        ups = list(r.received.values())
        metrics = round_metrics(ups, len(ups), r.bytes_up, r.bytes_down, dense_update_bytes)
        return metrics | self.inflight.metrics(ups, r.round)

    def close_reason(self) -> str:
        """A buffer closes when it is full."""
        return "buffer full"
