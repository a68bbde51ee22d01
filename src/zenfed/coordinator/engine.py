"""The round engine: knows rounds, cohorts, versions and aggregation; knows nothing of HTTP.

    coord = Coordinator(cfg, initial_adapter, participants={"a": 120, "b": 40})
    tasks = coord.open_round()
    for update in ...: coord.submit(update)        # validated, folded into a running mean
    version = coord.close_round()                  # server optimizer step, new version

Updates are validated (open round, cohort member, no duplicate, right base version; then
the payload decodes through the federation's codec pipeline to the right names, shapes and
dtype, with finite values) before they touch anything, and folded into a running
example-weighted mean, so memory is O(model), not O(participants x model). Every transport
(in-memory for simulation, HTTP for deployment) drives the same methods. Traffic is
counted on bytes: an upload costs its payload's length, a download the length of the
serialized version the coordinator serves (``version_bytes``).

Privacy (``zenfed.privacy``): with a clip bound, tasks carry it (and each participant's
share of distributed noise); plaintext updates are clipped again here and central noise
is added to their sum. With secure aggregation the round holds a ``SecAggServer``
(``coord.secagg``) whose stages a transport drives; uploads are masked fixed-point
vectors, summed modulo 2^32 and unmasked at ``close_round``. Under DP the mean uses the
fixed denominator q * N, each released round enters the privacy ledger, and
``open_round`` refuses a round that would exceed the target epsilon.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

import numpy as np
import safetensors.numpy
import torch

from zenfed.aggregate.fedavg import WeightedMean
from zenfed.aggregate.server_opt import ServerOptState, server_step
from zenfed.compress import CodecError, Pipeline
from zenfed.compress.downlink import (
    Broadcast,
    apply_broadcast,
    diff_payload,
    downlink_pipeline,
    full_payload,
)
from zenfed.config import FederationConfig
from zenfed.coordinator.strategy import Strategy
from zenfed.errors import ZenfedError
from zenfed.privacy import dp
from zenfed.privacy.secagg import SecAggError, SecAggServer
from zenfed.privacy.secagg.protocol import decode_sum
from zenfed.protocol.messages import (
    EvalReport,
    GlobalVersion,
    Task,
    Tensors,
    Update,
    tensors_hash,
    version_id,
)

KEEP_BROADCASTS = 16  # participants more rounds behind than this download in full
MAX_COUNT = 2**31 - 1  # examples, tokens and steps of one update (32-bit database columns)
MAX_SECONDS = 1e9


class UpdateRejected(ZenfedError):
    """An update that failed validation; nothing was changed.

    ``reason`` is a short label (for metrics, the audit log and the status code a
    transport answers with): ``not_open``, ``not_in_cohort``, ``already_uploaded``,
    ``stale_version``, ``metadata``, ``weight``, ``payload``, ``non_finite``.
    """

    def __init__(self, problem: str, fix: str = "", reason: str = "payload") -> None:
        super().__init__(problem, fix)
        self.reason = reason


class RoundAborted(ZenfedError):
    """A round that cannot produce a version (empty cohort, too few secure survivors);
    the global version stays."""


@dataclass
class _OpenRound:
    round: int
    cohort: frozenset[str]
    version: str
    codec_seed: int
    mean: WeightedMean = field(default_factory=WeightedMean)
    received: dict[str, Update] = field(default_factory=dict)  # metadata; payload dropped
    bytes_up: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    secagg: SecAggServer | None = None
    below_clip: float = 0.0  # plaintext adaptive clipping: sum of (within the bound - 1/2)


@dataclass(frozen=True)
class Commit:
    """A round's result before it is committed: the new version and the state after it."""

    version: GlobalVersion
    state: CoordinatorState

    @property
    def published(self) -> Tensors:
        """The new version's tensors as participants download them."""
        return self.state.published


@dataclass
class CoordinatorState:
    """Everything needed to resume: the current global adapter and the server's memory."""

    round: int  # the next round to run
    params: Tensors  # the server's parameters
    server_state: ServerOptState
    versions: list[GlobalVersion]
    # With a downlink codec: the published version (params as the participants hold them)
    # and the last broadcasts that lead to it. Without one, public is params itself.
    public: Tensors | None = None
    broadcasts: list[Broadcast] = field(default_factory=list)
    privacy: dp.PrivacyLedger = field(default_factory=dp.PrivacyLedger)

    @property
    def published(self) -> Tensors:
        """The tensors of the current global version: what participants download."""
        return self.params if self.public is None else self.public


class Coordinator:
    """The transport-agnostic round engine of one federation."""

    def __init__(
        self,
        cfg: FederationConfig,
        initial: Tensors,
        participants: dict[str, int],
        state: CoordinatorState | None = None,
        verify_keys: dict[str, bytes] | None = None,
    ) -> None:
        self.cfg = cfg
        self.verify_keys = dict(verify_keys or {})  # Ed25519 identities (secure aggregation)
        self.strategy = Strategy(cfg)
        self.participants = dict(participants)  # who is sampled: id -> declared examples
        # Every participant's declared examples, the bound on its update's weight (kept
        # after it leaves the pool: an update it already sent is still weighed by it).
        self.examples = dict(participants)
        self.shapes = {k: tuple(v.shape) for k, v in initial.items()}
        self.codec = Pipeline(cfg.compress, self.shapes)  # a parameter that cannot fit fails here
        self.downlink = downlink_pipeline(cfg.compress, self.shapes)
        dense = Pipeline(cfg.compress.model_copy(update={"pipeline": ()}), self.shapes)
        # What one uncompressed float32 update would have cost: the ratio's reference.
        self.dense_update_bytes = len(dense.to_bytes(dense.encode(initial, shared_seed=0)))
        self._served: tuple[str, bytes] | None = None
        self._downloads: dict[str, int] = {}
        self._eval_bytes_down = 0
        self.last_traffic: dict[str, dict[str, int]] = {}
        pc = cfg.privacy
        # DP: the noise multiplier, calibrated to the target epsilon over the whole run.
        self.noise_multiplier: float | None = pc.noise_multiplier
        if pc.enabled and self.noise_multiplier is None:
            assert pc.target_epsilon is not None
            self.noise_multiplier = dp.calibrate_noise(
                pc.target_epsilon,
                pc.target_delta,
                cfg.sampling.fraction,
                cfg.run.rounds,
                pc.accountant,
            )
        if cfg.secagg.enabled:
            self.codec.require_linear("secure aggregation")
            self.codec.flat_length()  # every part must be float32 to be summed
        fresh = state is None
        if state is None:
            content = tensors_hash(initial)
            root = GlobalVersion(version_id(None, -1, content), -1, None, content=content)
            state = CoordinatorState(0, dict(initial), ServerOptState(), [root])
        self.state = state
        if fresh:  # the ledger starts empty, at the configured clip bound
            self.state.privacy = self.ledger_from_versions()
        if self.participants:
            self.round_noise()  # a noise setting that cannot work fails here, before round 1
        self._open: _OpenRound | None = None
        self.last_skip = ""  # why the last skipped round produced no version
        self._evals: dict[str, EvalReport] = {}

    @property
    def version(self) -> GlobalVersion:
        """The latest committed global version."""
        return self.state.versions[-1]

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
        self.fetch(version)  # the same check: only the current version is served
        if self._served is None or self._served[0] != version:
            self._served = (version, full_payload(self.state.published, self.version))
        return self._served[1]

    def download(self, version: str, held: str | None, participant: str = "") -> bytes:
        """What a participant holding ``held`` downloads to get ``version``.

        The broadcasts since ``held`` when a downlink codec is set and they are still kept
        (and smaller), else the full version. Bytes served to a member of the open round's
        cohort count as that participant's download in the round's traffic; others as the
        current evaluation's (``eval_bytes_down``).
        """
        full = self.version_bytes(version)
        payload = self.diff_since(held, version, len(full)) or full
        if self._open is not None and participant in self._open.cohort:
            self._downloads[participant] = self._downloads.get(participant, 0) + len(payload)
        else:  # an evaluation's download
            self._eval_bytes_down += len(payload)
        return payload

    def diff_since(self, held: str | None, version: str, full_size: int) -> bytes | None:
        """The broadcasts from ``held`` to ``version`` as one payload, if they are kept and
        smaller than the full version (``full_size`` bytes); else None."""
        chain = self.broadcasts_since(held, version)
        if not chain:
            return None
        diff = diff_payload(chain, self.version)
        return diff if len(diff) < full_size else None

    def broadcasts_since(self, held: str | None, version: str) -> list[Broadcast]:
        """The kept broadcasts from ``held`` to ``version``, or [] if they do not connect."""
        ids = [b.parent for b in self.state.broadcasts]
        if held is None or held == version or held not in ids:
            return []
        chain = self.state.broadcasts[ids.index(held) :]
        return chain if chain[-1].version == version else []

    def open_round(self) -> list[Task]:
        """Sample a cohort and return its training tasks for the next round."""
        if self._open is not None:
            raise ZenfedError(f"round {self._open.round} is still open", fix="close it first")
        self.check_budget()
        tasks = self.strategy.configure(
            self.state.round, sorted(self.participants), self.version.id
        )
        if not tasks:
            raise RoundAborted(
                f"round {self.state.round + 1}: the Poisson sample drew no participant",
                fix="the round is skipped (raise sampling.fraction to make this rarer)",
            )
        tasks, server = self._privacy_tasks(tasks)
        self.restore_round(tasks, server)
        return tasks

    @property
    def expected_cohort(self) -> float:
        """q * N under Poisson sampling: the fixed denominator of DP-FedAvg."""
        return self.cfg.sampling.fraction * len(self.participants)

    def round_noise(self) -> tuple[float, float]:
        """(stddev of the update sum's noise, stddev of the clip count's noise) this round."""
        z, clip = self.noise_multiplier, self.state.privacy.clip_norm
        if z is None or clip is None:
            return 0.0, 0.0
        pc = self.cfg.privacy
        z_update = dp.update_noise_multiplier(pc, z, self.expected_cohort)
        count = dp.count_stddev(pc, self.expected_cohort, z) if pc.adaptive_clipping else 0.0
        return z_update * clip, count

    def ledger_from_versions(self) -> dp.PrivacyLedger:
        """The privacy ledger as the committed versions' metrics record it (a restarted
        service's way back to the epsilon it had spent)."""
        ms = [v.metrics for v in self.state.versions]
        rounds = [
            (float(m["sampling_rate"]), float(m["noise_multiplier"]))
            for m in ms
            if "noise_multiplier" in m
        ]
        clips = [m["next_clip_norm"] for m in ms if "next_clip_norm" in m]
        first = self.cfg.privacy.clip_norm or self.cfg.secagg.clip_norm
        return dp.PrivacyLedger(rounds, float(clips[-1]) if clips else first)

    def epsilon(self) -> float:
        """Epsilon spent so far at the federation's target delta (0 without DP)."""
        pc = self.cfg.privacy
        return self.state.privacy.spent(pc.target_delta, pc.accountant)

    def check_budget(self) -> None:
        """PrivacyBudgetExceeded if one more round would spend more than the target epsilon."""
        pc, z = self.cfg.privacy, self.noise_multiplier
        if z is None or pc.target_epsilon is None:
            return
        after = [*self.state.privacy.rounds, (self.cfg.sampling.fraction, z)]
        eps = dp.epsilon(after, pc.target_delta, pc.accountant)
        if eps > pc.target_epsilon * (1 + 1e-9):
            raise dp.PrivacyBudgetExceeded(
                f"round {self.state.round + 1} would spend epsilon {eps:.3f} > the budget "
                f"{pc.target_epsilon:g} (delta {pc.target_delta:g}); training stops here",
                fix="release the current version, or start a new federation with a new budget",
            )

    def _privacy_tasks(self, tasks: list[Task]) -> tuple[list[Task], SecAggServer | None]:
        """Clip bound, noise shares, weights and secure-aggregation setups for the tasks, and
        the round's secure-aggregation server that made the setups (None without it)."""
        pc, sc = self.cfg.privacy, self.cfg.secagg
        clip = self.state.privacy.clip_norm
        if clip is None:
            return tasks, None
        update_std, count_std = self.round_noise()
        distributed = sc.enabled and pc.noise == "distributed"
        share = max(1, sc.min_survivors) ** 0.5  # survivors >= min_survivors: noise >= target
        top = max(self.participants[t.participant] for t in tasks)
        out = []
        for t in tasks:
            weight = 1.0 if pc.enabled else self.participants[t.participant] / top
            out.append(
                replace(
                    t,
                    clip_norm=clip,
                    noise_std=update_std / share if distributed else 0.0,
                    report_clip=pc.adaptive_clipping,
                    count_noise_std=count_std / share if distributed else 0.0,
                    weight=weight if sc.enabled else 1.0,
                )
            )
        if not sc.enabled:
            return out, None
        server = self._secagg_server(out)
        return [replace(t, secagg=server.setup_for(t.participant)) for t in out], server

    def _secagg_server(self, tasks: list[Task]) -> SecAggServer:
        sc, t0 = self.cfg.secagg, tasks[0]
        clip = t0.clip_norm or 1.0
        bound = max(clip, 1.0) + 8 * max(t0.noise_std, t0.count_noise_std)
        length = self.codec.flat_length() + (1 if t0.report_clip else 0)
        return SecAggServer(
            t0.round,
            [t.participant for t in tasks],
            self.verify_keys,
            length=length,
            bound=bound,
            degree=sc.degree,
            threshold=sc.threshold,
            min_survivors=sc.min_survivors,
            seed=t0.codec_seed,
        )

    @property
    def secagg(self) -> SecAggServer:
        """The open round's secure-aggregation server (its stages are driven by a transport)."""
        if self._open is None or self._open.secagg is None:
            raise ZenfedError("no secure-aggregation round is open", fix="open one first")
        return self._open.secagg

    def skip_round(self, reason: str) -> None:
        """Abort the open round (if any) and move on to the next round number."""
        self.abort_round()
        self.state.round += 1
        self.last_skip = reason

    def restore_round(self, tasks: list[Task], secagg: SecAggServer | None = None) -> None:
        """Open the next round with exactly these tasks (a restarted service's stored ones);
        a secure round's server is rebuilt from them unless ``secagg`` is given."""
        if not tasks or any(t.round != self.state.round for t in tasks):
            raise ZenfedError(
                f"tasks do not belong to round {self.state.round}", fix="restore the open round"
            )
        if tasks[0].version != self.version.id:
            raise ZenfedError(
                "the stored round starts from another version than the latest",
                fix="the store is inconsistent; restore it from a backup",
            )
        self._open = _OpenRound(
            self.state.round,
            frozenset(t.participant for t in tasks),
            self.version.id,
            tasks[0].codec_seed,
            tasks={t.participant: t for t in tasks},
            secagg=secagg or (self._secagg_server(tasks) if tasks[0].secagg is not None else None),
        )
        self._downloads = {}

    def abort_round(self) -> None:
        """Drop the open round without a new version (what arrived is discarded)."""
        self._open = None
        self._downloads = {}

    def enroll(self, participant: str, num_examples: int) -> None:
        """Add a participant (it joins cohorts from the next round on)."""
        self.participants[participant] = num_examples
        self.examples[participant] = num_examples

    @property
    def open_round_info(self) -> tuple[int, frozenset[str], frozenset[str]] | None:
        """(round, cohort, who has uploaded) of the open round, or None."""
        r = self._open
        return None if r is None else (r.round, r.cohort, frozenset(r.received))

    def submit(self, update: Update) -> None:
        """Validate and decode ``update``, then fold it into the round's running mean."""
        self.accept(update, self.check(update))

    def check(self, update: Update) -> Tensors:
        """Validate ``update`` and decode its payload; changes nothing (UpdateRejected).

        A service persists the accepted payload between ``check`` and ``accept``, so an
        update is counted only once it is stored.
        """
        self._validate(update)
        r = self._open
        assert r is not None
        if r.secagg is not None:
            words = _masked_words(update)
            try:
                r.secagg.check_masked(update.participant, words)
            except SecAggError as e:
                raise UpdateRejected(e.problem, fix=e.fix, reason="payload") from e
            return {"masked": torch.from_numpy(words.view(np.int32))}
        try:
            tensors = self.codec.unpack(update.payload, shared_seed=r.codec_seed)
        except CodecError as e:
            raise UpdateRejected(
                f"update from '{update.participant}': {e.problem}", fix=e.fix
            ) from e
        _check_finite(update.participant, tensors)
        return tensors

    def accept(self, update: Update, tensors: Tensors) -> None:
        """Fold a checked update's decoded tensors into the round's running mean."""
        r = self._open
        if r is None or update.participant in r.received:
            raise UpdateRejected(
                f"update from '{update.participant}' cannot be accepted twice or outside a round",
                fix="check it first",
                reason="already_uploaded",
            )
        if r.secagg is not None:
            r.secagg.receive_masked(update.participant, tensors["masked"].numpy().view(np.uint32))
        elif r.tasks[update.participant].clip_norm is not None:
            # The coordinator sees plaintext updates: it clips them itself (central DP).
            clip = float(r.tasks[update.participant].clip_norm or 0.0)
            clipped, norm = dp.clip_l2(tensors, clip)
            r.below_clip += float(norm <= clip) - 0.5  # centred, as the accounting assumes
            weight = 1.0 if self.cfg.privacy.enabled else float(update.num_examples)
            r.mean.add(clipped, weight)
        else:
            r.mean.add(tensors, float(update.num_examples))
        # Keep only metadata: the running mean already holds the tensors' contribution.
        r.received[update.participant] = replace(update, payload=b"")
        r.bytes_up[update.participant] = len(update.payload)

    def close_round(self) -> GlobalVersion:
        """Aggregate what arrived, take the server optimizer step, commit a new version."""
        return self.commit(self.aggregate_round())

    def aggregate_round(self) -> Commit:
        """The open round's result, not yet committed: nothing changes until ``commit``,
        so a service that fails to store it keeps the round open and can try again."""
        r = self._open
        if r is None:
            raise ZenfedError("no round is open", fix="call open_round first")
        if not r.received:
            raise ZenfedError(
                f"round {r.round} received no updates; the global version stays",
                fix="check the participants' errors",
            )
        mean, privacy_metrics = self._aggregate(r)
        ledger = self._ledger_after(privacy_metrics)
        if self.noise_multiplier is not None:
            pc = self.cfg.privacy
            privacy_metrics["epsilon"] = ledger.spent(pc.target_delta, pc.accountant)
            # the ledger entry itself, so a store of versions can rebuild the ledger
            privacy_metrics["noise_multiplier"] = self.noise_multiplier
            privacy_metrics["sampling_rate"] = self.cfg.sampling.fraction
        if ledger.clip_norm is not None:
            privacy_metrics["next_clip_norm"] = ledger.clip_norm
        params, server_state = server_step(
            self.cfg.server, self.state.params, mean, self.state.server_state
        )
        ups = list(r.received.values())
        metrics = {
            "train_loss": _weighted(ups, lambda u: u.train_loss, lambda u: u.num_tokens),
            "updates": float(len(ups)),
            "stragglers": float(len(r.cohort) - len(ups)),
            "steps": float(sum(u.steps for u in ups)),
            "examples_seen": float(sum(u.examples_seen for u in ups)),
            "tokens": float(sum(u.num_tokens for u in ups)),
            "client_seconds": float(sum(u.seconds for u in ups)),
            "bytes_up": float(sum(r.bytes_up.values())),
            "bytes_down": float(sum(self._downloads.values())),
            "dense_bytes_up": float(self.dense_update_bytes * len(ups)),
            **privacy_metrics,
        }
        record = [u.record_epsilon for u in ups if u.record_epsilon is not None]
        if record:  # DP-SGD: the largest epsilon any holder has spent on its records
            metrics["record_epsilon_max"] = max(record)
        public, broadcasts = self._publish(params, r.round)
        content = tensors_hash(public if public is not None else params)
        version = GlobalVersion(
            id=version_id(r.version, r.round, content),
            round=r.round,
            parent=r.version,
            participants=tuple(sorted(r.received)),
            num_examples=sum(u.num_examples for u in ups),
            metrics=metrics,
            content=content,
        )
        if broadcasts:  # the newest broadcast was made before the version id was known
            broadcasts[-1] = replace(broadcasts[-1], version=version.id)
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
            p: {"up": r.bytes_up.get(p, 0), "down": self._downloads.get(p, 0)}
            for p in sorted(r.cohort)
        }
        self.state = result.state
        self._open = None
        return result.version

    def _aggregate(self, r: _OpenRound) -> tuple[Tensors, dict[str, float]]:
        """The round's mean update and its privacy metrics (noised under DP; unmasked under
        secure aggregation). SecAggAborted if the secure sum cannot be reconstructed."""
        if r.secagg is None and r.tasks[next(iter(r.received))].clip_norm is None:
            return r.mean.result(), {}
        update_std, count_std = self.round_noise()
        pc = self.cfg.privacy
        central = pc.enabled and pc.noise == "central"
        gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
        if r.secagg is not None:
            total = decode_sum(r.secagg.finish(), r.secagg.scale)
            n = self.codec.flat_length()
            flat = total[:n]
            if central:  # where the clip bound holds: on the flat vector, before decoding
                flat = flat + np.random.default_rng().normal(0.0, update_std, n)
            parts = self.codec.unflatten(flat.astype(np.float32))
            summed = self.codec.decode(parts, shared_seed=r.codec_seed)
            below = float(total[n]) if len(total) > n else 0.0
            weight = sum(r.tasks[p].weight for p in r.received)
        else:
            summed = {k: v * r.mean.total_weight for k, v in r.mean.result().items()}
            below, weight = r.below_clip, r.mean.total_weight
            if pc.enabled:  # clipped by the coordinator itself in accept: noise here
                noise = dp.gaussian_like(summed, update_std, gen)
                summed = {k: v + noise[k] for k, v in summed.items()}
        metrics: dict[str, float] = {
            "clip_norm": float(r.tasks[next(iter(r.tasks))].clip_norm or 0)
        }
        # Clip bits travel centred (bit - 1/2: one participant moves the sum by at most
        # 1/2, the sensitivity adaptive clipping's accounting assumes).
        count = float(len(r.received))
        if pc.enabled:
            if central or r.secagg is None:
                below += float(torch.randn((), generator=gen)) * count_std
            weight = count = self.expected_cohort  # the fixed denominator q * N
            metrics["noise_std"] = update_std
        if pc.adaptive_clipping:
            metrics["below_clip_fraction"] = below / max(count, 1e-12) + 0.5
        return {k: (v / weight).to(torch.float32) for k, v in summed.items()}, metrics

    def _ledger_after(self, metrics: dict[str, float]) -> dp.PrivacyLedger:
        old = self.state.privacy
        rounds = list(old.rounds)
        if self.noise_multiplier is not None:
            rounds.append((self.cfg.sampling.fraction, self.noise_multiplier))
        clip = old.clip_norm
        if clip is not None and "below_clip_fraction" in metrics:
            clip = dp.next_clip_norm(self.cfg.privacy, clip, metrics["below_clip_fraction"])
        return dp.PrivacyLedger(rounds, clip)

    def _publish(
        self, params: Tensors, server_round: int
    ) -> tuple[Tensors | None, list[Broadcast]]:
        """Without a downlink codec: nothing to do. With one: encode params minus the
        published version, advance the published version by the decoded broadcast."""
        if self.downlink is None:
            return None, []
        old = self.state.published
        seed = int(np.random.default_rng([self.cfg.run.seed, server_round, 2]).integers(2**62))
        diff = {k: params[k] - old[k] for k in params}
        payload = self.downlink.to_bytes(
            self.downlink.encode(diff, shared_seed=seed, private_seed=seed)
        )
        public = apply_broadcast(old, self.downlink, payload, seed)
        kept = self.state.broadcasts[-(KEEP_BROADCASTS - 1) :]
        return public, [*kept, Broadcast("", self.version.id, seed, payload)]

    def evaluation_tasks(self) -> list[Task]:
        """Every enrolled participant evaluates the current version on its held-out split."""
        self._evals = {}
        self._eval_bytes_down = 0
        return [
            Task(
                round=self.state.round - 1, participant=p, version=self.version.id, kind="evaluate"
            )
            for p in sorted(self.participants)
        ]

    def submit_evaluation(self, report: EvalReport) -> None:
        """Record one participant's held-out result for the current version."""
        if report.version != self.version.id or report.participant not in self.participants:
            raise ZenfedError(
                "evaluation report for an unknown version or participant",
                fix="evaluate the current global version",
            )
        self._evals[report.participant] = report

    def evaluation_summary(self) -> dict[str, float]:
        """Federated evaluation of the current version over the reports received.

        ``eval_loss`` is the example-weighted mean of participants' held-out losses;
        ``union_loss`` is the token-weighted one, which equals the loss on the union of
        all held-out splits.
        """
        reps = [r for r in self._evals.values() if r.num_tokens]
        if not reps:
            return {}
        return {
            "eval_loss": _weighted(
                reps, lambda r: r.loss_sum / r.num_tokens, lambda r: r.num_examples
            ),
            "union_loss": sum(r.loss_sum for r in reps) / sum(r.num_tokens for r in reps),
            "eval_participants": float(len(reps)),
            "eval_bytes_down": float(self._eval_bytes_down),
        }

    def evaluation_reports(self) -> dict[str, EvalReport]:
        """The held-out reports received for the current version, by participant."""
        return dict(self._evals)

    def _validate(self, u: Update) -> None:
        r = self._open
        if r is None or u.round != r.round:
            raise UpdateRejected(
                f"update from '{u.participant}' is for round {u.round}, which is not open",
                fix="fetch the current task",
                reason="not_open",
            )
        if u.participant not in r.cohort:
            raise UpdateRejected(
                f"'{u.participant}' is not in round {r.round}'s cohort",
                fix="only sampled participants may upload",
                reason="not_in_cohort",
            )
        if u.participant in r.received:
            raise UpdateRejected(
                f"'{u.participant}' already uploaded in round {r.round}",
                fix="upload once per round",
                reason="already_uploaded",
            )
        if u.base_version != r.version:
            raise UpdateRejected(
                f"update from '{u.participant}' starts from another version",
                fix="train from the version in the task",
                reason="stale_version",
            )
        check_update_metadata(u, self.examples.get(u.participant, 0))


def check_update_metadata(u: Update, enrolled: int) -> None:
    """UpdateRejected unless every metadata field is in range: a finite loss and time,
    32-bit counts, and a weight (``num_examples``) of at least 1 and at most the
    ``enrolled`` examples the participant declared when it joined."""
    counts = {"examples_seen": u.examples_seen, "num_tokens": u.num_tokens, "steps": u.steps}
    for name, value in counts.items():
        if not 0 <= value <= MAX_COUNT:
            raise UpdateRejected(
                f"update from '{u.participant}' has {name} = {value}",
                fix=f"report {name} between 0 and {MAX_COUNT}",
                reason="metadata",
            )
    reals = {"seconds": u.seconds, "record_epsilon": u.record_epsilon or 0.0}
    for name, x in reals.items():
        if not (math.isfinite(x) and 0 <= x <= MAX_SECONDS):
            raise UpdateRejected(
                f"update from '{u.participant}' has {name} = {x}",
                fix=f"report a finite, non-negative {name}",
                reason="metadata",
            )
    if not math.isfinite(u.train_loss):
        raise UpdateRejected(
            f"update from '{u.participant}' has loss {u.train_loss} (train_loss)",
            fix="report a finite loss (a NaN loss means the update must be discarded)",
            reason="metadata",
        )
    if not 1 <= u.num_examples <= enrolled:
        raise UpdateRejected(
            f"update from '{u.participant}' declares num_examples {u.num_examples}, but it "
            f"enrolled with {enrolled} examples (its aggregation weight is bounded by them)",
            fix=f"report the training examples used, between 1 and {enrolled}",
            reason="weight",
        )


def _masked_words(update: Update) -> np.ndarray:
    """The uint32 words of a masked upload (safetensors with one tensor, ``masked``)."""
    try:
        words = safetensors.numpy.load(update.payload)["masked"]
    except Exception as e:  # safetensors raises its own errors and KeyError
        raise UpdateRejected(
            f"masked upload from '{update.participant}' is not a safetensors 'masked' tensor",
            fix="upload what SecAggClient.mask returned",
        ) from e
    if words.dtype != np.uint32 or words.ndim != 1:
        raise UpdateRejected(
            f"masked upload from '{update.participant}' is {words.dtype}, {words.ndim}-d",
            fix="upload a 1-d uint32 vector",
        )
    return words


def _check_finite(participant: str, tensors: Tensors) -> None:
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise UpdateRejected(
                f"tensor '{name}' from '{participant}' has NaN or Inf values",
                fix="discard the update and retrain",
                reason="non_finite",
            )


def _weighted(items: list, value, weight) -> float:  # type: ignore[no-untyped-def,type-arg]
    total = sum(weight(i) for i in items)
    return sum(value(i) * weight(i) for i in items) / total if total else math.nan
