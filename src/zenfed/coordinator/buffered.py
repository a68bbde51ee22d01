"""Buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022): the trigger and the
staleness weights, pure.

    trigger = Buffered(BufferedConfig(enabled=True, k=4))
    trigger.decide(RoundProgress(cohort=9, received=4, now=t, deadline=inf))   # "close"
    staleness_weight(cfg, 3)                                                   # 0.5

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
from dataclasses import dataclass

from zenfed.config import BufferedConfig
from zenfed.coordinator.trigger import Decision, RoundProgress
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
