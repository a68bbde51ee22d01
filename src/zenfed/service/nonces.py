"""The nonces of signed requests, so that a replayed request is refused, also after a
restart.

    book = NonceBook(db, group, clock)
    book.record(pid, nonce)      # AuthError if seen before; returns once it is on disk

A nonce is checked and reserved in memory (under a lock of its own, not the
coordinator's), then written through the group commit, so under load one fsync serves the
nonces of many requests; ``record`` returns only once the nonce is durable, as before. A
request's timestamp must be within ``MAX_SKEW_S`` of the server's clock, so a nonce older
than twice that can never be replayed: those are dropped from memory here and from the
database when a round opens (journal.py). A restart loads the ones still young enough.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from zenfed.protocol.auth import MAX_SKEW_S, AuthError
from zenfed.store.db import Database, Nonce
from zenfed.store.group import GroupCommit

HORIZON_S = 2 * MAX_SKEW_S  # a nonce older than this cannot come back


class NonceBook:
    """Every nonce seen within the horizon, in memory and in the database."""

    def __init__(self, db: Database, group: GroupCommit, clock: Callable[[], float]) -> None:
        self.group, self.clock = group, clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], float] = {}
        self._pruned_at = clock()
        cutoff = datetime.fromtimestamp(clock() - HORIZON_S, UTC)
        with db.transaction() as s:
            rows = s.execute(
                select(Nonce.participant_id, Nonce.nonce, Nonce.seen_at).where(
                    Nonce.seen_at >= cutoff
                )
            ).all()
        for pid, nonce, seen in rows:
            seen = seen if seen.tzinfo is not None else seen.replace(tzinfo=UTC)
            self._seen[(pid, nonce)] = seen.timestamp()

    def record(self, pid: str, nonce: str) -> None:
        """AuthError if ``pid`` used ``nonce`` before; otherwise it is recorded, durably."""
        now = self.clock()
        with self._lock:
            if (pid, nonce) in self._seen:
                raise _replay()
            self._seen[(pid, nonce)] = now
            if now - self._pruned_at > MAX_SKEW_S:
                self._prune(now)
        when = datetime.fromtimestamp(now, UTC)

        def add(s: Session) -> None:
            s.add(Nonce(participant_id=pid, nonce=nonce, seen_at=when))
            s.flush()

        try:
            self.group.write(add)
        except IntegrityError as e:  # in the database but not in memory: seen before
            raise _replay() from e

    def __len__(self) -> int:
        return len(self._seen)

    def _prune(self, now: float) -> None:
        cutoff = now - HORIZON_S - 1.0
        self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}
        self._pruned_at = now


def _replay() -> AuthError:
    return AuthError("request nonce was already used (a replay)", fix="sign anew")
