"""Group commit: small writes from many threads share one transaction and one fsync.

    group = GroupCommit(db)
    group.write(lambda s: s.add(Nonce(...)))   # returns once a commit holding it is durable

A writer returns only after a transaction holding its work has committed, so whatever it
then acknowledges is on disk exactly as with a transaction of its own: it survives kill -9
and, with SQLite's ``synchronous=FULL`` or PostgreSQL's defaults, a power cut. What
changes is the cost under load: writers that arrive while a commit is running wait for the
next one, which takes all of them, so one fsync serves many. There is no thread of its own
(the first waiting writer leads the next commit; the others follow), and a lone writer
commits at once, as it would have without the group.

A work item runs inside the shared transaction and must only add or change rows; if the
shared commit fails, each item is retried in a transaction of its own, so one item that
fails (a duplicate key, say) fails alone and the others still commit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from zenfed.store.db import Database

T = TypeVar("T")


@dataclass
class _Work:
    fn: Callable[[Session], Any]
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    """Writes to ``db`` that commit together when they arrive together."""

    def __init__(self, db: Database, max_batch: int = 512) -> None:
        self.db = db
        self.max_batch = max_batch
        self._cv = threading.Condition()
        self._queue: list[_Work] = []
        self._leading = False
        self.commits = 0  # transactions committed (for the metrics and the tests)
        self.writes = 0  # work items committed

    @property
    def waiting(self) -> int:
        """Writes queued for the next commit."""
        with self._cv:
            return len(self._queue)

    def write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in a transaction that commits before this returns; its
        result, or the exception it (or its commit) raised."""
        work = _Work(fn)
        with self._cv:
            self._queue.append(work)
            while not work.done and (self._leading or work not in self._queue):
                self._cv.wait()
            if not work.done:  # nobody leads and this work is queued: lead the next commit
                self._leading = True
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        if not work.done:
            try:
                self._commit(batch)
            finally:
                with self._cv:
                    self._leading = False
                    self._cv.notify_all()
        if work.error is not None:
            raise work.error
        return work.result

    def _commit(self, batch: list[_Work]) -> None:
        """One transaction for the batch; if it fails, one transaction per item."""
        try:
            with self.db.transaction() as s:
                results = [w.fn(s) for w in batch]
        except Exception:
            for w in batch:
                self._alone(w)
        else:
            for w, r in zip(batch, results, strict=True):
                w.result, w.done = r, True
            self.commits += 1
            self.writes += len(batch)
        finally:
            for w in batch:  # an error that escaped both (KeyboardInterrupt, say)
                if not w.done:
                    w.error, w.done = RuntimeError("the group commit was interrupted"), True

    def _alone(self, w: _Work) -> None:
        try:
            with self.db.transaction() as s:
                w.result = w.fn(s)
            self.commits += 1
            self.writes += 1
        except Exception as e:
            w.error = e
        w.done = True
