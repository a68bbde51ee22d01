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
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from zenfed.compress.downlink import announced_version, receive
from zenfed.config import FederationConfig
from zenfed.coordinator.engine import Coordinator
from zenfed.coordinator.gate import Evaluate
from zenfed.coordinator.lines import LinePorts
from zenfed.coordinator.port import CoordinatorPort, Tick, UploadResult
from zenfed.coordinator.regional import Region, adopted
from zenfed.coordinator.roster import Member, Roster
from zenfed.coordinator.state import Commit, CoordinatorState
from zenfed.coordinator.trust import UnknownVersion, find_version, trust_parts
from zenfed.coordinator.validate import UpdateRejected
from zenfed.errors import ZenfedError
from zenfed.protocol.auth import check_digest
from zenfed.protocol.messages import GlobalVersion, Task, Update
from zenfed.service.journal import (
    StoreJournal,
    forwarded_update,
    log_event,
    named_blobs,
    update_from_row,
)
from zenfed.service.line import ServiceLine
from zenfed.service.membership import (
    EnrollmentRefused as EnrollmentRefused,
)
from zenfed.service.membership import Membership, aware
from zenfed.service.membership import UnknownParticipant as UnknownParticipant
from zenfed.service.nonces import NonceBook
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Audit, Database, Participant, Round, Version
from zenfed.store.db import Update as UpdateRow
from zenfed.store.group import GroupCommit
from zenfed.store.records import pack_record, unpack_record
from zenfed.tensors import Tensors

SPILL_KIND = "zenfed-kept-update/1"


class PersistentCoordinator(Membership):
    """The round port plus durable state and membership: what ``zenfed serve`` runs."""

    def __init__(
        self,
        cfg: FederationConfig,
        initial: Tensors,
        db: Database,
        blobs: BlobStore,
        clock: Callable[[], float] = time.time,
        evaluate: Evaluate | None = None,
        region: Region | None = None,
    ) -> None:
        self.cfg, self.db, self.blobs, self.clock = cfg, db, blobs, clock
        if region is not None and cfg.lines.several:
            raise ZenfedError(
                "a regional coordinator with several model lines is not built: a region "
                "forwards one line's update to its root",
                fix="give the region one line ([lines] names)",
            )
        db.upgrade()
        self.group = GroupCommit(db)  # small writes from many threads: one fsync for many
        self.nonces = NonceBook(db, self.group, clock)
        roster = Roster()  # one for every line: who is enrolled, revoked, ready
        self.lines: dict[str, ServiceLine] = {}
        for name in cfg.lines.names:  # each line its engine, journal and port
            gate, screen = trust_parts(cfg, evaluate)  # [gate] and [detect] judge by it
            engine = Coordinator(cfg, initial, roster, spill=self._spill, screen=screen, line=name)
            journal = StoreJournal(db, blobs, clock, name)
            port = CoordinatorPort(engine, journal, clock, gate=gate, region=region)
            self.lines[name] = ServiceLine(name, engine, journal, port)
        first = self.lines[cfg.lines.names[0]]
        # The first line's parts (the only line without [lines]); each line's: ``lines``.
        self.engine, self.journal = first.engine, first.journal
        self.port = LinePorts({n: ln.port for n, ln in self.lines.items()}, cfg.lines.line_of)
        self.region = region  # zenfed serve --upstream: a regional coordinator
        self.last_tick: Tick = "idle"  # what the last tick did (the first line that moved)
        with db.transaction() as s:
            known = set(s.scalars(select(Version.line).distinct()))
        if known:
            self._collect_orphans()  # before the replay, which spills kept updates anew
        for name, ln in self.lines.items():
            if name not in known:  # a new federation, or a line added to one
                root = Commit(ln.engine.version, ln.engine.state, manifest=ln.engine.last_manifest)
                ln.journal.store_version(root, None, "")
        if known:
            self._recover(known)

    @property
    def rejections(self) -> dict[str, int]:
        """Refused updates by reason (every line's)."""
        total: Counter[str] = Counter()
        for line in self.lines.values():
            total.update(line.journal.rejections)
        return dict(total)

    def rollback(self, to: str) -> GlobalVersion:
        """Publish the earlier version ``to`` (an id or its first 8+ hex digits) again as a
        new version whose lineage records the rollback (audited); an open round is
        aborted. UnknownVersion names a version that is not in the lineage."""
        line, target = self._holding(to)
        with self.db.transaction() as s:
            row = s.get(Version, target.id)
        if row is None:
            raise ZenfedError(f"version {target.id[:12]} is not stored", fix="restore the store")
        tensors = receive(self.blobs.get(row.blob_sha256), None, None, target.id)
        version = line.port.rollback(target.id, tensors)
        log_event("rollback", version=version.id, republishes=target.id, line=line.name)
        return version

    def _holding(self, to: str) -> tuple[ServiceLine, GlobalVersion]:
        """The line whose lineage holds version ``to``, and the version."""
        missing: UnknownVersion | None = None
        for line in self.lines.values():
            try:
                return line, find_version(line.engine.state, to)
            except UnknownVersion as e:
                missing = missing or e  # (the first line's words)
        assert missing is not None
        raise missing

    # ---- rounds ------------------------------------------------------------------------------

    def tick(self) -> GlobalVersion | None:
        """Advance every line on the wall clock; the version a closing tick committed (the
        last line's, when several closed at once)."""
        done = self.port.tick()
        moved = [what for what in done.values() if what != "idle"]
        self.last_tick = moved[0] if moved else "idle"
        closed = [self.lines[n].port.last_version for n, what in done.items() if what == "closed"]
        return closed[-1] if closed else None

    def store_payload(self, update: Update, declared_sha256: str | None) -> None:
        """Check an upload's body against its signed hash and store its blob ahead of
        ``upload_many`` (which then finds it stored): the hashing and the fsync happen
        outside the coordinator's lock, so they need not hold up other requests."""
        check_digest(update.digest, declared_sha256)
        self.blobs.put(update.payload, update.digest)

    def upload_many(self, updates: Sequence[Update]) -> list[UploadResult]:
        """The port's ``upload_many``; the blob of an update that was not accepted (stored
        by ``store_payload``) is removed again unless a row names it."""
        try:
            results = self.port.upload_many(updates)
        except BaseException:
            for u in updates:
                self.journal.release(u.digest)
            raise
        for u, result in zip(updates, results, strict=True):
            if isinstance(result, UpdateRejected):
                self.journal.release(u.digest)
        return results

    def take_root_task(self, task: Task, payload: bytes) -> None:
        """A regional coordinator: the root's training ``task`` and its version's bytes
        (``payload``, as downloaded). The version becomes this region's (stored first),
        and the next tick opens the region's round for it; a task already forwarded, or
        whose round is open (a restart), changes nothing."""
        region, engine = self.region, self.engine
        if region is None:
            raise ZenfedError("this coordinator has no upstream", fix="serve with --upstream")
        r = engine.current
        if task.round in region.results or (r is not None and r.round == task.round):
            region.task = task
            return
        if r is not None:  # a round for a root round that the root has closed: over
            self.journal.aborted(r.round, f"the root moved on to round {task.round + 1}")
            engine.abort_round()
        if engine.version.id != task.version:
            version = announced_version(payload)
            tensors = receive(payload, None, None, task.version)
            state = adopted(engine.state, version, tensors, task.round)
            self.journal.store_version(Commit(version, state), None, "from the root", payload)
            engine.adopt(state)
            log_event("adopt_root_version", version=version.id, round=task.round)
        else:  # the same version for another round (the root's last one was not kept)
            engine.renumber(task.round)
        region.task = task

    def root_finished(self) -> None:
        """A regional coordinator: the root's federation has finished, so has this one's."""
        if self.region is not None:
            self.region.finished = True

    def next_task(self, pid: str) -> Task | None:
        """``pid``'s task now (the port's answer); a participant's first ask makes it one
        that cohorts are drawn from."""
        m = self.port.roster.get(pid)
        if m is not None and m.status == "active" and not m.ready:
            with self.db.transaction() as s:
                p = s.get(Participant, pid)
                if p is not None and p.polled_at is None:
                    p.polled_at = self._now()
            self.port.ready(pid)
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
        """The federation at a glance: round, version, participants, open round (of the
        first line; with several lines, each line's under ``lines``)."""
        with self.db.transaction() as s:
            revoked = s.scalars(select(Participant.id).where(Participant.revoked_at.is_not(None)))
            n_revoked = len(revoked.all())
        out: dict[str, Any] = {
            "rounds": self.cfg.run.rounds,
            "participants": len(self.enrolled),
            "revoked": n_revoked,
            "rejections": self.rejections,
            **self._line_status(self.lines[self.port.first]),
        }
        if self.cfg.lines.several:
            out["lines"] = {n: self._line_status(ln) for n, ln in self.lines.items()}
        return out

    def _line_status(self, line: ServiceLine) -> dict[str, Any]:
        engine, port = line.engine, line.port
        info, st = engine.open_round_info, engine.state
        return {
            "round": st.round,
            "version": engine.version.id,
            "ready": len(engine.participants),
            "epsilon": engine.epsilon() if engine.privacy.accounted else None,
            "stopped": port.exhausted or None,
            "open_round": None
            if info is None
            else {
                "round": info[0],
                "cohort": len(info[1]),
                "received": len(info[2]),
                "deadline_in_s": round(port.next_deadline() - self.clock(), 1),
            },
            "quarantined": {engine.roster.name(p): why for p, why in st.quarantined.items()},
            "low_reputation": {
                engine.roster.name(p): round(r, 3)
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

    def _recover(self, known: set[str]) -> None:
        """Rebuild the engines from the store: the participants, then each stored line's
        state and open round."""
        with self.db.transaction() as s:
            people = s.scalars(select(Participant)).all()
        for p in people:  # a revoked member too: its examples bound what it sent
            self.port.enroll(
                Member(
                    p.id,
                    p.name,
                    int(p.data_profile.get("examples", 1)),
                    p.public_key,
                    p.capacity,
                    p.data_profile,
                    "revoked" if p.revoked_at is not None else "active",
                    ready=p.polled_at is not None,
                )
            )
        for name in known & set(self.lines):  # (a line no longer configured stays stored)
            self._recover_line(self.lines[name])
        if self.region is not None:  # what was sent to the root, to send again if need be
            with self.db.transaction() as s:
                sent = s.scalar(
                    select(Round)
                    .where(Round.status == "forwarded")
                    .order_by(Round.number.desc())
                    .limit(1)
                )
            if sent is not None and sent.forwarded_sha256:
                update = forwarded_update(self.blobs.get(sent.forwarded_sha256))
                self.region.results[update.round] = update

    def _recover_line(self, line: ServiceLine) -> None:
        """One line's newest saved state, recent digests and open round."""
        mine = (Version.line == line.name, Version.server_state_sha256.is_not(None))
        with self.db.transaction() as s:
            latest = s.scalar(select(Version).where(*mine).order_by(Version.round.desc()).limit(1))
            open_row = s.scalar(
                select(Round).where(Round.status == "open", Round.line == line.name)
            )
            stored = (
                s.scalars(select(UpdateRow).where(UpdateRow.round_id == open_row.id)).all()
                if open_row
                else []
            )
        if latest is None or latest.server_state_sha256 is None:
            raise ZenfedError(
                f"line '{line.name}' has versions but no saved state",
                fix="restore the state folder from a backup",
            )
        state = CoordinatorState.from_bytes(self.blobs.get(latest.server_state_sha256))
        if state.version.id != latest.id:
            raise ZenfedError(
                f"the saved state is not of the newest version {latest.id[:12]}",
                fix="restore the state folder from a backup",
            )
        line.engine.adopt(state)
        self._recent_digests(line)
        if open_row is not None:
            self._reopen(line, open_row, stored)

    def _recent_digests(self, line: ServiceLine) -> None:
        """The payloads accepted into the rounds an upload may still be retried into (the
        round policy's window), so a retry whose acknowledgement a crash lost is answered
        "duplicate"."""
        oldest = line.engine.state.round - line.engine.policy.retry_rounds
        with self.db.transaction() as s:
            rows = s.execute(
                select(UpdateRow, Round.number)
                .join(Round, UpdateRow.round_id == Round.id)
                .where(Round.number >= oldest, Round.line == line.name)
            ).all()
        for u_row, number in rows:
            task_round = int((u_row.meta or {}).get("round", number))
            line.port.digests[(u_row.participant_id, task_round)] = u_row.payload_sha256

    def _reopen(self, line: ServiceLine, row: Round, stored: Sequence[UpdateRow]) -> None:
        engine, port = line.engine, line.port
        deadline = aware(row.deadline_at).timestamp() if row.deadline_at else self.clock()
        tasks = [Task.from_dict(t) for t in row.tasks]
        # Rounds skipped since the last version (an empty Poisson sample) moved the round
        # number on without a version to record it: the open round's row does.
        engine.renumber(max(engine.state.round, row.number))
        engine.restore_round(tasks, deadline)
        line.journal.round_id = row.id
        if port.stages.running(engine.current):
            # The masks' secrets lived in the agents' processes and this one: the masked
            # uploads stored so far can never be unmasked. The next round runs instead.
            port.abort("the coordinator restarted during a secure round")
            return
        for u_row in stored:  # replay: validated again, counted once
            u = update_from_row(u_row, self.blobs.get(u_row.payload_sha256), row)
            tensors = engine.check(u)
            port.digests[(u.participant, u.round)] = u_row.payload_sha256
            engine.accept(u, tensors)
        for pid in {t.participant for t in tasks} - set(self.enrolled):  # revoked meanwhile
            engine.withdraw(pid)  # revoked since the round opened
        log_event("recovered", round=row.number, replayed=len(stored), line=line.name)

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
            named = named_blobs(s)
        orphans = [d for d in self.blobs.digests() if d not in named]
        for digest in orphans:
            self.blobs.delete(digest)
        if orphans:
            log_event("collected_orphans", level=logging.INFO, blobs=len(orphans))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)
