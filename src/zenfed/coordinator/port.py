"""The coordinator's one message-level port: every transport drives the engine through it.

    port = CoordinatorPort(engine, journal=Journal(), clock=time.time)
    port.tick()                                   # open / advance a stage / close on time
    task = port.task(pid)                         # None: nothing for pid now
    port.stage_post(pid, r, "advertise_keys", keys); port.stage_get(pid, r, "share_keys")
    port.upload(update)                           # "accepted" | "duplicate"
    port.download(pid, version, held); port.report(eval_report)

Messages in and out are the dataclasses of ``zenfed.protocol``: the in-memory transport
(the simulation) calls these methods directly, the HTTP app decodes requests into them
and encodes their answers; nothing else drives a round. That makes this the one place
where the stages of secure aggregation are driven: a stage closes once everyone still in
it has answered, or at its deadline (``secagg.stage_timeout_s``; the training stage gets
the round's time), and the last one closes the round. A plaintext round closes when the
engine's trigger says so. ``tick`` uses the port's clock: the wall clock in a deployment,
a virtual one in the simulation (which jumps to ``next_deadline`` when no participant can
make progress), so both run the same timing rules.

The port holds the parts around the engine: the SecAgg+ stage driver (stages.py), the
committer (commit.py: the evaluation gate and a local commit, or a region's forwarding to
its root) and the federated evaluation. A round that ends without a version (nobody
uploaded by the deadline, too few for the rule, a secure sum that cannot be unmasked, a
cohort nobody was drawn into) moves the federation on to the next round number, in the
simulation and the service alike. A rollback (``rollback``) aborts the open round, if any,
and commits the earlier version's tensors anew (trust.py).

A ``Journal`` hears of every state change before it becomes visible (an update before it
is counted, a version before it is adopted): the deployment's persistent coordinator
writes them to its database and blob store; the simulation's journal keeps nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal

from zenfed.coordinator.commit import Committer, ForwardUpstream, LocalCommit
from zenfed.coordinator.engine import Coordinator, RoundAborted
from zenfed.coordinator.evaluation import FederatedEvaluation
from zenfed.coordinator.gate import Gate
from zenfed.coordinator.journaling import Journal as Journal
from zenfed.coordinator.journaling import Tick as Tick
from zenfed.coordinator.journaling import UploadResult as UploadResult
from zenfed.coordinator.regional import Region
from zenfed.coordinator.roster import Member, Roster
from zenfed.coordinator.stages import SecAggStages
from zenfed.coordinator.trust import rollback
from zenfed.coordinator.validate import UpdateRejected
from zenfed.errors import ZenfedError
from zenfed.privacy.dp import PrivacyBudgetExceeded
from zenfed.privacy.secagg import SecAggAborted
from zenfed.protocol.messages import EvalReport, GlobalVersion, Task, Update
from zenfed.protocol.port import FederationFinished, StageInput, StageMessage
from zenfed.tensors import Tensors


class CoordinatorPort:
    """Messages in and out of one coordinator engine, and its clock-driven ticks."""

    def __init__(
        self,
        engine: Coordinator,
        journal: Journal | None = None,
        clock: Callable[[], float] = time.time,
        wait_for_minimum: bool = True,
        gate: Gate | None = None,
        region: Region | None = None,
    ) -> None:
        self.engine, self.journal, self.clock = engine, journal or Journal(), clock
        # Where a round's result goes: here (through the gate), or to a region's root.
        self.committer: Committer = ForwardUpstream(region) if region else LocalCommit(gate)
        self.stages = SecAggStages(engine, self.journal, clock)
        self.evaluation: FederatedEvaluation | None = None
        # A service waits until sampling.min_participants have joined before a round; a
        # simulation's pool is complete from the start (a smaller one samples all of it).
        self.wait_for_minimum = wait_for_minimum
        # Accepted payloads by (sender, round of its task): the open round's, or under
        # buffered aggregation those that may still be retried (an acknowledgement lost).
        self.digests: dict[tuple[str, int], str] = {}
        self.exhausted = ""  # why no further round may run (the privacy budget is spent)
        self.last_version: GlobalVersion | None = None  # what the last closing tick made
        self.last_reason = ""  # why the last aborted or skipped round made no version
        self.closed_by_upload: Tick | None = None  # see _close_on_arrival

    # ---- membership: the roster's one writer -----------------------------------------------

    @property
    def roster(self) -> Roster:
        """Who takes part (the engine reads it; only these methods change it)."""
        return self.engine.roster

    def enroll(self, member: Member) -> None:
        """Add ``member`` (it is sampled once ready: at once if it is, else when it first
        asks for work)."""
        self.roster.enroll(member)

    def ready(self, pid: str) -> bool:
        """``pid`` asked for work: sampled from the next round on. Whether that is new."""
        return self.roster.ready(pid)

    def revoke(self, pid: str) -> None:
        """``pid`` is refused from now on: out of cohorts, the open round's included (it
        no longer waits for it)."""
        self.roster.revoke(pid)
        self.engine.withdraw(pid)

    # ---- participant messages -------------------------------------------------------------

    def task(self, pid: str) -> Task | None:
        """``pid``'s task now: its evaluation, or its training task in the open round (not
        once it uploaded; in a secure round, not once it advertised keys or after the
        advertising stage). No training task while an evaluation measures the version.
        FederationFinished once no round is open and none will be."""
        ev, task = self.evaluation, None
        if ev is not None:
            task = ev.pending(pid)
        else:
            task, fresh = self.engine.task_for(pid, self.clock())
            if task is not None and fresh:  # handed out now: journaled before it is seen
                try:
                    self.journal.issued(task)
                except BaseException:
                    self.engine.forget(pid)
                    raise
        if task is None:
            if self.finished():
                raise FederationFinished("the federation has finished", fix="nothing to do")
            return None
        return None if self.stages.withholds(self.engine.current, pid, task) else task

    def download(self, pid: str, version: str, held: str | None) -> bytes:
        """Version ``version`` for ``pid``: the broadcasts since ``held``, or in full;
        counted as ``pid``'s download in the open round (or as the evaluation's)."""
        engine = self.engine
        st, tensors = engine.state, engine.fetch(version)
        payload = engine.publisher.payload(st.broadcasts, tensors, engine.version, held)
        self.served(pid, len(payload))
        return payload

    def served(self, pid: str, nbytes: int) -> None:
        """Count ``nbytes`` of a version a transport served ``pid`` itself (the HTTP app
        streams full versions from the blob store, with Range), as ``download`` counts."""
        r, ev = self.engine.current, self.evaluation
        if r is not None and pid in r.tasks:
            r.bytes_down[pid] = r.bytes_down.get(pid, 0) + nbytes
        elif ev is not None:
            ev.bytes_down += nbytes

    def diff_since(self, held: str | None, version: str, full_size: int) -> bytes | None:
        """The broadcasts from ``held`` to ``version`` (the current one) if they are kept
        and smaller than the full version (``full_size`` bytes); else None."""
        engine = self.engine
        if version != engine.version.id:
            return None
        return engine.publisher.diff_since(engine.state.broadcasts, held, engine.version, full_size)

    def stage_post(self, pid: str, server_round: int, stage: str, message: StageMessage) -> None:
        """``pid``'s message for ``stage`` of the open secure round."""
        self.stages.post(pid, server_round, stage, message)

    def stage_get(self, pid: str, server_round: int, stage: str) -> StageInput | None:
        """What ``pid`` needs to do ``stage`` (None while the stage has not begun)."""
        return self.stages.get(pid, server_round, stage)

    def upload(self, update: Update) -> Literal["accepted", "duplicate"]:
        """Validate, journal, then count ``update``; a retry of an accepted one (same
        sender, round and payload) is acknowledged and not counted again. UpdateRejected
        names why it was refused."""
        result = self.upload_many([update])[0]
        if isinstance(result, UpdateRejected):
            raise result
        return result

    def upload_many(self, updates: Sequence[Update]) -> list[UploadResult]:
        """``upload`` for several updates at once, with one journal write (one database
        commit in a deployment) for those accepted together: each update's answer, in
        order, a refusal as its UpdateRejected. The outcome is the one of uploading them
        one after another: an update that completes a round that closes on arrival (a
        buffer) closes it before the next is checked, and a second update from one sender
        waits for the first to count. An error of the journal itself is raised and counts
        none of those it was writing."""
        results: list[UploadResult | None] = [None] * len(updates)
        on_arrival = self.engine.policy.closes_on_arrival
        i = 0
        while i < len(updates):
            batch: list[tuple[int, Update, Tensors]] = []
            senders: set[str] = set()
            while i < len(updates) and updates[i].participant not in senders:
                u = updates[i]
                if self.digests.get((u.participant, u.round)) == u.digest:
                    results[i] = "duplicate"
                else:
                    try:
                        batch.append((i, u, self.engine.check(u)))
                        senders.add(u.participant)
                    except UpdateRejected as e:
                        self.journal.rejected(u, e)
                        results[i] = e
                i += 1
                if on_arrival and self.engine.decide(self.clock(), len(batch)) == "close":
                    break  # this batch completes the round: the rest go to the next one
            if batch:
                self.journal.storing([u for _, u, _ in batch])
                for at, u, tensors in batch:
                    self.engine.accept(u, tensors)
                    self.digests[(u.participant, u.round)] = u.digest
                    results[at] = "accepted"
                if on_arrival and self.engine.decide(self.clock()) == "close":
                    self._close_on_arrival()
        return [r for r in results if r is not None]

    def _close_on_arrival(self) -> None:
        """The upload that completes a buffer aggregates it at once, and the next opens, so
        no later arrival finds none open. What the close did waits in
        ``closed_by_upload``: the next ``tick`` reports it."""
        self.closed_by_upload = self._close(self.engine.policy.close_reason())
        if self.engine.current is None and self._can_open():
            self._open()

    def admit(self, pid: str, server_round: int) -> None:
        """UpdateRejected unless ``pid`` may upload to ``server_round`` now (it is open
        and ``pid`` is in its cohort, or ``pid``'s update to it was accepted and this may
        be its retry): what a transport checks before reading a body."""
        if (pid, server_round) in self.digests:  # a retry of an accepted upload (its ack
            return  # was lost): its digest decides, "duplicate", even once the round closed
        r = self.engine.current
        open_no = self.engine.policy.upload_round(r, pid) if r is not None else None
        if r is None or open_no != server_round:
            raise UpdateRejected(
                f"round {server_round} is not open", fix="fetch the current task", reason="not_open"
            )
        if pid not in r.tasks:
            raise UpdateRejected(
                f"'{pid}' is not in round {server_round}'s cohort",
                fix="only sampled participants may upload",
                reason="not_in_cohort",
            )

    # ---- federated evaluation ---------------------------------------------------------------

    def open_evaluation(self) -> FederatedEvaluation:
        """Every participant of the pool evaluates the current version on its held-out
        split (no training task is handed out meanwhile)."""
        engine = self.engine
        self.evaluation = FederatedEvaluation(
            engine.state.round - 1, engine.version.id, engine.participants
        )
        return self.evaluation

    def close_evaluation(self) -> None:
        """End the open evaluation (what reported is in its reports)."""
        self.evaluation = None

    def report(self, report: EvalReport) -> None:
        """An evaluation result for the current evaluation."""
        if self.evaluation is None:
            raise ZenfedError("no evaluation is open", fix="evaluate when asked to")
        self.evaluation.report(report)

    # ---- time ------------------------------------------------------------------------------

    def finished(self) -> bool:
        """Whether every round has run (no round is open and none will be)."""
        return self.engine.current is None and self.committer.finished(self)

    def next_deadline(self) -> float:
        """When the next timed event is due (inf with none)."""
        r = self.engine.current
        return self.stages.deadline if self.stages.running(r) else self.engine.next_deadline()

    def tick(self) -> Tick:
        """Open a round when none is open, advance a secure stage, or close the open round
        when its policy (or last stage) says so; or report what the upload that completed
        a buffer did. What happened; ``last_version`` holds a version a closing tick made."""
        if (what := self.closed_by_upload) is not None:  # a buffer its k-th upload closed
            self.closed_by_upload = None
            return what
        r = self.engine.current
        if r is None:
            return self._open() if self._can_open() else "idle"
        if self.stages.running(r):
            return self.stages.tick(self._close, self.abort)
        now = self.clock()
        self.engine.expire(now)
        decision = self.engine.decide(now)
        if decision == "close":
            return self._close(
                self.engine.policy.close_reason() if now < r.deadline else "deadline"
            )
        if decision == "abort":
            return self.abort("deadline passed with no update")
        return "idle"

    def _can_open(self) -> bool:
        minimum = self.engine.cfg.sampling.min_participants if self.wait_for_minimum else 1
        enough = len(self.engine.participants) >= max(1, minimum)
        return enough and not self.exhausted and self.committer.may_open(self)

    def _open(self) -> Tick:
        engine = self.engine
        try:
            engine.open_round(self.clock())
        except PrivacyBudgetExceeded as e:
            self.exhausted = e.problem
            self.journal.exhausted(e.problem)
            return "exhausted"
        except (RoundAborted, SecAggAborted) as e:
            r = engine.state.round
            engine.skip_round(e.problem)
            self.last_reason = e.problem
            self.journal.skipped(r, e.problem)
            return "skipped"
        try:
            assert engine.current is not None
            self.journal.opened(engine.current)
        except BaseException:
            engine.abort_round()
            raise
        # Kept for retries whose acknowledgement was lost: the rounds an upload may still
        # be retried into (the last one; a buffer's, those within max_staleness).
        oldest = engine.state.round - engine.policy.retry_rounds
        self.digests = {k: d for k, d in self.digests.items() if k[1] >= oldest}
        self.stages.opened()
        return "opened"

    def _close(self, why: str) -> Tick:
        return self.committer.close(self, why)

    def rollback(self, to: str, tensors: Tensors) -> GlobalVersion:
        """Publish version ``to`` (whose stored tensors are ``tensors``) again as a new
        version whose lineage records the rollback; an open round is dropped first (its
        number is the rollback's)."""
        engine = self.engine
        result = rollback(engine.state, to, tensors)  # checks everything before any change
        if engine.current is not None:
            reason = f"rolled back to version {result.version.rollback_of[:12]}"
            self.last_reason = reason
            self.journal.aborted(engine.current.round, reason)
            engine.abort_round()
            result = rollback(engine.state, to, tensors)
        result = engine.recorded(result)
        self.journal.committing(result, f"rollback to {result.version.rollback_of}")
        self.last_version = engine.commit(result)
        return self.last_version

    def abort(self, reason: str) -> Tick:
        """End the open round without a version and move on to the next round number."""
        r = self.engine.current
        assert r is not None
        self.last_reason = reason
        self.journal.aborted(r.round, reason)
        self.engine.skip_round(reason)
        return "aborted"
