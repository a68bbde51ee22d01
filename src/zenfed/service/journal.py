"""The deployment's journal: every state change of the round port, written to the database
and the blob store before it takes effect, with its audit line and a JSON log line.

    journal = StoreJournal(db, blobs, clock)
    port = CoordinatorPort(engine, journal, clock)

An accepted update: its payload to the blob store (atomic), then its row and audit line
in one transaction, then it is counted; a committed version: its blobs (the version as
downloaded, the coordinator's state after it, its broadcast), then its row, the round's
row and the audit line in one transaction, then the engine adopts it. A crash in between
leaves either nothing or a blob no row names (removed at the next start).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from zenfed.compress.downlink import full_payload
from zenfed.config import DEFAULT_LINE
from zenfed.coordinator.port import Journal
from zenfed.coordinator.rounds import OpenRound
from zenfed.coordinator.state import Commit, CoordinatorState
from zenfed.coordinator.validate import UpdateRejected
from zenfed.errors import ZenfedError
from zenfed.protocol.auth import MAX_SKEW_S
from zenfed.protocol.messages import Task, Update
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Database, Nonce, Round, Version
from zenfed.store.db import Update as UpdateRow
from zenfed.store.db import audit as audit_row
from zenfed.store.records import bytes_tensor, pack_record, tensor_bytes, unpack_record

log = logging.getLogger("zenfed.coordinator")
FORWARDED_KIND = "zenfed-forwarded-update/1"
# Every column that names a blob: a blob none of them names is an orphan.
BLOB_COLUMNS = (
    UpdateRow.payload_sha256,
    Version.blob_sha256,
    Version.server_state_sha256,
    Version.broadcast_sha256,
    Round.forwarded_sha256,
)


def named_blobs(s: Session) -> set[str]:
    """The digests of every blob a row names."""
    return {d for col in BLOB_COLUMNS for d in s.scalars(select(col)) if d}


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One structured log line (JSON under ``zenfed serve``)."""
    log.log(level, event, extra={"fields": fields})


def sha256(data: bytes) -> str:
    """The hex sha256 of ``data`` (a blob's name)."""
    return hashlib.sha256(data).hexdigest()


class StoreJournal(Journal):
    """Writes the port's state changes of one model line to the database and the blob
    store (its rounds' and versions' rows name the line)."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        clock: Callable[[], float],
        line: str = DEFAULT_LINE,
    ) -> None:
        self.db, self.blobs, self.clock, self.line = db, blobs, clock, line
        self.round_id: int | None = None  # the open attempt's row
        self.rejections: Counter[str] = Counter()

    def _line(self) -> dict[str, str]:
        """The line for an audit line's detail (none on the default line, as before)."""
        return {} if self.line == DEFAULT_LINE else {"line": self.line}

    def now(self) -> datetime:
        """The clock as an aware datetime."""
        return datetime.fromtimestamp(self.clock(), UTC)

    def opened(self, r: OpenRound) -> None:
        """The round's row with its tasks as sent; nonces too old to replay are dropped."""
        tasks = list(r.tasks.values())
        with self.db.transaction() as s:
            row = Round(
                line=self.line,
                number=r.round,
                status="open",
                base_version=r.version,
                codec_seed=r.codec_seed,
                tasks=[t.to_dict() for t in tasks],
                deadline_at=datetime.fromtimestamp(min(r.deadline, 4e10), UTC),
            )
            s.add(row)
            s.flush()
            detail = {"round": row.number, "id": row.id, **self._line()}
            audit_row(s, "coordinator", "open_round", detail)
            self.round_id = row.id
        log_event("open_round", round=r.round, cohort=len(tasks), line=self.line)
        try:  # housekeeping, not part of opening: a failure is logged, not raised
            with self.db.transaction() as s:
                cutoff = self.now() - timedelta(seconds=2 * MAX_SKEW_S)
                s.execute(delete(Nonce).where(Nonce.seen_at < cutoff))
        except Exception as e:
            log_event("nonce_cleanup_failed", logging.WARNING, error=str(e))

    def issued(self, task: Task) -> None:
        """A buffered task joins its buffer's row, so a restart knows it is in flight."""
        with self.db.transaction() as s:
            row = s.get(Round, self.round_id)
            if row is None:
                raise ZenfedError("no open buffer to record a task in", fix="report this bug")
            row.tasks = [*row.tasks, task.to_dict()]  # a new list: the JSON column is saved
        log_event("issue_task", participant=task.participant, round=task.round)

    def storing(self, updates: Sequence[Update]) -> None:
        """The payloads' blobs (a transport may have stored them already), then their
        rows and audit lines in one transaction; no blob without its row."""
        made = []
        for u in updates:
            if not self.blobs.has(u.digest):
                self.blobs.put(u.payload, u.digest)
                made.append(u.digest)
        try:
            with self.db.transaction() as s:
                for u in updates:
                    s.add(update_row(u, self.round_id or 0, u.digest))
                    detail = {"round": u.round, "sha256": u.digest, "bytes": len(u.payload)}
                    audit_row(s, u.participant, "upload", detail)
        except BaseException:
            for digest in made:
                self.blobs.delete(digest)
            raise
        for u in updates:
            log_event("upload", participant=u.participant, round=u.round, bytes=len(u.payload))

    def release(self, digest: str) -> None:
        """Remove the blob ``digest`` unless a row names it: a payload a transport stored
        before its update was refused."""
        with self.db.transaction() as s:
            named = any(s.scalar(select(col).where(col == digest)) for col in BLOB_COLUMNS)
        if not named:
            self.blobs.delete(digest)

    def forwarding(self, server_round: int, update: Update, why: str) -> None:
        """A regional round ends: the update for the root (a record: payload and
        metadata) to the blob store, then the round's row closed as forwarded, naming it."""
        record = pack_record(
            FORWARDED_KIND,
            {"payload": bytes_tensor(update.payload)},
            {**update.metadata(), "round": update.round, "participant": update.participant},
        )
        digest = self.blobs.put(record)
        with self.db.transaction() as s:
            row = s.get(Round, self.round_id)
            if row is None:
                raise ZenfedError("no open round to forward", fix="report this bug")
            row.status, row.closed_at, row.reason = "forwarded", self.now(), why
            row.forwarded_sha256 = digest
            audit_row(s, "coordinator", "forward", {"round": server_round, "sha256": digest})
        self.round_id = None
        log_event("forward", round=server_round, examples=update.num_examples)

    def rejected(self, u: Update, e: UpdateRejected) -> None:
        """Counted by reason, logged and audited."""
        self.rejections[e.reason] += 1
        log_event("reject", logging.WARNING, participant=u.participant, reason=e.problem)
        with self.db.transaction() as s:
            detail = {"round": u.round, "reason": e.problem, "kind": e.reason}
            audit_row(s, u.participant, "reject_update", detail)

    def committing(self, result: Commit, why: str) -> None:
        """The version's blobs and rows; the previous version's state blob is let go."""
        self.store_version(result, self.round_id, why)
        self.round_id = None
        v = result.version
        log_event(
            "close_round", round=v.round, version=v.id, why=why, metrics=v.metrics, line=self.line
        )

    def store_version(
        self, result: Commit, round_id: int | None, why: str, payload: bytes | None = None
    ) -> None:
        """Blobs first (atomic, idempotent), then one transaction for the rows; a version
        adopted from the root keeps the root's ``payload`` as its download."""
        st, v = result.state, result.version
        full = self.blobs.put(payload if payload is not None else full_payload(st.published, v))
        state = self.blobs.put(st.to_bytes())
        bc = st.broadcasts[-1] if st.broadcasts and st.broadcasts[-1].version == v.id else None
        bc_sha = self.blobs.put(bc.payload) if bc else None
        manifest = result.manifest
        with self.db.transaction() as s:
            # Only the newest version keeps its whole state (it holds the lineage, so keeping
            # every one would grow with the rounds squared); an older one's moments are
            # replayed from the stored updates when needed (recompute.py).
            mine = Version.line == self.line
            kept = Version.server_state_sha256.is_not(None)
            old = set(s.scalars(select(Version.server_state_sha256).where(kept, mine)))
            s.execute(update(Version).where(mine).values(server_state_sha256=None))
            s.add(
                Version(
                    id=v.id,
                    line=self.line,
                    content=v.content,
                    round=v.round,
                    parent=v.parent,
                    blob_sha256=full,
                    server_state_sha256=state,
                    broadcast_sha256=bc_sha,
                    broadcast_seed=bc.seed if bc else None,
                    participants=list(v.participants),
                    weights=list(v.weights),
                    num_examples=v.num_examples,
                    metrics=v.metrics,
                    manifest=manifest.to_dict() if manifest else None,
                    manifest_sha256=manifest.digest if manifest else None,
                )
            )
            if round_id is not None:
                row = s.get(Round, round_id)
                assert row is not None
                row.status, row.closed_at, row.result_version = "closed", self.now(), v.id
                row.reason = why
            detail = {"version": v.id, "round": v.round, **self._line()}
            audit_row(s, "coordinator", "commit_version", detail)
            if v.rollback_of:
                audit_row(
                    s, "operator", "rollback", {"version": v.id, "republishes": v.rollback_of}
                )
            for pid, why in result.flags.items():
                audit_row(s, pid, "flagged", {"round": v.round, "why": why})
            for pid, why in result.quarantine.items():
                audit_row(s, "coordinator", "quarantine", {"participant": pid, "why": why})
        for pid, why in result.quarantine.items():
            log_event("quarantine", logging.WARNING, participant=pid, why=why)
        for digest in old - {state}:
            if digest:
                self.blobs.delete(digest)

    def rejecting(self, server_round: int, state: CoordinatorState, reason: str) -> None:
        """The gate's refusal: the newest version's saved state becomes ``state``, the
        round's row is closed as rejected, audited."""
        detail = {"round": server_round, "reason": reason}
        self.save_state(state, "reject_round", detail, close_round=("rejected", reason))
        self.round_id = None
        log_event("reject_round", logging.WARNING, round=server_round, reason=reason)

    def save_state(
        self,
        state: CoordinatorState,
        action: str,
        detail: dict[str, Any],
        actor: str = "coordinator",
        close_round: tuple[str, str] | None = None,
    ) -> None:
        """Replace the newest version's saved coordinator state by ``state`` (a change made
        between versions: a rejected round, a reinstatement), with its audit line; with
        ``close_round`` (status, reason) the open round's row is closed in the same
        transaction."""
        digest = self.blobs.put(state.to_bytes())
        with self.db.transaction() as s:
            row = s.get(Version, state.version.id)
            assert row is not None
            old = row.server_state_sha256
            row.server_state_sha256 = digest
            if close_round is not None and self.round_id is not None:
                r = s.get(Round, self.round_id)
                assert r is not None
                status, reason = close_round
                r.status, r.closed_at, r.reason = status, self.now(), reason[:500]
            audit_row(s, actor, action, detail)
        if old and old != digest:
            self.blobs.delete(old)

    def aborted(self, server_round: int, reason: str) -> None:
        """The round's row is closed as aborted."""
        with self.db.transaction() as s:
            row = s.get(Round, self.round_id)
            assert row is not None
            row.status, row.closed_at, row.reason = "aborted", self.now(), reason
            audit_row(s, "coordinator", "abort_round", {"round": row.number, "reason": reason})
        self.round_id = None
        log_event("abort_round", logging.WARNING, round=server_round, reason=reason)

    def skipped(self, server_round: int, reason: str) -> None:
        """Audited: a round that could not open."""
        with self.db.transaction() as s:
            audit_row(s, "coordinator", "skip_round", {"round": server_round, "reason": reason})
        log_event("skip_round", logging.WARNING, round=server_round, reason=reason)

    def exhausted(self, reason: str) -> None:
        """Audited: the privacy budget stops the federation."""
        with self.db.transaction() as s:
            audit_row(s, "coordinator", "privacy_budget_exhausted", {"reason": reason})
        log_event("privacy_budget_exhausted", logging.WARNING, reason=reason)

    def staged(self, participant: str, server_round: int, stage: str) -> None:
        """Audited: a secure-aggregation stage message."""
        with self.db.transaction() as s:
            audit_row(s, participant, f"secagg_{stage}", {"round": server_round})


def forwarded_update(record: bytes) -> Update:
    """The update a regional round forwarded (``StoreJournal.forwarding``'s record)."""
    tensors, fields = unpack_record(record, FORWARDED_KIND)
    server_round, pid = int(fields.pop("round")), str(fields.pop("participant"))
    return Update.from_metadata(server_round, pid, tensor_bytes(tensors["payload"]), fields)


def update_row(u: Update, round_id: int, digest: str) -> UpdateRow:
    """An accepted update's row: its metadata (whole, and the fields one queries)."""
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
        meta={**u.metadata(), "round": u.round},  # its task's (a buffer takes older ones)
        signature=dict(u.proof) if u.proof else None,
    )


def update_from_row(row: UpdateRow, payload: bytes, round_row: Round) -> Update:
    """The update a row records (rows from before ``meta`` existed: from their columns)."""
    meta: dict[str, Any] = (
        dict(row.meta)
        if row.meta
        else {
            "base_version": round_row.base_version,
            "num_examples": row.num_examples,
            "examples_seen": row.examples_seen,
            "num_tokens": row.num_tokens,
            "seconds": row.seconds,
            "train_loss": row.train_loss,
            "steps": row.steps,
        }
    )
    task_round = int(meta.pop("round", round_row.number))
    return Update.from_metadata(task_round, row.participant_id, payload, meta)
