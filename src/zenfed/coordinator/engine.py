"""The round engine: a round's lifecycle (open, accept, close) and nothing else.

    coord = Coordinator(cfg, initial_adapter, participants={"a": 120, "b": 40})
    tasks = coord.open_round(now)                  # sample a cohort, make its tasks
    coord.submit(update)                           # validate, then into the accumulator
    coord.decide(now)                              # "wait" | "close" | "abort" (the trigger)
    version = coord.close_round()                  # aggregate, server step, commit

The parts it composes, each replaceable and none aware of the others:
- ``Strategy`` (strategy.py): who takes part and with what settings;
- the accumulator a round opens with (``zenfed.aggregate``): a streaming weighted mean,
  every update for a rule that needs each one, or the masked sum of secure aggregation
  (``SecureRound``, secure.py);
- ``PrivacyPolicy`` (``zenfed.privacy.policy``): the budget, the tasks' clip bound and
  noise shares, clipping plaintext updates, noise on the sum and the ledger;
- the server optimizer (``zenfed.aggregate.server_opt``), state in, state out;
- ``Publisher`` (``zenfed.compress.downlink``): what each new version is published as;
- the trigger (trigger.py): when the open round is aggregated;
- ``Screen`` (screening.py, ``[detect]``): scores each update of a round, keeps the
  reputations, quarantines (leaves out of cohorts) who falls below the threshold.
The evaluation gate and rollback wrap the engine from outside (port.py, trust.py).
Validation (validate.py) happens before an update touches anything; ``aggregate_round``
builds the result without changing anything and ``commit`` adopts it, so a service that
fails to store a result keeps the round open. Every transport drives the engine through
``CoordinatorPort`` (port.py); traffic is counted on the bytes that cross it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from zenfed.aggregate import Aggregate, ServerOptState, build_rule
from zenfed.aggregate.server_opt import server_step
from zenfed.compress import CodecError, Pipeline
from zenfed.compress.downlink import Publisher
from zenfed.config import FederationConfig
from zenfed.coordinator.buffered import Buffered, InFlight, check_pool
from zenfed.coordinator.evaluation import FederatedEvaluation
from zenfed.coordinator.matching import build_matcher
from zenfed.coordinator.metrics import round_metrics
from zenfed.coordinator.roster import Roster
from zenfed.coordinator.rounds import OpenRound, Spill, accumulator_for, combine
from zenfed.coordinator.rounds import RoundAborted as RoundAborted
from zenfed.coordinator.screening import Assessment, Screen
from zenfed.coordinator.secure import SecureRound
from zenfed.coordinator.state import Commit, CoordinatorState, round_commit
from zenfed.coordinator.strategy import Strategy
from zenfed.coordinator.trigger import Decision, RoundProgress, SyncRound, Trigger
from zenfed.coordinator.trust import reinstate
from zenfed.coordinator.validate import (
    UpdateRejected,
    check_finite,
    check_metadata,
    check_region,
    check_round,
)
from zenfed.errors import ZenfedError
from zenfed.privacy.planner import warn_if_swamped
from zenfed.privacy.policy import PrivacyPolicy
from zenfed.protocol.messages import GlobalVersion, Task, Update, root_version
from zenfed.tensors import Tensors


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
    ) -> None:
        self.cfg = cfg
        # Who takes part (read here; the port writes it). A mapping id -> examples (and
        # ``verify_keys``) makes members named by their ids, ready: a test's shorthand.
        self.roster = (
            participants
            if isinstance(participants, Roster)
            else Roster.of_examples(participants, verify_keys)
        )
        self.spill = spill  # where a keep-every-update round puts each update
        self.strategy = Strategy(cfg)
        self.matcher = build_matcher(cfg.sampling, cfg.run.seed, secret=cfg.privacy.enabled)
        self.rule = build_rule(cfg.server.aggregator)
        self.buffered = cfg.buffered.enabled
        self.trigger: Trigger = (
            Buffered(cfg.buffered)
            if self.buffered
            else SyncRound(cfg.service.quorum, cfg.service.round_timeout_s)
        )
        self.inflight = InFlight(cfg.buffered)  # buffered: tasks handed out, not answered
        self.privacy = PrivacyPolicy(cfg)
        self.screen = screen
        shapes = {k: tuple(v.shape) for k, v in initial.items()}
        self.codec = Pipeline(cfg.compress, shapes)  # a parameter that cannot fit fails here
        self.publisher = Publisher(cfg.compress, shapes, cfg.run.seed)
        dense = Pipeline(cfg.compress.model_copy(update={"pipeline": ()}), shapes)
        # What one uncompressed float32 update would have cost: the ratio's reference.
        self.dense_update_bytes = len(dense.to_bytes(dense.encode(initial, shared_seed=0)))
        if cfg.secagg.enabled:
            SecureRound.check_setup(self.codec, self.rule)
        if self.privacy.accounted and not self.rule.streaming:
            raise ZenfedError(
                f"server.aggregator = {self.rule.describe()} with differential privacy: the noise "
                "is calibrated to a sum of clipped updates, not to this rule's result",
                fix="use fedavg under [privacy] noise, or turn the noise off",
            )
        if state is None:
            root = root_version(initial)
            ledger = self.privacy.initial_ledger()
            state = CoordinatorState(0, dict(initial), ServerOptState(), [root], privacy=ledger)
        self.state = state
        if self.pool:  # a setting that cannot work fails here, before round 1
            self.privacy.noise(self.state.privacy, self.expected_cohort)
            if not self.rule.streaming:  # a mean takes any count; Krum needs 2f + 3
                self.rule.check_count(
                    self.cfg.buffered.k
                    if self.buffered
                    else math.floor(cfg.sampling.expected_size(len(self.pool)))
                )
            if self.buffered:
                check_pool(cfg.buffered, len(self.pool))
        self.shapes = shapes
        self.warned = False  # the swamping warning is given once, before the first round
        self.current: OpenRound | None = None
        self.evaluation: FederatedEvaluation | None = None
        self.last_traffic: dict[str, dict[str, int]] = {}
        self.last_skip = ""  # why the last skipped round produced no version

    # ---- versions ------------------------------------------------------------------------

    @property
    def participants(self) -> dict[str, int]:
        """The roster's pool (active members that asked for work): id -> examples."""
        return {m.id: m.examples for m in self.roster.pool()}

    @property
    def pool(self) -> dict[str, int]:
        """Who cohorts are drawn from: the participants, less the quarantined."""
        out = self.state.quarantined
        return {m.id: m.examples for m in self.roster.pool() if m.id not in out}

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
        """Sample a cohort and return its training tasks for the next round."""
        if self.current is not None:
            raise ZenfedError(f"round {self.current.round} is still open", fix="close it first")
        self.privacy.check_budget(self.state.privacy, self.state.round)
        if not self.warned:  # a DP that will swamp the update: said, not refused
            self.warned = True
            holders = self.cfg.buffered.k if self.buffered else len(self.pool)
            warn_if_swamped(self.cfg, self.shapes, holders, self.privacy)
        if self.buffered:  # an empty buffer; tasks are handed out as participants come free
            self._start(list(self.inflight.tasks.values()), None)
            return []
        out = self.state.quarantined
        pool = [m for m in self.roster.pool() if m.id not in out]
        cohort = self.matcher.select(self.state.round, pool)
        tasks = self.strategy.configure(self.state.round, cohort, self.version.id)
        deadline = self.trigger.deadline(now)
        tasks = [replace(t, deadline=deadline) for t in tasks]
        if not tasks:
            raise RoundAborted(
                f"round {self.state.round + 1}: no participant was drawn (Poisson "
                "sampling, or nobody's turn in this pass)",
                fix="the round is skipped (raise sampling.fraction to make this rarer)",
            )
        secure = self.cfg.secagg.enabled
        tasks = self.privacy.decorate(
            tasks, self._declared(tasks), self.state.privacy, self.expected_cohort, secure
        )
        if not secure:
            self.restore_round(tasks)
            return tasks
        keys = self.roster.keys(t.participant for t in tasks)
        tasks, server = SecureRound.attach(tasks, self.cfg.secagg, keys, self.codec, self.rule)
        self._start(tasks, server)
        return tasks

    def restore_round(self, tasks: list[Task]) -> None:
        """Open the next round with exactly these tasks (a restarted service's stored ones;
        the round ends at their deadline; a buffer's are its tasks in flight)."""
        if self.buffered:  # tasks of earlier buffers too, each with its own deadline
            self.inflight.tasks = {t.participant: t for t in tasks}
            self._start(tasks, None)
            return
        if not tasks or any(t.round != self.state.round for t in tasks):
            raise ZenfedError(
                f"tasks do not belong to round {self.state.round}", fix="restore the open round"
            )
        if tasks[0].version != self.version.id:
            raise ZenfedError(
                "the stored round starts from another version than the latest",
                fix="the store is inconsistent; restore it from a backup",
            )
        secure = None
        if tasks[0].secagg is not None:
            keys = self.roster.keys(t.participant for t in tasks)
            secure = SecureRound(tasks, self.cfg.secagg, keys, self.codec, self.rule)
        self._start(tasks, secure)

    def _start(self, tasks: list[Task], secure: SecureRound | None) -> None:
        n, version = self.state.round, self.version.id
        codec_seed = tasks[0].codec_seed if tasks and not self.buffered else n
        acc = accumulator_for(
            self.rule, self.screen, self.spill, secure, codec_seed, self.cfg.weight_cap
        )
        cohort = {t.participant: t for t in tasks}
        deadline = math.inf if self.buffered else tasks[0].deadline
        self.current = OpenRound(n, version, codec_seed, cohort, acc, deadline, secure)

    def issue(self, participant: str, now: float) -> Task | None:
        """Buffered aggregation: ``participant``'s task in flight, or a new one from the
        current version if it is free, in the pool, has not contributed to the open
        buffer, and fewer than ``buffered.concurrency`` are training; else None."""
        r = self.current
        if r is None or not self.buffered or participant in r.received:
            return None
        if participant in self.inflight.tasks:
            return self.inflight.tasks[participant]
        if participant not in self.pool or not self.inflight.may_take(participant, len(self.pool)):
            return None
        task = self.strategy.buffered_task(
            r.round, participant, self.roster.name(participant), r.version
        )
        task = replace(task, deadline=now + self.cfg.service.round_timeout_s)
        [task] = self.privacy.decorate(
            [task], self._declared([task]), self.state.privacy, self.expected_cohort, False
        )
        self.inflight.tasks[participant] = r.tasks[participant] = task
        return task

    def expire(self, now: float) -> None:
        """Buffered aggregation: drop the tasks in flight past their deadline (their
        participants may take new ones)."""
        for p in self.inflight.expired(now):
            self.forget(p)

    def forget(self, participant: str) -> None:
        """Buffered aggregation: drop ``participant``'s task in flight (expired, or never
        delivered: a journal that failed to store it)."""
        self.inflight.tasks.pop(participant, None)
        r = self.current
        if r is not None and participant not in r.received:
            r.tasks.pop(participant, None)

    def submit(self, update: Update) -> None:
        """Validate and decode ``update``, then fold it into the round's accumulator."""
        self.accept(update, self.check(update))

    def check(self, update: Update) -> Tensors:
        """Validate ``update`` and decode its payload; changes nothing (UpdateRejected).

        A service persists the accepted payload between ``check`` and ``accept``, so an
        update is counted only once it is stored."""
        r = self.current
        cohort, received = (r.tasks, r.received) if r else ({}, {})
        task = cohort.get(update.participant)
        open_no, base = (r.round, r.version) if r else (None, "")
        if r is not None and self.buffered:
            self.inflight.staleness(update, r.round)
            open_no, base = update.round, task.version if task else ""
        check_round(update, open_no, cohort, received, base)
        check_metadata(update, self.roster.examples(update.participant))
        if self.cfg.regions.enabled:
            check_region(update, self.privacy.accounted)
        assert r is not None and task is not None
        if r.secure is not None:
            return r.secure.check(update)
        try:
            tensors = self.codec.unpack(update.payload, shared_seed=task.codec_seed)
        except CodecError as e:
            raise UpdateRejected(
                f"update from '{update.participant}': {e.problem}", fix=e.fix, reason="payload"
            ) from e
        check_finite(update.participant, tensors)
        return tensors

    def accept(self, update: Update, tensors: Tensors) -> None:
        """Fold a checked update's decoded tensors into the round's accumulator."""
        r = self.current
        if r is None or update.participant in r.received:
            raise UpdateRejected(
                f"update from '{update.participant}' cannot be accepted twice or outside a round",
                fix="check it first",
                reason="already_uploaded",
            )
        task = r.tasks[update.participant]
        if r.secure is not None:
            r.secure.add(update.participant, tensors, task.weight)
        else:
            tensors, weight, below = self.privacy.prepare(task, tensors, update.num_examples)
            if self.buffered:  # FedBuff: a stale update moves the model less
                tensors = self.inflight.weigh(update.participant, tensors, r.round)
            r.accumulator.add(update.participant, tensors, weight, below)
        # Only now is it counted, with its metadata (the accumulator holds the tensors).
        r.received[update.participant] = replace(update, payload=b"")
        r.bytes_up[update.participant] = len(update.payload)

    def decide(self, now: float, more: int = 0) -> Decision:
        """What the trigger says of the open round at ``now`` ("wait" with none open), or
        would say with ``more`` updates received."""
        r = self.current
        if r is None:
            return "wait"
        received = len(r.received) + more
        return self.trigger.decide(RoundProgress(len(r.tasks), received, now, r.deadline))

    def aggregate_round(self) -> Commit:
        """The open round's result, not yet committed: nothing changes until ``commit``.
        SecAggAborted if a secure sum cannot be reconstructed, RoundAborted if too few
        updates arrived for the aggregation rule."""
        r, (combined, assessment) = self.current, self.combined()
        assert r is not None
        st = self.state
        agg, privacy_metrics, ledger = self.privacy.release(
            combined, self.state.privacy, self.expected_cohort, r.secure is not None, r.round
        )
        step = server_step(self.cfg.server, st.params, agg.mean(), st.server_state)
        published = self.publisher.publish(step[0], st.published, r.round)
        metrics = {**self._round_metrics(r), **privacy_metrics}
        ups, used = list(r.received.values()), combined.weights
        return round_commit(
            st, r.round, r.version, ups, used, step, published, metrics, ledger, assessment
        )

    def combined(self) -> tuple[Aggregate, Assessment | None]:
        """The open round's updates combined and screened ([detect]), before privacy and
        the server step (what a regional coordinator sends its root); changes nothing.
        RoundAborted if too few arrived for the aggregation rule."""
        if self.current is None:
            raise ZenfedError("no round is open", fix="call open_round first")
        return combine(self.current, self.rule, self.screen, self.state)

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
        self.state = result.state
        self.current = None
        self.inflight.carry(self.state.round, drop_all=r is None)  # r None: a rollback
        return result.version

    def rejection(self, result: Commit) -> CoordinatorState:
        """The state once the open round's ``result`` is refused (an evaluation gate): the
        current version stays, the round number moves on, and a noised release is still
        charged to the privacy ledger. Changes nothing; the caller adopts it."""
        return replace(self.state, round=self.state.round + 1, privacy=result.state.privacy)

    def close_round(self) -> GlobalVersion:
        """Aggregate what arrived, take the server optimizer step, commit a new version."""
        return self.commit(self.aggregate_round())

    def _round_metrics(self, r: OpenRound) -> dict[str, float]:
        dense, ups = self.dense_update_bytes, list(r.received.values())
        if not self.buffered:
            return round_metrics(ups, len(r.tasks), r.bytes_up, r.bytes_down, dense)
        metrics = round_metrics(ups, len(ups), r.bytes_up, r.bytes_down, dense)
        return metrics | self.inflight.metrics(ups, r.round)

    def abort_round(self) -> None:
        """Drop the open round without a new version (what arrived is discarded; under
        buffered aggregation the tasks in flight go on)."""
        self.current = None

    def skip_round(self, reason: str) -> None:
        """Abort the open round (if any) and move on to the next round number."""
        self.abort_round()
        self.state = replace(self.state, round=self.state.round + 1)
        self.last_skip = reason

    # ---- the state's other transitions (the engine is its only writer) ---------------------

    def adopt(self, state: CoordinatorState) -> None:
        """Make ``state`` current: a saved one (a restart, a resumed run), or one made by
        a transition below and stored by a journal first."""
        self.state = state

    def renumber(self, server_round: int) -> None:
        """Move the round counter to ``server_round``: a region following its root's
        round, or a restart whose open round came after rounds skipped without a row."""
        self.state = replace(self.state, round=server_round)

    def rejected(self, kept: CoordinatorState) -> None:
        """The open round's result was refused (``rejection``): the round ends, ``kept``
        (once a journal has stored it) is the state from now on."""
        self.abort_round()
        self.state = kept

    def reinstatement(self, participant: str, label: str | None = None) -> CoordinatorState:
        """The state with ``participant``'s quarantine lifted and its reputation fresh
        (ZenfedError if it is not quarantined); changes nothing: ``adopt`` it once
        stored."""
        return reinstate(self.state, participant, label)

    # ---- what the open round looks like from outside --------------------------------------

    @property
    def open_round_info(self) -> tuple[int, frozenset[str], frozenset[str]] | None:
        """(round, cohort, who has uploaded) of the open round, or None."""
        r = self.current
        return None if r is None else (r.round, frozenset(r.tasks), frozenset(r.received))

    def withdraw(self, participant: str) -> None:
        """Leave ``participant`` (revoked in the roster) out of the open round's cohort
        unless it already uploaded (a secure round treats it as a dropout: its masks are
        already in the other participants' shares)."""
        r = self.current
        if self.buffered:
            self.forget(participant)
        elif r is not None and r.secure is None and participant not in r.received:
            r.tasks.pop(participant, None)
            if not r.tasks:  # nobody left: the trigger aborts it at the deadline
                r.deadline = -math.inf

    def _declared(self, tasks: list[Task]) -> dict[str, int]:
        """The examples each task's participant declared (what bounds its weight)."""
        return {t.participant: self.roster.examples(t.participant) for t in tasks}

    # ---- privacy and evaluation, through their parts --------------------------------------

    @property
    def expected_cohort(self) -> float:
        """q * N under Poisson sampling (buffered: k; a root over regions: N the pools
        its regions reported in the open round): the fixed denominator of DP-FedAvg."""
        if self.buffered:
            return float(self.cfg.buffered.k)
        if self.cfg.regions.enabled:  # the participants the regions sample from
            r = self.current
            pools = (u.pool_size or 0 for u in (r.received.values() if r else ()))
            return self.cfg.regions.fraction * sum(pools)
        return self.cfg.sampling.expected_size(len(self.pool))

    @property
    def noise_multiplier(self) -> float | None:
        """The DP noise multiplier z (None without DP)."""
        return self.privacy.noise_multiplier

    def epsilon(self) -> float:
        """Epsilon spent so far at the federation's target delta (0 without DP)."""
        return self.privacy.epsilon(self.state.privacy)

    def close_evaluation(self) -> None:
        """End the open evaluation (what reported is in its reports)."""
        self.evaluation = None

    def open_evaluation(self) -> FederatedEvaluation:
        """Every participant of the pool evaluates the current version on its held-out split."""
        self.evaluation = FederatedEvaluation(
            self.state.round - 1, self.version.id, self.participants
        )
        return self.evaluation
