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
- the trigger (trigger.py): when the open round is aggregated.
Validation (validate.py) happens before an update touches anything; ``aggregate_round``
builds the result without changing anything and ``commit`` adopts it, so a service that
fails to store a result keeps the round open. Every transport drives the engine through
``CoordinatorPort`` (port.py); traffic is counted on the bytes that cross it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from zenfed.aggregate import AGGREGATORS, Accumulator, KeepAll, ServerOptState, StreamingMean
from zenfed.aggregate.server_opt import server_step
from zenfed.compress import CodecError, Pipeline
from zenfed.compress.downlink import Publisher
from zenfed.config import FederationConfig
from zenfed.coordinator.evaluation import FederatedEvaluation
from zenfed.coordinator.secure import SecureRound
from zenfed.coordinator.state import Commit, CoordinatorState
from zenfed.coordinator.strategy import Strategy
from zenfed.coordinator.trigger import Decision, RoundProgress, SyncRound
from zenfed.coordinator.validate import (
    UpdateRejected,
    check_finite,
    check_metadata,
    check_round,
)
from zenfed.errors import ZenfedError
from zenfed.privacy.policy import PrivacyPolicy
from zenfed.privacy.secagg import SecAggServer
from zenfed.protocol.messages import GlobalVersion, Task, Update, version_id
from zenfed.tensors import Tensors, tensors_hash

Spill = Callable[[str, Tensors], Callable[[], Tensors]]  # (participant, tensors) -> loader


class RoundAborted(ZenfedError):
    """A round that cannot produce a version (empty cohort, too few secure survivors);
    the global version stays."""


@dataclass
class _OpenRound:
    tasks: dict[str, Task]
    accumulator: Accumulator
    deadline: float
    secure: SecureRound | None = None
    received: dict[str, Update] = field(default_factory=dict)  # metadata; payload dropped
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)

    @property
    def round(self) -> int:
        return next(iter(self.tasks.values())).round

    @property
    def version(self) -> str:
        return next(iter(self.tasks.values())).version


class Coordinator:
    """The transport-agnostic round engine of one federation."""

    def __init__(
        self,
        cfg: FederationConfig,
        initial: Tensors,
        participants: dict[str, int],
        state: CoordinatorState | None = None,
        verify_keys: dict[str, bytes] | None = None,
        spill: Spill | None = None,
    ) -> None:
        self.cfg = cfg
        self.participants = dict(participants)  # who is sampled: id -> declared examples
        # Every participant's declared examples, the bound on its update's weight (kept
        # after it leaves the pool: an update it already sent is still weighed by it).
        self.examples = dict(participants)
        self.names: dict[str, str] = {}  # id -> name (sampling order); default: the id
        self.verify_keys = dict(verify_keys or {})  # Ed25519 identities (secure aggregation)
        self.spill = spill  # where a keep-every-update round puts each update
        self.strategy = Strategy(cfg)
        self.rule = AGGREGATORS[cfg.server.aggregator]
        self.trigger = SyncRound(cfg.service.quorum, cfg.service.round_timeout_s)
        self.privacy = PrivacyPolicy(cfg)
        shapes = {k: tuple(v.shape) for k, v in initial.items()}
        self.codec = Pipeline(cfg.compress, shapes)  # a parameter that cannot fit fails here
        self.publisher = Publisher(cfg.compress, shapes, cfg.run.seed)
        dense = Pipeline(cfg.compress.model_copy(update={"pipeline": ()}), shapes)
        # What one uncompressed float32 update would have cost: the ratio's reference.
        self.dense_update_bytes = len(dense.to_bytes(dense.encode(initial, shared_seed=0)))
        if cfg.secagg.enabled:
            self._check_secure()
        if state is None:
            content = tensors_hash(initial)
            root = GlobalVersion(version_id(None, -1, content), -1, None, content=content)
            ledger = self.privacy.initial_ledger()
            state = CoordinatorState(0, dict(initial), ServerOptState(), [root], privacy=ledger)
        self.state = state
        if self.participants:
            self.round_noise()  # a noise setting that cannot work fails here, before round 1
        self._open: _OpenRound | None = None
        self.evaluation: FederatedEvaluation | None = None
        self.last_traffic: dict[str, dict[str, int]] = {}
        self.last_skip = ""  # why the last skipped round produced no version

    def _check_secure(self) -> None:
        self.codec.require_linear("secure aggregation")
        self.codec.flat_length()  # every part must be float32 to be summed
        if not self.rule.streaming:
            raise ZenfedError(
                f"server.aggregator = '{self.rule.name}' needs every update, and secure "
                "aggregation reveals only their sum",
                fix="use a weighted mean (fedavg) under [secagg], or turn secure aggregation off",
            )

    # ---- versions ------------------------------------------------------------------------

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

    def version_bytes(self, version: str) -> bytes:
        """``version`` in full as the wire carries it down (safetensors), built once."""
        return self.publisher.full(self.fetch(version), self.version)

    def download(self, version: str, held: str | None, participant: str = "") -> bytes:
        """What a participant holding ``held`` downloads to get ``version``, counted as its
        download in the open round (or as the current evaluation's)."""
        payload = self.publisher.payload(
            self.state.broadcasts, self.fetch(version), self.version, held
        )
        r = self._open
        if r is not None and participant in r.tasks:
            r.bytes_down[participant] = r.bytes_down.get(participant, 0) + len(payload)
        elif self.evaluation is not None:
            self.evaluation.bytes_down += len(payload)
        return payload

    def diff_since(self, held: str | None, version: str, full_size: int) -> bytes | None:
        """The broadcasts from ``held`` to the current ``version``, if kept and smaller than
        the full version (``full_size`` bytes); else None."""
        if version != self.version.id:
            return None
        return self.publisher.diff_since(self.state.broadcasts, held, self.version, full_size)

    # ---- the round's lifecycle -------------------------------------------------------------

    def open_round(self, now: float = 0.0) -> list[Task]:
        """Sample a cohort and return its training tasks for the next round."""
        if self._open is not None:
            raise ZenfedError(f"round {self._open.round} is still open", fix="close it first")
        self.privacy.check_budget(self.state.privacy, self.state.round)
        members = {p: self.names.get(p, p) for p in self.participants}
        tasks = self.strategy.configure(self.state.round, members, self.version.id)
        if not tasks:
            raise RoundAborted(
                f"round {self.state.round + 1}: the Poisson sample drew no participant",
                fix="the round is skipped (raise sampling.fraction to make this rarer)",
            )
        secure = self.cfg.secagg.enabled
        tasks = self.privacy.decorate(
            tasks, self.examples, self.state.privacy, self.expected_cohort, secure
        )
        if not secure:
            self.restore_round(tasks, self.trigger.deadline(now))
            return tasks
        tasks, server = SecureRound.attach(tasks, self.cfg.secagg, self.verify_keys, self.codec)
        self._start(tasks, self.trigger.deadline(now), server)
        return tasks

    def restore_round(self, tasks: list[Task], deadline: float = math.inf) -> None:
        """Open the next round with exactly these tasks (a restarted service's stored ones)."""
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
            secure = SecureRound(tasks, self.cfg.secagg, self.verify_keys, self.codec)
        self._start(tasks, deadline, secure)

    def _start(self, tasks: list[Task], deadline: float, secure: SecureRound | None) -> None:
        acc: Accumulator
        if secure is not None:
            acc = secure
        elif self.rule.streaming:
            acc = StreamingMean()
        else:
            acc = KeepAll(self.rule, self.spill)
        self._open = _OpenRound({t.participant: t for t in tasks}, acc, deadline, secure)

    def submit(self, update: Update) -> None:
        """Validate and decode ``update``, then fold it into the round's accumulator."""
        self.accept(update, self.check(update))

    def check(self, update: Update) -> Tensors:
        """Validate ``update`` and decode its payload; changes nothing (UpdateRejected).

        A service persists the accepted payload between ``check`` and ``accept``, so an
        update is counted only once it is stored."""
        r = self._open
        cohort, received = (r.tasks, r.received) if r else ({}, {})
        check_round(update, r.round if r else None, cohort, received, r.version if r else "")
        check_metadata(update, self.examples.get(update.participant, 0))
        assert r is not None
        if r.secure is not None:
            return r.secure.check(update)
        try:
            tensors = self.codec.unpack(
                update.payload, shared_seed=r.tasks[update.participant].codec_seed
            )
        except CodecError as e:
            raise UpdateRejected(
                f"update from '{update.participant}': {e.problem}", fix=e.fix, reason="payload"
            ) from e
        check_finite(update.participant, tensors)
        return tensors

    def accept(self, update: Update, tensors: Tensors) -> None:
        """Fold a checked update's decoded tensors into the round's accumulator."""
        r = self._open
        if r is None or update.participant in r.received:
            raise UpdateRejected(
                f"update from '{update.participant}' cannot be accepted twice or outside a round",
                fix="check it first",
                reason="already_uploaded",
            )
        task = r.tasks[update.participant]
        # Keep only metadata: the accumulator holds the tensors' contribution.
        r.received[update.participant] = replace(update, payload=b"")
        r.bytes_up[update.participant] = len(update.payload)
        if r.secure is not None:
            r.secure.add(update.participant, tensors, task.weight)
            return
        tensors, weight, below = self.privacy.prepare(task, tensors, update.num_examples)
        r.accumulator.add(update.participant, tensors, weight, below)

    def decide(self, now: float) -> Decision:
        """What the trigger says of the open round at ``now`` ("wait" with none open)."""
        r = self._open
        if r is None:
            return "wait"
        return self.trigger.decide(RoundProgress(len(r.tasks), len(r.received), now, r.deadline))

    def aggregate_round(self) -> Commit:
        """The open round's result, not yet committed: nothing changes until ``commit``.
        SecAggAborted if a secure sum cannot be reconstructed."""
        r = self._open
        if r is None:
            raise ZenfedError("no round is open", fix="call open_round first")
        if not r.received:
            raise ZenfedError(
                f"round {r.round} received no updates; the global version stays",
                fix="check the participants' errors",
            )
        agg, privacy_metrics, ledger = self.privacy.release(
            r.accumulator.result(), self.state.privacy, self.expected_cohort, r.secure is not None
        )
        params, server_state = server_step(
            self.cfg.server, self.state.params, agg.mean(), self.state.server_state
        )
        public, broadcast = self.publisher.publish(params, self.state.published, r.round)
        content = tensors_hash(public if public is not None else params)
        ups = list(r.received.values())
        version = GlobalVersion(
            id=version_id(r.version, r.round, content),
            round=r.round,
            parent=r.version,
            participants=tuple(sorted(r.received)),
            num_examples=sum(u.num_examples for u in ups),
            metrics={**self._metrics(r), **privacy_metrics},
            content=content,
        )
        broadcasts = Publisher.chain(self.state.broadcasts, broadcast, version)
        state = CoordinatorState(
            r.round + 1,
            params,
            server_state,
            [*self.state.versions, version],
            public,
            broadcasts,
            ledger,
        )
        return Commit(version, state)

    def commit(self, result: Commit) -> GlobalVersion:
        """Make ``result`` (from ``aggregate_round`` of the open round) the global state."""
        r = self._open
        if r is None or result.version.parent != self.version.id:
            raise ZenfedError("this result is not of the open round", fix="aggregate it again")
        self.last_traffic = {
            p: {"up": r.bytes_up.get(p, 0), "down": r.bytes_down.get(p, 0)} for p in sorted(r.tasks)
        }
        self.state = result.state
        self._open = None
        return result.version

    def close_round(self) -> GlobalVersion:
        """Aggregate what arrived, take the server optimizer step, commit a new version."""
        return self.commit(self.aggregate_round())

    def abort_round(self) -> None:
        """Drop the open round without a new version (what arrived is discarded)."""
        self._open = None

    def skip_round(self, reason: str) -> None:
        """Abort the open round (if any) and move on to the next round number."""
        self.abort_round()
        self.state.round += 1
        self.last_skip = reason

    def _metrics(self, r: _OpenRound) -> dict[str, float]:
        ups = list(r.received.values())
        tokens = sum(u.num_tokens for u in ups)
        metrics = {
            "train_loss": sum(u.train_loss * u.num_tokens for u in ups) / tokens
            if tokens
            else math.nan,
            "updates": float(len(ups)),
            "stragglers": float(len(r.tasks) - len(ups)),
            "steps": float(sum(u.steps for u in ups)),
            "examples_seen": float(sum(u.examples_seen for u in ups)),
            "tokens": float(tokens),
            "client_seconds": float(sum(u.seconds for u in ups)),
            "bytes_up": float(sum(r.bytes_up.values())),
            "bytes_down": float(sum(r.bytes_down.values())),
            "dense_bytes_up": float(self.dense_update_bytes * len(ups)),
        }
        record = [u.record_epsilon for u in ups if u.record_epsilon is not None]
        if record:  # DP-SGD: the largest epsilon any holder has spent on its records
            metrics["record_epsilon_max"] = max(record)
        return metrics

    # ---- what the open round looks like from outside --------------------------------------

    @property
    def open_round_info(self) -> tuple[int, frozenset[str], frozenset[str]] | None:
        """(round, cohort, who has uploaded) of the open round, or None."""
        r = self._open
        return None if r is None else (r.round, frozenset(r.tasks), frozenset(r.received))

    @property
    def codec_seed(self) -> int:
        """The open round's shared codec seed (random-k and sketch coordinates)."""
        if self._open is None:
            raise ZenfedError("no round is open", fix="open one first")
        return next(iter(self._open.tasks.values())).codec_seed

    @property
    def deadline(self) -> float | None:
        """When the open round ends at the latest (None with none open)."""
        return None if self._open is None else self._open.deadline

    def task_for(self, participant: str) -> Task | None:
        """``participant``'s task in the open round, unless it has none or uploaded."""
        r = self._open
        if r is None or participant in r.received:
            return None
        return r.tasks.get(participant)

    @property
    def secure(self) -> bool:
        """Whether the open round runs secure aggregation."""
        return self._open is not None and self._open.secure is not None

    @property
    def secagg(self) -> SecAggServer:
        """The open round's secure-aggregation server (its stages are driven by the port)."""
        if self._open is None or self._open.secure is None:
            raise ZenfedError("no secure-aggregation round is open", fix="open one first")
        return self._open.secure.server

    def enroll(self, participant: str, num_examples: int, name: str | None = None) -> None:
        """Add a participant (it joins cohorts from the next round on)."""
        self.participants[participant] = num_examples
        self.examples[participant] = num_examples
        if name is not None:
            self.names[participant] = name

    # ---- privacy and evaluation, through their parts --------------------------------------

    @property
    def expected_cohort(self) -> float:
        """q * N under Poisson sampling: the fixed denominator of DP-FedAvg."""
        return self.cfg.sampling.fraction * len(self.participants)

    @property
    def noise_multiplier(self) -> float | None:
        """The DP noise multiplier z (None without DP)."""
        return self.privacy.noise_multiplier

    def round_noise(self) -> tuple[float, float]:
        """(stddev of the update sum's noise, stddev of the clip count's noise) this round."""
        return self.privacy.noise(self.state.privacy, self.expected_cohort)

    def epsilon(self) -> float:
        """Epsilon spent so far at the federation's target delta (0 without DP)."""
        return self.privacy.epsilon(self.state.privacy)

    def check_budget(self) -> None:
        """PrivacyBudgetExceeded if one more round would spend more than the target epsilon."""
        self.privacy.check_budget(self.state.privacy, self.state.round)

    def open_evaluation(self) -> FederatedEvaluation:
        """Every participant of the pool evaluates the current version on its held-out split."""
        self.evaluation = FederatedEvaluation(
            self.state.round - 1, self.version.id, self.participants
        )
        return self.evaluation
