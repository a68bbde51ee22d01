"""The round engine: one lifecycle over parts that know nothing of each other.

    coord = Coordinator(cfg, initial_adapter, Roster([...]))
    tasks = coord.open_round(now)        # draw a cohort (matcher), make its tasks (strategy)
    coord.submit(update)                 # check, then into the round's accumulator (intake)
    coord.decide(now)                    # "wait" | "close" | "abort" (round policy)
    version = coord.close_round()        # aggregate, privacy, server step, commit

How rounds run (synchronous, buffered, a root over regions) is the ``RoundPolicy``'s
(``rounds/``), how an update enters a round (in the clear or masked) the intake's. Checks
change nothing; ``aggregate_round`` builds a result and ``commit`` adopts it, so a service
that fails to store one keeps the round open. The state is frozen; this class is its only
writer. Transports drive it through ``CoordinatorPort`` (port.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace

from zenfed.aggregate import Aggregate
from zenfed.aggregate.server_opt import server_step
from zenfed.config import FederationConfig
from zenfed.coordinator.intake import Opened
from zenfed.coordinator.parts import build_parts
from zenfed.coordinator.roster import Member, Roster
from zenfed.coordinator.rounds import (
    Decision,
    OpenRound,
    RoundAborted,
    RoundProgress,
    Spill,
    combine,
)
from zenfed.coordinator.screening import Assessment, Screen
from zenfed.coordinator.state import Commit, CoordinatorState, round_commit
from zenfed.coordinator.validate import UpdateRejected, check_metadata, check_round
from zenfed.errors import ZenfedError
from zenfed.privacy.planner import warn_if_swamped
from zenfed.protocol.manifest import Manifest
from zenfed.protocol.messages import GlobalVersion, Task, Update
from zenfed.tensors import Tensors

__all__ = ["Coordinator", "RoundAborted"]


class Coordinator:
    """The transport-agnostic round engine of one federation."""

    def __init__(
        self,
        cfg: FederationConfig,
        initial: Tensors,
        participants: Roster | Mapping[str, int],
        state: CoordinatorState | None = None,
        verify_keys: Mapping[str, bytes] | None = None,
        spill: Spill | None = None,
        screen: Screen | None = None,
        line: str | None = None,
    ) -> None:
        parts = build_parts(cfg, initial, line, screen, spill)  # checked: fails before round 1
        self.cfg, self.screen, self.line, self.strategy = cfg, screen, parts.line, parts.strategy
        self.matcher = parts.matcher
        self.rule, self.privacy, self.policy = parts.rule, parts.privacy, parts.policy
        self.codec_for, self.intake, self.publisher = parts.codecs, parts.intake, parts.publisher
        self.codec, self.shapes = parts.codecs.default, parts.codecs.shapes
        self.dense_update_bytes, self.log = parts.codecs.dense_update_bytes, parts.log
        # Who takes part (read here; the port writes it). A mapping id -> examples (and
        # ``verify_keys``) makes members named by their ids, ready: a test's shorthand.
        self.roster = (
            participants
            if isinstance(participants, Roster)
            else Roster.of_examples(participants, verify_keys)
        )
        self.last_manifest: Manifest | None = None  # the newest version's, once known here
        if state is None:
            state, self.last_manifest = parts.first_state(initial)
        self.state = state
        self.current: OpenRound | None = None
        if self.pool:  # a setting that cannot work fails here, before round 1
            self.privacy.noise(self.state.privacy, self.expected_cohort)
            self.policy.check_setup(self.rule, len(self.pool))
        self.warned = False  # the swamping warning is given once, before the first round
        self.last_traffic: dict[str, dict[str, int]] = {}
        self.last_skip = ""  # why the last skipped round produced no version

    # ---- who, and what they hold -------------------------------------------------------------

    @property
    def participants(self) -> dict[str, int]:
        """This line's part of the roster's pool (active members that asked for work):
        id -> examples."""
        return {m.id: m.examples for m in self.roster.pool(self.cfg.lines, self.line)}

    @property
    def pool(self) -> dict[str, int]:
        """Who cohorts are drawn from: the participants, less the quarantined."""
        return {m.id: m.examples for m in self._drawable()}

    def _drawable(self) -> list[Member]:
        out = self.state.quarantined
        return [m for m in self.roster.pool(self.cfg.lines, self.line) if m.id not in out]

    @property
    def version(self) -> GlobalVersion:
        """The latest committed global version."""
        return self.state.version

    def fetch(self, version: str) -> Tensors:
        """The tensors of ``version``, by reference (only the current one is held)."""
        if version != self.version.id:
            raise ZenfedError(
                f"version {version[:12]} is not the current global version",
                fix=f"fetch {self.version.id[:12]}",
            )
        return self.state.published

    # ---- the round's lifecycle -------------------------------------------------------------

    def open_round(self, now: float = 0.0) -> list[Task]:
        """Open the next round; the tasks handed out with it (a drawn cohort's; none for a
        buffer, whose tasks go out as participants come free)."""
        if self.current is not None:
            raise ZenfedError(f"round {self.current.round} is still open", fix="close it first")
        self.privacy.check_budget(self.state.privacy, self.state.round)
        if not self.warned:  # a DP that will swamp the update: said, not refused
            self.warned = True
            holders = round(self.policy.holders(len(self.pool)))
            warn_if_swamped(self.cfg, self.shapes, holders, self.privacy)
        tasks, handed_out = self.policy.open(self.state.round, now, self._draw)
        self._start(tasks, self.intake.open)
        return list(self.current.tasks.values()) if handed_out and self.current else []

    def restore_round(self, tasks: list[Task], deadline: float | None = None) -> None:
        """Open the next round with exactly these tasks (a restarted service's stored ones,
        ending at ``deadline``; a buffer's are its tasks in flight, with their own)."""
        tasks = self.policy.restore(tasks, self.state.round, self.version.id, deadline)
        self._start(tasks, self.intake.restore)

    def _start(self, tasks: list[Task], intake: Callable[..., Opened]) -> None:
        n = self.state.round
        seed = self.policy.round_seed(tasks, n)
        tasks, acc, secure = intake(tasks, seed, self.roster.keys(t.participant for t in tasks))
        cohort, deadline = {t.participant: t for t in tasks}, self.policy.round_deadline(tasks)
        self.current = OpenRound(n, self.version.id, seed, cohort, acc, deadline, secure)

    def _draw(self, deadline: float) -> list[Task]:
        tasks = self.strategy.draw(self.state.round, self._drawable(), self.version.id, deadline)
        return self._decorate(tasks)

    def _decorate(self, tasks: list[Task]) -> list[Task]:
        """The privacy policy's settings on ``tasks`` (clip bound, noise shares, weights)."""
        declared = {t.participant: self.roster.examples(t.participant) for t in tasks}
        ledger, secure = self.state.privacy, self.intake.secure
        tasks = [replace(t, line=self.line) for t in tasks]
        return self.privacy.decorate(tasks, declared, ledger, self.expected_cohort, secure)

    def task_for(self, participant: str, now: float) -> tuple[Task | None, bool]:
        """``participant``'s training task in the open round now (None: none), and whether
        it was handed out just now (a buffer's: to be journaled, or ``forget``-ed)."""
        r = self.current
        if r is None:
            return None, False
        fresh = participant not in r.tasks
        task = self.policy.task_for(r, participant, now, self._new_task, self.pool)
        return task, task is not None and fresh

    def _new_task(self, server_round: int, participant: str, deadline: float) -> Task:
        name, version = self.roster.name(participant), self.version.id
        task = self.strategy.buffered_task(server_round, participant, name, version)
        return self._decorate([replace(task, deadline=deadline)])[0]

    def expire(self, now: float) -> None:
        """Drop the tasks in flight past their deadlines (their participants may take new
        ones)."""
        for p in self.policy.expired(now):
            self.forget(p)

    def forget(self, participant: str) -> None:
        """Drop ``participant``'s task in flight (expired, or never delivered: a journal
        that failed to store it)."""
        self.policy.forget(self.current, participant)

    # ---- check and accept ---------------------------------------------------------------

    def submit(self, update: Update) -> None:
        """Check ``update``, then fold it into the round's accumulator."""
        self.accept(update, self.check(update))

    def check(self, update: Update) -> Tensors:
        """Validate ``update`` and decode its payload; changes nothing (UpdateRejected).

        A service persists the accepted payload between ``check`` and ``accept``, so an
        update is counted only once it is stored."""
        r = self.current
        cohort, received = (r.tasks, r.received) if r else ({}, {})
        task = cohort.get(update.participant)
        open_no, base = self.policy.admit(r, update, task)
        check_round(update, open_no, cohort, received, base)
        check_metadata(update, self.roster.examples(update.participant))
        self.policy.check(update)
        assert r is not None and task is not None
        return self.intake.check(r, update, task)

    def accept(self, update: Update, tensors: Tensors) -> None:
        """Fold a checked update into the round's accumulator; only then is it counted."""
        r = self.current
        if r is None or update.participant in r.received:
            raise UpdateRejected(
                f"update from '{update.participant}' cannot be accepted twice or outside a round",
                fix="check it first",
                reason="already_uploaded",
            )
        self.intake.accept(r, update, tensors, r.tasks[update.participant])
        r.digests[update.participant] = update.digest
        r.received[update.participant] = replace(update, payload=b"", proof=None)
        r.bytes_up[update.participant] = len(update.payload)

    def decide(self, now: float, more: int = 0) -> Decision:
        """What the round policy says of the open round at ``now`` ("wait" with none open),
        or would say with ``more`` updates received."""
        r = self.current
        if r is None:
            return "wait"
        progress = RoundProgress(len(r.tasks), len(r.received) + more, now, r.deadline)
        return self.policy.decide(progress)

    def next_deadline(self) -> float:
        """When the open round's next timed event is due (inf with none open)."""
        return math.inf if self.current is None else self.policy.next_deadline(self.current)

    # ---- aggregate and commit -------------------------------------------------------------

    def aggregate_round(self) -> Commit:
        """The open round's result, not yet committed: nothing changes until ``commit``.
        SecAggAborted if a secure sum cannot be reconstructed, RoundAborted if too few
        updates arrived for the aggregation rule."""
        r, (combined, assessment) = self.current, self.combined()
        assert r is not None
        st, secure = self.state, self.intake.secure
        agg, privacy_metrics, ledger = self.privacy.release(
            combined, st.privacy, self.expected_cohort, secure, r.round
        )
        step = server_step(self.cfg.server, st.params, agg.mean(), st.server_state)
        published = self.publisher.publish(step[0], st.published, r.round)
        metrics = {**self.policy.metrics(r, self.dense_update_bytes), **privacy_metrics}
        ups, used = list(r.received.values()), combined.weights
        result = round_commit(
            st, r.round, r.version, ups, used, step, published, metrics, ledger, assessment
        )
        return self.log.record(result, st.version.manifest, r.received, r.digests)

    def recorded(self, result: Commit) -> Commit:
        """A commit made outside a round (a rollback) with its manifest in the log."""
        return self.log.record(result, self.state.version.manifest)

    def combined(self) -> tuple[Aggregate, Assessment | None]:
        """The open round's updates combined and screened ([detect]), before privacy and
        the server step (what a regional coordinator sends its root); changes nothing.
        RoundAborted if too few arrived for the aggregation rule."""
        if self.current is None:
            raise ZenfedError("no round is open", fix="call open_round first")
        adapters = self.cfg.adapters.combine
        return combine(self.current, self.rule, self.screen, self.state, self.shapes, adapters)

    def commit(self, result: Commit) -> GlobalVersion:
        """Make ``result`` the global state: ``aggregate_round``'s of the open round, or,
        with no round open, a rollback (``trust.rollback``) of the current state."""
        r = self.current
        if result.version.parent != self.version.id or (r is None) != bool(
            result.version.rollback_of
        ):
            raise ZenfedError("this result is not of the open round", fix="aggregate it again")
        if r is not None:
            self.last_traffic = {
                p: {"up": r.bytes_up.get(p, 0), "down": r.bytes_down.get(p, 0)}
                for p in sorted(r.tasks)
            }
        self.state, self.current = result.state, None
        self.last_manifest = result.manifest
        self.policy.committed(self.state.round, rollback=r is None)
        return result.version

    def close_round(self) -> GlobalVersion:
        """Aggregate what arrived, take the server optimizer step, commit a new version."""
        return self.commit(self.aggregate_round())

    def abort_round(self) -> None:
        """Drop the open round without a new version (what arrived is discarded; tasks in
        flight outside it go on)."""
        self.current = None

    def skip_round(self, reason: str) -> None:
        """Abort the open round (if any) and move on to the next round number: what
        becomes of a round that ends without a version, in a simulation and a service."""
        self.abort_round()
        self.state = replace(self.state, round=self.state.round + 1)
        self.last_skip = reason

    def withdraw(self, participant: str) -> None:
        """Leave ``participant`` (revoked in the roster) out of the open round's cohort
        unless it already uploaded (a masked round treats it as a dropout: its masks are
        already in the others' shares)."""
        if self.current is not None:
            self.policy.withdraw(self.current, participant, masked=self.intake.secure)

    @property
    def open_round_info(self) -> tuple[int, frozenset[str], frozenset[str]] | None:
        """(round, cohort, who has uploaded) of the open round, or None."""
        r = self.current
        return None if r is None else (r.round, frozenset(r.tasks), frozenset(r.received))

    # ---- the state's other transitions -------------------------------------------------------

    def adopt(self, state: CoordinatorState) -> None:
        """Make ``state`` current: a saved one (a restart, a resumed run), or one a
        transition below made and a journal stored first."""
        self.state = state

    def renumber(self, server_round: int) -> None:
        """Move the round counter to ``server_round``: a region following its root's
        round, or a restart whose open round came after rounds skipped without a row."""
        self.state = replace(self.state, round=server_round)

    def rejection(self, result: Commit) -> CoordinatorState:
        """The state once the open round's ``result`` is refused (an evaluation gate): the
        version stays, the round number moves on, a noised release is still charged to the
        ledger. Changes nothing: ``rejected`` adopts it once stored."""
        return replace(self.state, round=self.state.round + 1, privacy=result.state.privacy)

    def rejected(self, kept: CoordinatorState) -> None:
        """The open round's result was refused: the round ends, ``kept`` is current."""
        self.abort_round()
        self.state = kept

    # ---- privacy and evaluation, through their parts --------------------------------------

    @property
    def expected_cohort(self) -> float:
        """q N, DP-FedAvg's fixed denominator (the round policy's: a buffer's k, a root's
        regions' pools)."""
        return self.policy.expected_cohort(len(self.pool), self.current)

    def epsilon(self) -> float:
        """Epsilon spent so far at the federation's target delta (0 without DP)."""
        return self.privacy.epsilon(self.state.privacy)
