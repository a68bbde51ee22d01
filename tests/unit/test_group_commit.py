"""Group commit and the nonce book, on SQLite and PostgreSQL: writes that arrive together
commit together, one failing write fails alone, and a replayed nonce is refused, also
after a restart."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tests.databases import db_url as db_url
from zenfed.protocol.auth import AuthError
from zenfed.service.nonces import HORIZON_S, NonceBook
from zenfed.store.db import Audit, Database, Nonce, Participant, audit
from zenfed.store.group import GroupCommit


@pytest.fixture
def db(db_url: str) -> Any:
    d = Database(db_url)
    d.upgrade()
    yield d
    d.close()


def _audits(db: Database) -> list[str]:
    with db.transaction() as s:
        return sorted(a.action for a in s.scalars(select(Audit)))


def test_writers_that_arrive_together_share_one_commit(db: Database) -> None:
    group, n = GroupCommit(db), 12
    release = threading.Event()

    def first(s: Session) -> str:
        release.wait(10)  # holds the leader's commit until the others have queued
        audit(s, "t", "w0", {})
        return "w0"

    results: dict[int, str] = {}

    def writer(i: int) -> None:
        if i == 0:
            results[i] = group.write(first)
        else:

            def one(s: Session) -> str:
                audit(s, "t", f"w{i}", {})
                return f"w{i}"

            results[i] = group.write(one)

    threads = [threading.Thread(target=writer, args=(0,))]
    threads[0].start()
    while group.waiting:  # the first writer leads, alone
        time.sleep(0.01)
    threads += [threading.Thread(target=writer, args=(i,)) for i in range(1, n)]
    for t in threads[1:]:
        t.start()
    while group.waiting < n - 1:
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join(10)
    assert results == {i: f"w{i}" for i in range(n)}
    assert _audits(db) == sorted(f"w{i}" for i in range(n))
    assert group.writes == n and group.commits == 2  # the leader's own, then all the rest


def test_a_failing_write_fails_alone_and_the_others_commit(db: Database) -> None:
    group = GroupCommit(db)
    hold = threading.Event()
    errors: dict[str, BaseException] = {}

    def run(name: str, fn: Any) -> None:
        try:
            group.write(fn)
        except Exception as e:
            errors[name] = e

    def bad(s: Session) -> None:
        audit(s, "t", "bad", {})
        raise ValueError("this write is refused")

    lead = threading.Thread(
        target=run, args=("lead", lambda s: (hold.wait(10), audit(s, "t", "lead", {})))
    )
    lead.start()
    while group.waiting:
        time.sleep(0.01)
    threads = [
        threading.Thread(target=run, args=(name, fn))
        for name, fn in (("a", _write("a")), ("bad", bad), ("b", _write("b")))
    ]
    for t in threads:
        t.start()
    while group.waiting < 3:
        time.sleep(0.01)
    hold.set()
    for t in [lead, *threads]:
        t.join(10)
    assert set(errors) == {"bad"} and isinstance(errors["bad"], ValueError)
    assert _audits(db) == ["a", "b", "lead"]  # nothing of the failing write


def _write(action: str) -> Any:
    def fn(s: Session) -> None:
        audit(s, "t", action, {})

    return fn


def _participant(db: Database, pid: str) -> None:
    with db.transaction() as s:
        s.add(Participant(id=pid, name=pid[:8], public_key=b"k" * 32, capacity={}, data_profile={}))


def test_a_replayed_nonce_is_refused_also_after_a_restart(db: Database) -> None:
    pid, now = "a" * 64, [1_000_000.0]
    _participant(db, pid)
    book = NonceBook(db, GroupCommit(db), lambda: now[0])
    book.record(pid, "n1")
    with pytest.raises(AuthError, match="replay"):
        book.record(pid, "n1")
    restarted = NonceBook(db, GroupCommit(db), lambda: now[0])
    with pytest.raises(AuthError, match="replay"):
        restarted.record(pid, "n1")
    with db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Nonce)) == 1  # recorded once


def test_a_nonce_the_database_has_but_memory_lost_is_still_a_replay(db: Database) -> None:
    pid, now = "c" * 64, [2_000_000.0]
    _participant(db, pid)
    book = NonceBook(db, GroupCommit(db), lambda: now[0])
    book.record(pid, "n1")
    now[0] += HORIZON_S + 10  # past the horizon: memory lets it go at the next record
    book.record(pid, "n2")
    assert len(book) == 1
    with pytest.raises(AuthError, match="replay"):  # the database still refuses it
        book.record(pid, "n1")
    assert NonceBook(db, GroupCommit(db), lambda: now[0]).__len__() == 1  # only n2 is young


def test_group_write_raises_the_integrity_error_of_its_own_write(db: Database) -> None:
    pid = "d" * 64
    _participant(db, pid)
    group = GroupCommit(db)

    def add(s: Session) -> None:
        s.add(Nonce(participant_id=pid, nonce="x"))

    group.write(add)
    with pytest.raises(IntegrityError):
        group.write(add)
