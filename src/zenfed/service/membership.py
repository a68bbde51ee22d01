"""Who may take part in a deployment: invites, idempotent enrollment, signed requests,
revocation, quarantine's reinstatement. A part of ``PersistentCoordinator`` (persistent.py),
which provides the database, the lines (each an engine, a journal and a port), the
ports' router and the clock it works with.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from zenfed.config import FederationConfig
from zenfed.coordinator.lines import LinePorts
from zenfed.coordinator.roster import Member
from zenfed.coordinator.trust import reinstate
from zenfed.coordinator.validate import MAX_COUNT
from zenfed.errors import ZenfedError
from zenfed.protocol.auth import AuthError, check_body, participant_id, verify_signature
from zenfed.service.journal import log_event, sha256
from zenfed.service.line import ServiceLine
from zenfed.service.nonces import NonceBook
from zenfed.store.db import Database, EnrollmentToken, Participant
from zenfed.store.db import audit as audit_row


class EnrollmentRefused(ZenfedError):
    """An enrollment that cannot proceed (token, requirements, identity)."""


class UnknownParticipant(ZenfedError):
    """An operator named a participant that is not enrolled."""


class Membership:
    """The membership half of the deployment's coordinator."""

    cfg: FederationConfig
    db: Database
    lines: dict[str, ServiceLine]  # by name: each line's engine, journal and port
    port: LinePorts  # every line's messages; the roster's one writer
    nonces: NonceBook
    clock: Callable[[], float]

    def line_of(self, pid: str) -> ServiceLine:
        """The parts of ``pid``'s model line."""
        return self.lines[self.port.line_name(pid)]

    @property
    def enrolled(self) -> dict[str, int]:
        """Enrolled, not revoked: id -> declared examples."""
        return {m.id: m.examples for m in self.port.roster.active()}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

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
            if aware(tok.expires_at) < self._now():
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
        member = Member(pid, name, examples, public_key, capacity, data_profile, ready=False)
        self.port.enroll(member)  # sampled once it asks for work
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
        if svc.max_examples is not None and examples > svc.max_examples:
            raise EnrollmentRefused(
                f"declared {examples} examples, more than the {svc.max_examples} the "
                "operator expects of any participant (service.max_examples)",
                fix="declare the examples you really train on, or ask the operator to "
                "raise service.max_examples",
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
        self.port.revoke(pid)
        log_event("revoke", participant=pid)
        return pid

    def reinstate(self, who: str) -> str:
        """Lift the quarantine of a participant (by name or id): it is sampled again, with
        a fresh reputation. Returns its id. Audited; survives a restart."""
        with self.db.transaction() as s:
            p = _find(s, who)
            pid, name = p.id, p.name
        line = self.line_of(pid)
        new = reinstate(line.engine.state, pid, who)
        detail = {"participant": pid, "name": name, "was": line.engine.state.quarantined[pid]}
        line.journal.save_state(new, "reinstate", detail, actor="operator")
        line.engine.adopt(new)
        log_event("reinstate", participant=pid)
        return pid

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
        timestamp; an unused nonce, which is recorded durably). The body must then match
        its declared hash (``protocol.auth.check_body``).

        Safe to call without the coordinator's lock, from many threads at once: the keys
        are read from memory and the nonce goes through the group commit."""
        key = self.port.roster.key(pid)
        if key is None:
            with self.db.transaction() as s:
                known = s.get(Participant, pid) is not None
            if not known:
                raise AuthError(f"participant {pid[:12]} is unknown", fix="enroll first")
            raise AuthError(
                f"participant {pid[:12]} is revoked",
                fix="ask the operator: a revoked key stays revoked (a new identity "
                "needs a new invite)",
            )
        nonce = verify_signature(key, method, path, headers, self.clock())
        self.nonces.record(pid, nonce)
        return pid


def _find(s: Session, who: str) -> Participant:
    """The participant named ``who`` (or whose id it is); UnknownParticipant if none."""
    p = s.get(Participant, who) or s.scalar(select(Participant).where(Participant.name == who))
    if p is None:
        raise UnknownParticipant(
            f"no participant named '{who[:200]}'", fix="see zenfed status for the names"
        )
    return p


def aware(dt: datetime) -> datetime:
    """``dt`` with its timezone: SQLite returns naive datetimes even for timezone-aware
    columns, and they are UTC."""
    # SQLite returns naive datetimes even for timezone-aware columns: they are UTC.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
