"""The blob store and the database: atomic, content-addressed, migrated, audited."""

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from zenfed.errors import ZenfedError
from zenfed.store.blobs import BlobStore
from zenfed.store.db import (
    Audit,
    Base,
    Database,
    Participant,
    Round,
    Update,
    Version,
    audit,
)


def test_blobs_are_named_by_content_stored_once_and_verified(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = b"\x00adapter bytes" * 1000
    digest = blobs.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert blobs.put(data) == digest and blobs.has(digest) and blobs.size(digest) == len(data)
    assert blobs.get(digest) == data
    with blobs.open(digest) as f:
        f.seek(5)
        assert f.read(3) == data[5:8]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [blobs.path(digest)]  # one file, no temporary leftovers


def test_a_corrupt_or_missing_blob_or_a_bad_name_is_an_error(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest = blobs.put(b"abc")
    blobs.path(digest).write_bytes(b"abd")
    with pytest.raises(ZenfedError, match="is corrupt"):
        blobs.get(digest)
    with pytest.raises(ZenfedError, match="not stored"):
        blobs.get("0" * 64)
    with pytest.raises(ZenfedError, match="not a sha256 hex digest"):
        blobs.get("../../etc/passwd")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    d = Database(f"sqlite:///{tmp_path / 'zenfed.db'}")
    d.upgrade()
    return d


def test_migrations_build_exactly_the_models_schema(db: Database) -> None:
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        names = set(inspect(conn).get_table_names())
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    assert {t.name for t in Base.metadata.sorted_tables} <= names
    assert "alembic_version" in names
    db.upgrade()  # idempotent on an up-to-date database


def _participant(name: str = "clinic") -> Participant:
    key = hashlib.sha256(name.encode()).digest()
    return Participant(
        id=hashlib.sha256(key).hexdigest(),
        name=name,
        public_key=key,
        capacity={"memory_gb": 32},
        data_profile={"examples": 100},
    )


def _version() -> Version:
    return Version(
        id="a" * 64,
        round=-1,
        parent=None,
        blob_sha256="b" * 64,
        server_state_sha256="d" * 64,
        participants=[],
        num_examples=0,
        metrics={},
    )


def test_a_transaction_commits_its_audit_row_with_the_change_or_neither(db: Database) -> None:
    with db.transaction() as s:
        s.add(_participant())
        audit(s, "operator", "enroll", {"name": "clinic"})
    with pytest.raises(RuntimeError), db.transaction() as s:
        s.add(_participant("lab"))
        audit(s, "operator", "enroll", {"name": "lab"})
        raise RuntimeError("crash before commit")
    with db.transaction() as s:
        assert [p.name for p in s.scalars(select(Participant))] == ["clinic"]
        assert [a.detail["name"] for a in s.scalars(select(Audit))] == ["clinic"]


def test_one_update_per_participant_and_round(db: Database) -> None:
    p = _participant()
    with db.transaction() as s:
        s.add_all([p, _version()])
        s.flush()
        s.add(
            Round(
                id=1,
                number=0,
                status="open",
                base_version="a" * 64,
                codec_seed=2**62,
                tasks=[{"participant": p.id}],
                deadline_at=datetime.now(UTC) + timedelta(minutes=5),
            )
        )
    row = {
        "round_id": 1,
        "participant_id": p.id,
        "payload_sha256": "c" * 64,
        "size": 10,
        "num_examples": 5,
        "examples_seen": 8,
        "num_tokens": 100,
        "seconds": 1.0,
        "train_loss": 2.0,
        "steps": 1,
    }
    with db.transaction() as s:
        s.add(Update(**row))
    with pytest.raises(IntegrityError), db.transaction() as s:
        s.add(Update(**row))
    with db.transaction() as s:
        assert s.get(Round, 1).codec_seed == 2**62  # type: ignore[union-attr]
        assert len(s.scalars(select(Update)).all()) == 1


def test_a_participant_s_state_survives_its_byte_form_and_adam_goes_on_identically() -> None:
    import torch

    from zenfed.participant.state import ParticipantState

    def opt_after(steps: int, state: dict | None = None) -> tuple[torch.Tensor, dict]:  # type: ignore[type-arg]
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.ones(3, 2))
        opt = torch.optim.AdamW([w], lr=0.1)
        if state is not None:
            opt.load_state_dict(state)
        for _ in range(steps):
            (w**2).sum().backward()
            opt.step()
            opt.zero_grad()
        return w.detach().clone(), opt.state_dict()

    _, after_two = opt_after(2)
    st = ParticipantState(
        optimizer=after_two,
        rounds_trained=2,
        extra={"error_feedback": {"a": torch.arange(6.0).reshape(2, 3)}},
        record_privacy=[(0.1, 1.1), (0.1, 1.1)],
    )
    back = ParticipantState.from_bytes(st.to_bytes())
    assert back.rounds_trained == 2 and back.record_privacy == st.record_privacy
    assert torch.equal(back.extra["error_feedback"]["a"], st.extra["error_feedback"]["a"])
    assert back.optimizer is not None and list(back.optimizer["state"]) == [0]  # int keys
    # the restored moments continue Adam exactly where the saved ones would have
    w_saved, _ = opt_after(1, after_two)
    w_restored, _ = opt_after(1, back.optimizer)
    assert torch.equal(w_saved, w_restored)
