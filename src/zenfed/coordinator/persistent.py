"""The coordinator of a deployment: the round port over the engine, with a database and a
blob store under it so that enrollment, every accepted update and every version survive
a crash.

    fed = PersistentCoordinator(cfg, initial, Database(url), BlobStore(root))
    token = fed.invite("clinic-7")                                  # operator
    pid = fed.enroll(token, "clinic-7", public_key, capacity, data)  # participant
    fed.tick()                                                      # open/close on time
    task = fed.port.task(pid)                                       # any round message
    fed.port.upload(update)                                         # stored, then counted

Rounds run through ``CoordinatorPort`` (port.py) exactly as in the simulation; this class
adds who may take part (invites, idempotent enrollment, signed requests, revocation), the
journal that writes every change before it takes effect (journal.py), and the way back
after a crash: the newest version's saved ``CoordinatorState``, the participants, and the
open round's stored updates replayed (validated again, counted once). A secure round
cannot survive a restart (the masks' secrets lived in memory) and is aborted.

Only participants that have asked for a task at least once are sampled, so an agent that
enrolled and never came back does not hold up every round until its deadline. This class
knows nothing of HTTP: ``transport.http`` serves it.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from zenfed.compress.downlink import receive
from zenfed.config import FederationConfig
from zenfed.coordinator.engine import Coordinator
from zenfed.coordinator.gate import Evaluate
from zenfed.coordinator.journal import StoreJournal, log_event, sha256, update_from_row
from zenfed.coordinator.port import CoordinatorPort, Tick
from zenfed.coordinator.state import Commit, CoordinatorState
from zenfed.coordinator.trust import find_version, reinstate, trust_parts
from zenfed.coordinator.validate import MAX_COUNT
from zenfed.errors import ZenfedError
from zenfed.protocol.auth import AuthError, check_body, participant_id, verify_signature
from zenfed.protocol.messages import GlobalVersion, Task
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Audit, Database, EnrollmentToken, Nonce, Participant, Round, Version
from zenfed.store.db import Update as UpdateRow
from zenfed.store.db import audit as audit_row
from zenfed.store.records import pack_record, unpack_record
from zenfed.tensors import Tensors

SPILL_KIND = "zenfed-kept-update/1"


class EnrollmentRefused(ZenfedError):
    """An enrollment that cannot proceed (token, requirements, identity)."""


class UnknownParticipant(ZenfedError):
    """An operator named a participant that is not enrolled."""


class PersistentCoordinator:
    """The round port plus durable state and membership: what ``zenfed serve`` runs."""

    def __init__(
        self,
        cfg: FederationConfig,
        initial: Tensors,
        db: Database,
        blobs: BlobStore,
        clock: Callable[[], float] = time.time,
        evaluate: Evaluate | None = None,
    ) -> None:
        self.cfg, self.db, self.blobs, self.clock = cfg, db, blobs, clock
        db.upgrade()
        gate, screen = trust_parts(cfg, evaluate)  # [gate] and [detect] judge by ``evaluate``
        self.engine = Coordinator(cfg, initial, {}, spill=self._spill, screen=screen)
        self.journal = StoreJournal(db, blobs, clock)
        self.port = CoordinatorPort(self.engine, self.journal, clock, gate=gate)
        # Enrolled, not revoked: id -> declared examples. Those that have asked for a task
        # are also in engine.participants, the pool cohorts are drawn from.
        self.enrolled: dict[str, int] = {}
        with db.transaction() as s:
            known = s.scalar(select(Version.id).limit(1))
        if known is None:
            self.journal.store_version(Commit(self.engine.version, self.engine.state), None, "")
        else:
            self._collect_orphans()  # before the replay, which spills kept updates anew
            self._recover()

    @property
    def rejections(self) -> dict[str, int]:
        """Refused updates by reason."""
        return dict(self.journal.rejections)

    # ---- membership -------------------------------------------------------------------------

    def invite(self, label: str = "", ttl_s: float | None = None) -> str:
        """A new single-use enrollment token (only its hash is stored)."""
        token = secrets.token_urlsafe(24)
        ttl = self.cfg.service.invite_ttl_s if ttl_s is None else ttl_s
        with self.db.transaction() as s:
            s.add(
                EnrollmentToken(
                    token_hash=sha256(token.encode()),
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
        examples = self._check_requirements(public_key, capacity, data_profile)
        if re.fullmatch(r"[0-9a-f]{64}", name):
            raise EnrollmentRefused(
                "a name may not look like a participant id (64 hex digits)",
                fix="choose a name an operator can tell from an id",
            )
        pid = participant_id(public_key)
        with self.db.transaction() as s:
            tok = s.get(EnrollmentToken, sha256(token.encode()), with_for_update=True)
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
        self.engine.names[pid] = name
        self.engine.verify_keys[pid] = public_key  # signs its secure-aggregation keys
        log_event("enroll", participant=pid, name=name, examples=examples)
        return pid

    def _check_requirements(
        self, public_key: bytes, capacity: dict[str, Any], data_profile: dict[str, Any]
    ) -> int:
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
        return examples

    def revoke(self, who: str) -> str:
        """Revoke a participant by name (or id): its requests are refused from now on and
        it is sampled no more. Returns its id. Audited."""
        with self.db.transaction() as s:
            p = _find(s, who)
            if p.revoked_at is None:
                p.revoked_at = self._now()
                audit_row(s, "operator", "revoke", {"participant": p.id, "name": p.name})
            pid = p.id
        self.enrolled.pop(pid, None)
        self.engine.withdraw(pid)
        log_event("revoke", participant=pid)
        return pid

    def reinstate(self, who: str) -> str:
        """Lift the quarantine of a participant (by name or id): it is sampled again, with
        a fresh reputation. Returns its id. Audited; survives a restart."""
        with self.db.transaction() as s:
            p = _find(s, who)
            pid, name = p.id, p.name
        st = self.engine.state
        new = replace(st, reputation=dict(st.reputation), quarantined=dict(st.quarantined))
        reinstate(new, pid, who)
        detail = {"participant": pid, "name": name, "was": st.quarantined[pid]}
        self.journal.save_state(new, "reinstate", detail, actor="operator")
        self.engine.state = new
        log_event("reinstate", participant=pid)
        return pid

    def rollback(self, to: str) -> GlobalVersion:
        """Publish the earlier version ``to`` (an id or its first 8+ hex digits) again as a
        new version whose lineage records the rollback (audited); an open round is
        aborted. UnknownVersion names a version that is not in the lineage."""
        target = find_version(self.engine.state, to)
        with self.db.transaction() as s:
            row = s.get(Version, target.id)
        if row is None:
            raise ZenfedError(f"version {target.id[:12]} is not stored", fix="restore the store")
        tensors = receive(self.blobs.get(row.blob_sha256), None, None, target.id)
        version = self.port.rollback(target.id, tensors)
        log_event("rollback", version=version.id, republishes=target.id)
        return version

    def whoami(self, pid: str) -> dict[str, Any]:
        """What the coordinator knows of an (authenticated) participant."""
        with self.db.transaction() as s:
            p = s.get(Participant, pid)
            if p is None:
                raise AuthError(f"participant {pid[:12]} is unknown", fix="enroll")
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

    # ---- rounds ------------------------------------------------------------------------------

    def tick(self) -> GlobalVersion | None:
        """Advance the port on the wall clock; the version a closing tick committed."""
        what: Tick = self.port.tick()
        return self.port.last_version if what == "closed" else None

    def next_task(self, pid: str) -> Task | None:
        """``pid``'s task now (the port's answer); a participant's first ask makes it one
        that cohorts are drawn from."""
        if pid not in self.engine.participants and pid in self.enrolled:
            with self.db.transaction() as s:
                p = s.get(Participant, pid)
                if p is not None and p.polled_at is None:
                    p.polled_at = self._now()
            self.engine.enroll(pid, self.enrolled[pid])
        return self.port.task(pid)

    def finished(self) -> bool:
        """Whether every round has run (no round is open and none will be)."""
        return self.port.finished()

    def version_blob(self, version: str) -> str:
        """The blob digest of a committed version (as downloaded in full)."""
        with self.db.transaction() as s:
            row = s.get(Version, version)
        if row is None:
            raise ZenfedError(f"no version {version[:12]}", fix="ask for the current one")
        return row.blob_sha256

    def status(self) -> dict[str, Any]:
        """The federation at a glance: round, version, participants, open round."""
        info, engine = self.engine.open_round_info, self.engine
        st = engine.state
        with self.db.transaction() as s:
            revoked = s.scalars(select(Participant.id).where(Participant.revoked_at.is_not(None)))
            n_revoked = len(revoked.all())
        return {
            "round": engine.state.round,
            "rounds": self.cfg.run.rounds,
            "version": engine.version.id,
            "participants": len(self.enrolled),
            "ready": len(engine.participants),
            "revoked": n_revoked,
            "epsilon": engine.epsilon() if engine.noise_multiplier else None,
            "stopped": self.port.exhausted or None,
            "open_round": None
            if info is None
            else {
                "round": info[0],
                "cohort": len(info[1]),
                "received": len(info[2]),
                "deadline_in_s": round(self.port.next_deadline() - self.clock(), 1),
            },
            "rejections": self.rejections,
            "quarantined": {engine.names.get(p, p): why for p, why in st.quarantined.items()},
            "low_reputation": {
                engine.names.get(p, p): round(r, 3)
                for p, r in sorted(st.reputation.items())
                if r < 1.0 and p not in st.quarantined
            },
            "lineage": [
                {"version": v.id[:12], "round": v.round, "rollback_of": v.rollback_of[:12]}
                if v.rollback_of
                else {"version": v.id[:12], "round": v.round}
                for v in st.versions[-5:]
            ],
        }

    def audit_log(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Every audit line, oldest first, as (actor, action, detail)."""
        with self.db.transaction() as s:
            return [
                (a.actor, a.action, a.detail) for a in s.scalars(select(Audit).order_by(Audit.id))
            ]

    # ---- the way back after a crash -----------------------------------------------------------

    def _recover(self) -> None:
        """Rebuild the engine from the store: the state, participants, the open round."""
        with self.db.transaction() as s:
            people = s.scalars(select(Participant)).all()
            latest = s.scalar(select(Version).order_by(Version.round.desc()).limit(1))
            open_row = s.scalar(select(Round).where(Round.status == "open"))
            stored = (
                s.scalars(select(UpdateRow).where(UpdateRow.round_id == open_row.id)).all()
                if open_row
                else []
            )
        assert latest is not None and latest.server_state_sha256 is not None
        state = CoordinatorState.from_bytes(self.blobs.get(latest.server_state_sha256))
        if state.version.id != latest.id:
            raise ZenfedError(
                f"the saved state is not of the newest version {latest.id[:12]}",
                fix="restore the state folder from a backup",
            )
        self.engine.state = state
        for p in people:
            examples = int(p.data_profile.get("examples", 1))
            self.engine.examples[p.id] = examples  # bounds a stored update's weight
            self.engine.names[p.id] = p.name
            if p.revoked_at is not None:
                continue
            self.enrolled[p.id] = examples
            self.engine.verify_keys[p.id] = p.public_key
            if p.polled_at is not None:
                self.engine.enroll(p.id, examples)
        if open_row is not None:
            self._reopen(open_row, stored)

    def _reopen(self, row: Round, stored: Sequence[UpdateRow]) -> None:
        deadline = _aware(row.deadline_at).timestamp() if row.deadline_at else self.clock()
        tasks = [replace(Task.from_dict(t), deadline=deadline) for t in row.tasks]
        # Rounds skipped since the last version (an empty Poisson sample) moved the round
        # number on without a version to record it: the open round's row does.
        self.engine.state.round = max(self.engine.state.round, row.number)
        self.engine.restore_round(tasks)
        self.journal.round_id = row.id
        if tasks[0].secagg is not None:
            # The masks' secrets lived in the agents' processes and this one: the masked
            # uploads stored so far can never be unmasked. The round is retried.
            self.journal.aborted(row.number, "the coordinator restarted during a secure round")
            self.engine.abort_round()
            return
        for u_row in stored:  # replay: validated again, counted once
            u = update_from_row(u_row, self.blobs.get(u_row.payload_sha256), row)
            tensors = self.engine.check(u)
            self.port.digests[u.participant] = u_row.payload_sha256
            self.engine.accept(u, tensors)
        for pid in {t.participant for t in tasks} - set(self.enrolled):
            self.engine.withdraw(pid)  # revoked since the round opened
        log_event("recovered", round=row.number, replayed=len(stored))

    def _spill(self, participant: str, tensors: Tensors) -> Callable[[], Tensors]:
        """A keep-every-update round keeps each update (as it entered the round: decoded,
        clipped) in the blob store and only a loader of it in memory. Such blobs are named
        by no row: after a restart the replay makes them again, and the collector removes
        the old ones."""
        digest = self.blobs.put(pack_record(SPILL_KIND, tensors, {"participant": participant}))
        return lambda: unpack_record(self.blobs.get(digest), SPILL_KIND)[0]

    def _collect_orphans(self) -> None:
        """Remove blobs that no row names: an upload or version whose transaction never
        committed (a crash, a full disk). Nothing acknowledged is among them."""
        with self.db.transaction() as s:
            named = set(s.scalars(select(UpdateRow.payload_sha256)))
            for row in s.scalars(select(Version)):
                named |= {
                    row.blob_sha256,
                    row.server_state_sha256 or "",
                    row.broadcast_sha256 or "",
                }
        orphans = [d for d in self.blobs.digests() if d not in named]
        for digest in orphans:
            self.blobs.delete(digest)
        if orphans:
            log_event("collected_orphans", level=logging.INFO, blobs=len(orphans))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)


def _find(s: Session, who: str) -> Participant:
    """The participant named ``who`` (or whose id it is); UnknownParticipant if none."""
    p = s.get(Participant, who) or s.scalar(select(Participant).where(Participant.name == who))
    if p is None:
        raise UnknownParticipant(
            f"no participant named '{who[:200]}'", fix="see zenfed status for the names"
        )
    return p


def _aware(dt: datetime) -> datetime:
    # SQLite returns naive datetimes even for timezone-aware columns: they are UTC.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
