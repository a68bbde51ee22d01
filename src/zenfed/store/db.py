"""The coordinator's database: SQLAlchemy models, SQLite by default, any URL (PostgreSQL).

    db = Database("sqlite:///state/zenfed.db")   # or postgresql+psycopg://...
    db.upgrade()                                  # Alembic migrations to the newest schema
    with db.transaction() as s:                   # one commit, or none
        s.add(Participant(...)); audit(s, "operator", "invite", {...})

Tensors never live here: versions and updates are rows naming blobs (sha256) in the
:class:`~zenfed.store.blobs.BlobStore`. Every state change is written with an ``Audit``
row in the same transaction, so the audit log is complete by construction. SQLite runs in
WAL mode with full fsync and foreign keys on; its file (and the WAL and shared-memory files
SQLite makes beside it, which inherit the file's mode) is readable by its owner only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    ForeignKey,
    LargeBinary,
    String,
    UniqueConstraint,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        dict[str, Any] | None: JSON,
        list[Any]: JSON,
    }


class Participant(Base):
    """An enrolled data holder: its public key and what it declared (never its data)."""

    __tablename__ = "participants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the public key
    name: Mapped[str] = mapped_column(String(200), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    capacity: Mapped[dict[str, Any]]
    data_profile: Mapped[dict[str, Any]]
    enrolled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When it first asked for a task: only participants that did are sampled.
    polled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EnrollmentToken(Base):
    """A single-use invitation; only its hash is stored."""

    __tablename__ = "enrollment_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    used_by: Mapped[str | None] = mapped_column(ForeignKey("participants.id"))


class Round(Base):
    """One attempt at a training round: its tasks, the version it starts from, its end.

    ``number`` is the engine's 0-based round of its model ``line``; an aborted attempt
    (nobody uploaded by the deadline) is kept, and the line moves on to the next number.
    """

    __tablename__ = "rounds"

    id: Mapped[int] = mapped_column(primary_key=True)
    line: Mapped[str] = mapped_column(String(64), default="main", index=True)  # [lines]
    number: Mapped[int]
    status: Mapped[str] = mapped_column(String(16))  # open | closed | aborted | forwarded
    base_version: Mapped[str] = mapped_column(ForeignKey("versions.id"))
    codec_seed: Mapped[int] = mapped_column(BigInteger)  # up to 2**62: 64-bit everywhere
    tasks: Mapped[list[Any]]  # the tasks as sent (participant, seeds, lr, ...)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result_version: Mapped[str | None] = mapped_column(ForeignKey("versions.id"))
    reason: Mapped[str | None] = mapped_column(String(500))
    # A regional coordinator's round ends by forwarding (status "forwarded"): the blob of
    # the update it sent the root.
    forwarded_sha256: Mapped[str | None] = mapped_column(String(64))


class Update(Base):
    """An accepted update: its metadata and the blob holding its payload."""

    __tablename__ = "updates"
    __table_args__ = (UniqueConstraint("round_id", "participant_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    participant_id: Mapped[str] = mapped_column(ForeignKey("participants.id"))
    payload_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    num_examples: Mapped[int]
    examples_seen: Mapped[int]
    num_tokens: Mapped[int]
    seconds: Mapped[float]
    train_loss: Mapped[float]
    steps: Mapped[int]
    meta: Mapped[dict[str, Any] | None]  # Update.metadata(): every field, for the replay
    signature: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the signed request
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Version(Base):
    """A committed global version: its tensors' blob, parent and what went into it."""

    __tablename__ = "versions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # protocol.version_id
    line: Mapped[str] = mapped_column(String(64), default="main", index=True)  # [lines]
    content: Mapped[str | None] = mapped_column(String(64))  # tensors_hash of the version
    round: Mapped[int]  # -1 for the initial version
    parent: Mapped[str | None] = mapped_column(String(64))
    blob_sha256: Mapped[str] = mapped_column(String(64))  # the version as downloaded in full
    # CoordinatorState.to_bytes() after this version; kept for the newest version only
    server_state_sha256: Mapped[str | None] = mapped_column(String(64))
    # With a downlink codec: the broadcast that leads from the parent to this version.
    broadcast_sha256: Mapped[str | None] = mapped_column(String(64))
    broadcast_seed: Mapped[int | None] = mapped_column(BigInteger)
    # Exactly the updates combined into it, and the weight each had (same order).
    participants: Mapped[list[Any]]
    weights: Mapped[list[Any] | None] = mapped_column(JSON)
    num_examples: Mapped[int]
    metrics: Mapped[dict[str, Any]]
    # Its manifest (zenfed.protocol.manifest) and digest: the version log, chained by hash.
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Nonce(Base):
    """A request nonce already seen from a participant (replays are refused)."""

    __tablename__ = "nonces"

    participant_id: Mapped[str] = mapped_column(ForeignKey("participants.id"), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Audit(Base):
    """One line of the audit trail: who did what, when, with which details."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]]


def audit(session: Session, actor: str, action: str, detail: dict[str, Any]) -> None:
    """Add an audit row to ``session`` (committed with the change it records)."""
    session.add(Audit(actor=actor, action=action, detail=detail))


class Database:
    """An engine, a session factory, and the schema's migrations."""

    def __init__(self, url: str) -> None:
        self.url = url
        _private_sqlite_file(url)
        self.engine: Engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (creates it on a fresh database)."""
        with self.engine.begin() as conn:
            cfg = alembic_config(self.url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose changes commit together at the end, or roll back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        """Release the engine's connections."""
        self.engine.dispose()


def alembic_config(url: str) -> Config:
    """Alembic's config for our migrations folder and ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _private_sqlite_file(url: str) -> None:
    """Create a SQLite database file 0600 before SQLite does (its WAL and SHM files copy
    the database file's mode), and tighten files left 0644 by an older version."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for p in (path, *(Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal"))):
        if p.exists():
            p.chmod(0o600)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()
