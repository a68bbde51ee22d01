"""The coordinator of a deployment: the round engine, with a database and a blob store
under it so that enrollment, every accepted update and every version survive a crash.

    fed = PersistentCoordinator(cfg, initial, Database(url), BlobStore(root))
    token = fed.invite("clinic-7")                                  # operator
    pid = fed.enroll(token, "clinic-7", public_key, capacity, data)  # participant
    fed.tick()                                                      # open/close on time
    task = fed.next_task(pid)                                       # None: nothing to do
    fed.submit(update)                                              # stored, then counted

A submit runs ``engine.check`` (validate and decode; nothing changes), writes the payload
to the blob store (atomic), commits one transaction (the update's row and its audit
line), and only then ``engine.accept``. A crash before the commit loses nothing that was
acknowledged: the participant retries. After it, a restart replays the open round's
stored updates into the engine, so none is lost and none counted twice. A retry of an
accepted upload (same participant, round and payload hash) is acknowledged again and not
counted. A round's result is stored before the engine adopts it (``aggregate_round``, then
the version's blobs and rows, then ``commit``): a failed store leaves the round open and
the next tick tries again. Blobs that no row names (a crash between the two) are removed
at start. This class knows nothing of HTTP: ``transport.http`` serves it.

Only participants that have asked for a task at least once are sampled, so an agent that
enrolled and never came back does not hold up every round until its deadline; enrolling
again with the same key and token (a retry whose answer was lost) gets the same answer.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import safetensors.torch
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from zenfed.aggregate.server_opt import ServerOptState
from zenfed.compress.downlink import Broadcast, full_payload
from zenfed.config import FederationConfig
from zenfed.coordinator.engine import (
    KEEP_BROADCASTS,
    MAX_COUNT,
    Commit,
    Coordinator,
    CoordinatorState,
    RoundAborted,
    UpdateRejected,
)
from zenfed.errors import ZenfedError
from zenfed.privacy.dp import PrivacyBudgetExceeded
from zenfed.privacy.secagg import SecAggAborted, SecAggError, SecAggServer, wire
from zenfed.protocol.auth import (
    MAX_SKEW_S,
    AuthError,
    check_body,
    participant_id,
    verify_signature,
)
from zenfed.protocol.messages import (
    GlobalVersion,
    Task,
    Tensors,
    Update,
    safetensors_metadata,
    tensors_hash,
)
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Audit, Database, EnrollmentToken, Nonce, Participant, Round, Version
from zenfed.store.db import Update as UpdateRow
from zenfed.store.db import audit as audit_row

log = logging.getLogger(__name__)


def _log(event: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, event, extra={"fields": fields})


class EnrollmentRefused(ZenfedError):
    """An enrollment that cannot proceed (token, requirements, identity)."""


class UnknownParticipant(ZenfedError):
    """An operator named a participant that is not enrolled."""


class PersistentCoordinator:
    """The engine plus durable state: what ``zenfed serve`` runs."""

    def __init__(
        self,
        cfg: FederationConfig,
        initial: Tensors,
        db: Database,
        blobs: BlobStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg, self.db, self.blobs, self.clock = cfg, db, blobs, clock
        self.rejections: Counter[str] = Counter()
        db.upgrade()
        self.engine = Coordinator(cfg, initial, {})
        self._round_id: int | None = None  # the open attempt's row
        self._tasks: dict[str, Task] = {}
        self._deadline = 0.0
        self._stage_deadline = 0.0  # secure rounds: when the current stage closes anyway
        self.exhausted = ""  # why no further round may run (the privacy budget is spent)
        # Enrolled, not revoked: id -> declared examples. Those that have asked for a task
        # are also in engine.participants, the pool cohorts are drawn from.
        self.enrolled: dict[str, int] = {}
        with db.transaction() as s:
            known = s.scalar(select(Version.id).limit(1))
        if known is None:
            st = self.engine.state
            self._store_version(Commit(self.engine.version, st), None, "initial")
        else:
            self._recover()
        self._collect_orphans()

    # ---- enrollment ----------------------------------------------------------------------

    def invite(self, label: str = "", ttl_s: float | None = None) -> str:
        """A new single-use enrollment token (only its hash is stored)."""
        token = secrets.token_urlsafe(24)
        ttl = self.cfg.service.invite_ttl_s if ttl_s is None else ttl_s
        with self.db.transaction() as s:
            s.add(
                EnrollmentToken(
                    token_hash=_sha(token.encode()),
                    label=label,
                    expires_at=self._now() + timedelta(seconds=ttl),
                )
            )
            audit_row(s, "operator", "invite", {"label": label, "ttl_s": ttl})
        return token

    def enroll(
        self,
        token: str,
        name: str,
        public_key: bytes,
        capacity: dict[str, Any],
        data_profile: dict[str, Any],
    ) -> str:
        """Enroll a participant with a token; returns its id. Refusals name the reason.

        Idempotent: the same key with the token it already used (a retry whose answer
        was lost) gets the same id again, and nothing changes.
        """
        svc = self.cfg.service
        if len(public_key) != 32:
            raise EnrollmentRefused("public key is not 32 raw Ed25519 bytes", fix="send the key")
        memory = capacity.get("memory_gb", 0.0)
        if not isinstance(memory, int | float) or memory < svc.min_memory_gb:
            raise EnrollmentRefused(
                f"declared memory {memory} GB is below the federation's {svc.min_memory_gb} GB",
                fix="join from a machine that meets the requirements",
            )
        examples = data_profile.get("examples", 0)
        if not isinstance(examples, int) or not svc.min_examples <= examples <= MAX_COUNT:
            raise EnrollmentRefused(
                f"declared {examples} examples; the federation needs at least "
                f"{svc.min_examples} (and at most {MAX_COUNT})",
                fix="declare the number of training examples",
            )
        pid = participant_id(public_key)
        with self.db.transaction() as s:
            tok = s.get(EnrollmentToken, _sha(token.encode()), with_for_update=True)
            if tok is None:
                raise EnrollmentRefused("unknown enrollment token", fix="ask the operator")
            known = s.get(Participant, pid)
            if tok.used_by == pid and known is not None and known.name == name:
                if known.revoked_at is not None:
                    raise EnrollmentRefused("this key was revoked", fix="ask the operator")
                return pid  # a retry: the same answer, nothing changes
            if tok.used_at is not None:
                raise EnrollmentRefused("enrollment token was already used", fix="ask for another")
            if _aware(tok.expires_at) < self._now():
                raise EnrollmentRefused("enrollment token has expired", fix="ask for another")
            if known is not None:
                raise EnrollmentRefused("this key is already enrolled", fix="use a new identity")
            if s.scalar(select(Participant.id).where(Participant.name == name)) is not None:
                raise EnrollmentRefused(f"the name '{name}' is taken", fix="choose another name")
            s.add(
                Participant(
                    id=pid,
                    name=name,
                    public_key=public_key,
                    capacity=capacity,
                    data_profile=data_profile,
                )
            )
            s.flush()
            tok.used_at, tok.used_by = self._now(), pid
            audit_row(s, pid, "enroll", {"name": name, "capacity": capacity, "data": data_profile})
        self.enrolled[pid] = examples
        self.engine.verify_keys[pid] = public_key  # signs its secure-aggregation keys
        _log("enroll", participant=pid, name=name, examples=examples)
        return pid

    def revoke(self, who: str) -> str:
        """Revoke a participant by name (or id): its requests are refused from now on and
        it is sampled no more. Returns its id. Audited."""
        with self.db.transaction() as s:
            p = s.scalar(select(Participant).where(Participant.name == who)) or s.get(
                Participant, who
            )
            if p is None:
                raise UnknownParticipant(
                    f"no participant named '{who[:200]}'", fix="see zenfed status for the names"
                )
            if p.revoked_at is None:
                p.revoked_at = self._now()
                audit_row(s, "operator", "revoke", {"participant": p.id, "name": p.name})
            pid = p.id
        self.enrolled.pop(pid, None)
        self.engine.participants.pop(pid, None)
        _log("revoke", participant=pid)
        return pid

    def whoami(self, pid: str) -> dict[str, Any]:
        """What the coordinator knows of an (authenticated) participant."""
        with self.db.transaction() as s:
            p = s.get(Participant, pid)
            assert p is not None  # authenticated callers exist
            return {"participant": p.id, "name": p.name, "data_profile": p.data_profile}

    def authenticate(
        self, pid: str, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> str:
        """Check a signed request from ``pid``; records its nonce. Returns ``pid``."""
        self.authenticate_headers(pid, method, path, headers)
        check_body(body, headers)
        return pid

    def authenticate_headers(
        self, pid: str, method: str, path: str, headers: dict[str, str]
    ) -> str:
        """Everything of a signed request that can be checked before its body arrives (a
        known, unrevoked key; the signature over the declared body hash; a fresh
        timestamp; an unused nonce, which is recorded). The body must then match its
        declared hash (``protocol.auth.check_body``)."""
        with self.db.transaction() as s:
            p = s.get(Participant, pid)
            if p is None or p.revoked_at is not None:
                what = "unknown" if p is None else "revoked"
                raise AuthError(f"participant {pid[:12]} is {what}", fix="enroll again")
            nonce = verify_signature(p.public_key, method, path, headers, self.clock())
        try:
            with self.db.transaction() as s:
                s.add(Nonce(participant_id=pid, nonce=nonce))
        except IntegrityError as e:
            raise AuthError("request nonce was already used (a replay)", fix="sign anew") from e
        return pid

    # ---- rounds ----------------------------------------------------------------------------

    def tick(self) -> GlobalVersion | None:
        """Open a round when none is open, close one at quorum or deadline."""
        info = self.engine.open_round_info
        if info is None:
            if self._can_open():
                self._open()
            return None
        _, cohort, received = info
        if self._secure():
            return self._tick_secure()
        if len(received) >= math.ceil(self.cfg.service.quorum * len(cohort)):
            return self._close("quorum")
        if self.clock() >= self._deadline:
            if received:
                return self._close("deadline")
            self._abort("deadline passed with no update")
        return None

    def next_task(self, pid: str) -> Task | None:
        """The open round's task for ``pid``, unless it has none or already uploaded (or,
        in a secure round, already advertised keys or missed the advertising stage: its
        secrets live in one agent process)."""
        if pid not in self.engine.participants and pid in self.enrolled:
            self._ready(pid)
        info = self.engine.open_round_info
        if info is None or pid not in self._tasks or pid in info[2]:
            return None
        if self._secure():
            srv = self.engine.secagg
            if srv.stage_name != "advertise_keys" or pid in srv.keys:
                return None
        return self._tasks[pid]

    def _ready(self, pid: str) -> None:
        """``pid`` asked for work for the first time: it joins the cohorts from now on."""
        with self.db.transaction() as s:
            p = s.get(Participant, pid)
            if p is not None and p.polled_at is None:
                p.polled_at = self._now()
        self.engine.enroll(pid, self.enrolled[pid])

    # ---- secure aggregation stages ---------------------------------------------------------

    def _secure(self) -> bool:
        return bool(self._tasks) and next(iter(self._tasks.values())).secagg is not None

    def _tick_secure(self) -> GlobalVersion | None:
        """Close the current stage when everyone still in it answered, or at its deadline;
        the last stage closes the round. Too few survivors abort the round."""
        srv = self.engine.secagg
        members, answered = srv.progress()
        done = answered >= members
        if not done and self.clock() < self._stage_deadline:
            return None
        try:
            if srv.stage_name == "unmask":
                return self._close("secure aggregation complete")
            srv.close_stage()
        except SecAggAborted as e:
            self._abort(e.problem)
            return None
        timeout = self.cfg.secagg.stage_timeout_s
        if srv.stage_name == "masked_input":  # the training stage gets the round's time
            timeout = self.cfg.service.round_timeout_s
        self._stage_deadline = self.clock() + timeout
        _log("secagg_stage", round=srv.round, stage=srv.stage_name)
        return None

    def secagg_post(self, pid: str, server_round: int, stage: str, body: dict[str, Any]) -> None:
        """A participant's message for ``stage`` of the open secure round."""
        srv = self._secure_round(server_round)
        if stage == "advertise_keys":
            srv.receive_keys(wire.keys_from_json(pid, body.get("keys")))
        elif stage == "share_keys":
            srv.receive_shares(pid, wire.blobs_from_json(body.get("shares"), "shares"))
        elif stage == "unmask":
            srv.receive_unmask(pid, wire.blobs_from_json(body.get("shares"), "shares"))
        else:
            raise SecAggError(
                f"nothing is posted for stage '{stage}'",
                fix="post advertise_keys, share_keys or unmask; masked input is an upload",
            )
        with self.db.transaction() as s:
            audit_row(s, pid, f"secagg_{stage}", {"round": server_round})

    def secagg_get(self, pid: str, server_round: int, stage: str) -> dict[str, Any] | None:
        """What ``pid`` needs to do ``stage`` (None while the stage has not started)."""
        srv = self._secure_round(server_round)
        order = ("advertise_keys", "share_keys", "masked_input", "unmask")
        if stage not in order[1:]:
            raise SecAggError(f"nothing to fetch for stage '{stage}'", fix=f"one of {order[1:]}")
        if order.index(srv.stage_name) < order.index(stage):
            return None
        if order.index(srv.stage_name) > order.index(stage):
            raise SecAggError(
                f"stage {stage} of round {server_round + 1} is over", fix="the round went on"
            )
        if stage == "share_keys":
            keys = srv.keys_for(pid)
            return {
                "keys": {v: wire.keys_to_json(k) for v, k in keys.items()},
                "identities": {v: wire.b64(srv.verify_keys[v]) for v in keys},
            }
        if stage == "masked_input":
            return {"inbox": wire.blobs_to_json(srv.inbox(pid))}
        if pid not in srv.masked:
            raise SecAggError(f"'{pid}' uploaded no masked input", fix="the round went on")
        req = srv.unmask_request()
        return {"round": req.round, "survivors": req.survivors, "dropped": req.dropped}

    def _secure_round(self, server_round: int) -> SecAggServer:
        info = self.engine.open_round_info
        if info is None or info[0] != server_round or not self._secure():
            raise SecAggError(
                f"round {server_round + 1} is not an open secure round",
                fix="fetch the current task",
            )
        return self.engine.secagg

    def submit(self, update: Update) -> Literal["accepted", "duplicate"]:
        """Validate, store, then count ``update``; a retry of a stored one is acknowledged.

        A refusal is counted, logged and audited, and stores nothing.
        """
        digest = _sha(update.payload)
        if self._round_id is not None and update.round == self.engine.state.round:
            with self.db.transaction() as s:
                prior = s.scalar(
                    select(UpdateRow).where(
                        UpdateRow.round_id == self._round_id,
                        UpdateRow.participant_id == update.participant,
                    )
                )
            if prior is not None and prior.payload_sha256 == digest:
                return "duplicate"
        try:
            tensors = self.engine.check(update)
        except UpdateRejected as e:
            self._refused(update, e)
            raise
        existed = self.blobs.has(digest)
        self.blobs.put(update.payload)
        try:
            with self.db.transaction() as s:
                s.add(_update_row(update, self._round_id or 0, digest))
                audit_row(
                    s,
                    update.participant,
                    "upload",
                    {"round": update.round, "sha256": digest, "bytes": len(update.payload)},
                )
        except BaseException:
            if not existed:  # no blob without its row
                self.blobs.delete(digest)
            raise
        self.engine.accept(update, tensors)
        _log(
            "upload", participant=update.participant, round=update.round, bytes=len(update.payload)
        )
        return "accepted"

    def _refused(self, update: Update, e: UpdateRejected) -> None:
        self.rejections[e.reason] += 1
        _log("reject", logging.WARNING, participant=update.participant, reason=e.problem)
        with self.db.transaction() as s:
            detail = {"round": update.round, "reason": e.problem, "kind": e.reason}
            audit_row(s, update.participant, "reject_update", detail)

    def finished(self) -> bool:
        """Whether every round has run (no round is open and none will be)."""
        done = self.engine.state.round >= self.cfg.run.rounds or bool(self.exhausted)
        return self.engine.open_round_info is None and done

    def version_blob(self, version: str) -> str:
        """The blob digest of a committed version (as downloaded in full)."""
        with self.db.transaction() as s:
            row = s.get(Version, version)
        if row is None:
            raise ZenfedError(f"no version {version[:12]}", fix="ask for the current one")
        return row.blob_sha256

    def status(self) -> dict[str, Any]:
        """The federation at a glance: round, version, participants, open round."""
        info = self.engine.open_round_info
        return {
            "round": self.engine.state.round,
            "rounds": self.cfg.run.rounds,
            "version": self.engine.version.id,
            "participants": len(self.enrolled),
            "ready": len(self.engine.participants),
            "revoked": self._revoked_count(),
            "epsilon": self.engine.epsilon() if self.engine.noise_multiplier else None,
            "stopped": self.exhausted or None,
            "open_round": None
            if info is None
            else {
                "round": info[0],
                "cohort": len(info[1]),
                "received": len(info[2]),
                "deadline_in_s": round(self._deadline - self.clock(), 1),
            },
            "rejections": dict(self.rejections),
        }

    def _revoked_count(self) -> int:
        with self.db.transaction() as s:
            rows = s.scalars(select(Participant.id).where(Participant.revoked_at.is_not(None)))
            return len(rows.all())

    # ---- internals -------------------------------------------------------------------------

    def _can_open(self) -> bool:
        enough = len(self.engine.participants) >= max(1, self.cfg.sampling.min_participants)
        if not (enough and self.engine.state.round < self.cfg.run.rounds) or self.exhausted:
            return False
        try:
            self.engine.check_budget()
        except PrivacyBudgetExceeded as e:
            self.exhausted = e.problem
            with self.db.transaction() as s:
                audit_row(s, "coordinator", "privacy_budget_exhausted", {"reason": e.problem})
            _log("privacy_budget_exhausted", logging.WARNING, reason=e.problem)
            return False
        return True

    def _open(self) -> None:
        try:
            tasks = self.engine.open_round()
        except (RoundAborted, SecAggAborted) as e:
            self.engine.skip_round(e.problem)
            with self.db.transaction() as s:
                audit_row(s, "coordinator", "skip_round", {"reason": e.problem})
            _log("skip_round", logging.WARNING, reason=e.problem)
            return
        deadline = self.clock() + self.cfg.service.round_timeout_s
        try:
            with self.db.transaction() as s:
                row = Round(
                    number=tasks[0].round,
                    status="open",
                    base_version=tasks[0].version,
                    codec_seed=tasks[0].codec_seed,
                    tasks=[asdict(t) for t in tasks],
                    deadline_at=datetime.fromtimestamp(deadline, UTC),
                )
                s.add(row)
                s.flush()
                audit_row(s, "coordinator", "open_round", {"round": row.number, "id": row.id})
                self._round_id = row.id
        except BaseException:
            self.engine.abort_round()
            raise
        self._tasks = {t.participant: t for t in tasks}
        self._deadline = deadline
        self._stage_deadline = self.clock() + self.cfg.secagg.stage_timeout_s
        _log("open_round", round=tasks[0].round, cohort=len(tasks))
        # Nonces older than the accepted clock skew can never be replayed: forget them.
        with self.db.transaction() as s:
            cutoff = self._now() - timedelta(seconds=2 * MAX_SKEW_S)
            s.execute(delete(Nonce).where(Nonce.seen_at < cutoff))

    def _close(self, why: str) -> GlobalVersion:
        result = self.engine.aggregate_round()
        self._store_version(result, self._round_id, why)  # fails: the round stays open
        version = self.engine.commit(result)
        _log(
            "close_round", round=version.round, version=version.id, why=why, metrics=version.metrics
        )
        self._round_id, self._tasks = None, {}
        return version

    def _abort(self, reason: str) -> None:
        with self.db.transaction() as s:
            row = s.get(Round, self._round_id)
            assert row is not None
            row.status, row.closed_at, row.reason = "aborted", self._now(), reason
            audit_row(s, "coordinator", "abort_round", {"round": row.number, "reason": reason})
        self.engine.abort_round()
        self._round_id, self._tasks = None, {}
        _log("abort_round", logging.WARNING, reason=reason)

    def _store_version(self, result: Commit, round_id: int | None, why: str) -> None:
        """Blobs first (atomic, idempotent), then one transaction for the rows."""
        st, v = result.state, result.version
        full = self.blobs.put(full_payload(st.published, v))
        server = self.blobs.put(_server_state_bytes(st))
        bc = st.broadcasts[-1] if st.broadcasts and st.broadcasts[-1].version == v.id else None
        bc_sha = self.blobs.put(bc.payload) if bc else None
        with self.db.transaction() as s:
            s.add(
                Version(
                    id=v.id,
                    content=v.content,
                    round=v.round,
                    parent=v.parent,
                    blob_sha256=full,
                    server_state_sha256=server,
                    broadcast_sha256=bc_sha,
                    broadcast_seed=bc.seed if bc else None,
                    participants=list(v.participants),
                    num_examples=v.num_examples,
                    metrics=v.metrics,
                )
            )
            if round_id is not None:
                row = s.get(Round, round_id)
                assert row is not None
                row.status, row.closed_at, row.result_version = "closed", self._now(), v.id
                row.reason = why
            audit_row(s, "coordinator", "commit_version", {"version": v.id, "round": v.round})

    def _collect_orphans(self) -> None:
        """Remove blobs that no row names: an upload or version whose transaction never
        committed (a crash, a full disk). Nothing acknowledged is among them."""
        with self.db.transaction() as s:
            named = set(s.scalars(select(UpdateRow.payload_sha256)))
            for row in s.scalars(select(Version)):
                named |= {row.blob_sha256, row.server_state_sha256, row.broadcast_sha256 or ""}
        orphans = [d for d in self.blobs.digests() if d not in named]
        for digest in orphans:
            self.blobs.delete(digest)
        if orphans:
            _log("collected_orphans", blobs=len(orphans))

    def _recover(self) -> None:
        """Rebuild the engine from the store: participants, versions, the open round."""
        with self.db.transaction() as s:
            people = s.scalars(select(Participant)).all()
            rows = s.scalars(select(Version).order_by(Version.round, Version.created_at)).all()
            open_row = s.scalar(select(Round).where(Round.status == "open"))
            stored = (
                s.scalars(select(UpdateRow).where(UpdateRow.round_id == open_row.id)).all()
                if open_row
                else []
            )
        for p in people:
            examples = int(p.data_profile.get("examples", 1))
            self.engine.examples[p.id] = examples  # bounds a stored update's weight
            if p.revoked_at is not None:
                continue
            self.enrolled[p.id] = examples
            self.engine.verify_keys[p.id] = p.public_key
            if p.polled_at is not None:
                self.engine.enroll(p.id, examples)
        latest = rows[-1]
        params, server_state = _load_server_state(self.blobs.get(latest.server_state_sha256))
        published = dict(safetensors.torch.load(self.blobs.get(latest.blob_sha256)))
        broadcasts = [
            Broadcast(
                r.id, r.parent or "", r.broadcast_seed or 0, self.blobs.get(r.broadcast_sha256)
            )
            for r in rows[-KEEP_BROADCASTS:]
            if r.broadcast_sha256
        ]
        versions = [
            GlobalVersion(
                r.id,
                r.round,
                r.parent,
                tuple(r.participants),
                r.num_examples,
                r.metrics,
                r.content or r.id,
            )
            for r in rows
        ]
        if versions[-1].content != tensors_hash(published):
            raise ZenfedError(
                f"the stored version {latest.id[:12]} does not match its tensors",
                fix="restore the state folder from a backup",
            )
        public = published if self.engine.downlink is not None else None
        self.engine.state = CoordinatorState(
            latest.round + 1, params, server_state, versions, public, broadcasts
        )
        self.engine.state.privacy = self.engine.ledger_from_versions()
        if open_row is None:
            return
        tasks = [_task_from_json(t) for t in open_row.tasks]
        if tasks and tasks[0].secagg is not None:
            # The masks' secrets lived in the agents' processes and this one: the masked
            # uploads stored so far can never be unmasked. The round is retried.
            self._round_id = open_row.id
            self.engine.restore_round(tasks)
            self._abort("the coordinator restarted during a secure round")
            return
        self.engine.restore_round(tasks)
        self._round_id, self._tasks = open_row.id, {t.participant: t for t in tasks}
        deadline = open_row.deadline_at
        self._deadline = _aware(deadline).timestamp() if deadline else self.clock()
        for row in stored:  # replay: validated again, counted once
            u = _update_from_row(row, self.blobs.get(row.payload_sha256), open_row)
            self.engine.accept(u, self.engine.check(u))
        _log("recovered", round=open_row.number, replayed=len(stored))

    def audit_log(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Every audit line, oldest first, as (actor, action, detail)."""
        with self.db.transaction() as s:
            return [
                (a.actor, a.action, a.detail) for a in s.scalars(select(Audit).order_by(Audit.id))
            ]

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _aware(dt: datetime) -> datetime:
    # SQLite returns naive datetimes even for timezone-aware columns: they are UTC.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _task_from_json(d: dict[str, Any]) -> Task:
    setup = d.get("secagg")
    return Task(**{**d, "secagg": wire.setup_from_json(setup) if setup else None})


def _update_row(u: Update, round_id: int, digest: str) -> UpdateRow:
    return UpdateRow(
        round_id=round_id,
        participant_id=u.participant,
        payload_sha256=digest,
        size=len(u.payload),
        num_examples=u.num_examples,
        examples_seen=u.examples_seen,
        num_tokens=u.num_tokens,
        seconds=u.seconds,
        train_loss=u.train_loss,
        steps=u.steps,
    )


def _update_from_row(row: UpdateRow, payload: bytes, round_row: Round) -> Update:
    return Update(
        round=round_row.number,
        participant=row.participant_id,
        base_version=round_row.base_version,
        payload=payload,
        num_examples=row.num_examples,
        examples_seen=row.examples_seen,
        num_tokens=row.num_tokens,
        seconds=row.seconds,
        train_loss=row.train_loss,
        steps=row.steps,
    )


def _server_state_bytes(st: CoordinatorState) -> bytes:
    """The server's parameters and optimizer moments as one safetensors blob."""
    tensors = {f"params/{k}": v for k, v in st.params.items()}
    tensors |= {f"m/{k}": v for k, v in st.server_state.m.items()}
    tensors |= {f"v/{k}": v for k, v in st.server_state.v.items()}
    meta = {"format": "zenfed-server-state/1", "step": str(st.server_state.step)}
    return safetensors.torch.save({k: t.contiguous() for k, t in tensors.items()}, metadata=meta)


def _load_server_state(data: bytes) -> tuple[Tensors, ServerOptState]:
    tensors = safetensors.torch.load(data)
    step = int(safetensors_metadata(data)["step"])
    parts: dict[str, Tensors] = {"params": {}, "m": {}, "v": {}}
    for key, t in tensors.items():
        kind, name = key.split("/", 1)
        parts[kind][name] = t
    return parts["params"], ServerOptState(m=parts["m"], v=parts["v"], step=step)
