"""The deployment's coordinator: enrollment, durable rounds, restart after a crash."""

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.databases import fresh_postgres
from zenfed.config import BufferedConfig, FederationConfig, RunConfig, parse_config
from zenfed.coordinator.engine import UpdateRejected
from zenfed.protocol import Update
from zenfed.protocol.auth import AuthError, Identity, sign_request
from zenfed.service.persistent import EnrollmentRefused, PersistentCoordinator
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Database

INITIAL = {"a": torch.zeros(2, 3), "b": torch.ones(4)}


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def _cfg(**service: Any) -> FederationConfig:
    return parse_config(
        {
            "data": {"categories": ["ai"]},
            "server": {"optimizer": "fedavgm", "lr": 1.0, "momentum": 0.5},
            "sampling": {"fraction": 1.0, "min_participants": 2},
            "run": {"rounds": 3},
            "service": {"quorum": 1.0, "round_timeout_s": 60.0, **service},
        }
    )


# With the ``store`` fixture on PostgreSQL: one fresh database per federation folder.
_POSTGRES: list[Callable[[], str]] = []
_URLS: dict[Path, str] = {}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run the test's federations on SQLite, then on PostgreSQL."""
    with ExitStack() as stack:
        if request.param == "postgresql":
            _POSTGRES.append(lambda: stack.enter_context(fresh_postgres()))
        try:
            yield
        finally:
            _POSTGRES.clear()
            _URLS.clear()


def _fed(tmp: Path, clock: Clock, cfg: FederationConfig | None = None) -> PersistentCoordinator:
    if tmp not in _URLS:
        _URLS[tmp] = _POSTGRES[0]() if _POSTGRES else f"sqlite:///{tmp / 'fed.db'}"
    db = Database(_URLS[tmp])
    return PersistentCoordinator(cfg or _cfg(), INITIAL, db, BlobStore(tmp / "blobs"), clock)


def _join(fed: PersistentCoordinator, name: str, examples: int = 10) -> tuple[str, Identity]:
    me = Identity(Ed25519PrivateKey.generate())
    pid = fed.enroll(
        fed.invite(name), name, me.public_key, {"memory_gb": 32}, {"examples": examples}
    )
    assert fed.next_task(pid) is None  # an agent asks for work: from now on it is sampled
    return pid, me


def _upload(fed: PersistentCoordinator, pid: str, value: float, examples: int = 10) -> Update:
    task = fed.next_task(pid)
    assert task is not None
    codec = fed.engine.codec
    tensors = {k: torch.full_like(v, value) for k, v in INITIAL.items()}
    return Update(
        round=task.round,
        participant=pid,
        base_version=task.version,
        payload=codec.to_bytes(codec.encode(tensors, shared_seed=task.codec_seed)),
        num_examples=examples,
        examples_seen=8,
        num_tokens=100,
        seconds=1.0,
        train_loss=2.0,
        steps=1,
    )


@pytest.mark.usefixtures("store")
def test_enrolled_participants_train_a_round_and_everything_is_recorded(tmp_path: Path) -> None:
    clock = Clock()
    fed = _fed(tmp_path, clock)
    a, _ = _join(fed, "clinic", 30)
    fed.tick()
    assert fed.engine.open_round_info is None  # one participant is below min_participants
    b, _ = _join(fed, "lab", 10)
    fed.tick()
    assert fed.next_task(a) is not None and fed.next_task(b) is not None
    assert fed.port.upload(_upload(fed, a, 1.0, 30)) == "accepted"
    assert fed.next_task(a) is None  # uploaded: nothing more to do this round
    fed.port.upload(_upload(fed, b, 5.0, 10))
    version = fed.tick()  # quorum reached
    assert version is not None and version.round == 0
    torch.testing.assert_close(fed.engine.state.params["a"], torch.full((2, 3), 2.0))
    blob = fed.version_blob(version.id)
    assert fed.blobs.has(blob)
    actions = [action for _, action, _ in fed.audit_log()]
    assert actions == [
        "commit_version",
        "invite",
        "enroll",
        "invite",
        "enroll",
        "open_round",
        "upload",
        "upload",
        "commit_version",
    ]


def test_enrollment_refusals_name_the_reason(tmp_path: Path) -> None:
    fed = _fed(tmp_path, Clock(), _cfg(min_memory_gb=16.0))
    key = Identity(Ed25519PrivateKey.generate()).public_key
    token = fed.invite("x")
    with pytest.raises(EnrollmentRefused, match="memory 8 GB is below the federation's 16.0 GB"):
        fed.enroll(token, "small", key, {"memory_gb": 8}, {"examples": 5})
    with pytest.raises(EnrollmentRefused, match="unknown enrollment token"):
        fed.enroll("forged", "p", key, {"memory_gb": 32}, {"examples": 5})
    fed.enroll(token, "p", key, {"memory_gb": 32}, {"examples": 5})
    other = Identity(Ed25519PrivateKey.generate()).public_key
    with pytest.raises(EnrollmentRefused, match="already used"):
        fed.enroll(token, "q", other, {"memory_gb": 32}, {"examples": 5})
    with pytest.raises(EnrollmentRefused, match="already enrolled"):
        fed.enroll(fed.invite(), "r", key, {"memory_gb": 32}, {"examples": 5})
    with pytest.raises(EnrollmentRefused, match="name 'p' is taken"):
        fed.enroll(fed.invite(), "p", other, {"memory_gb": 32}, {"examples": 5})
    expired = fed.invite(ttl_s=10)
    fed.clock.t += 11  # type: ignore[attr-defined]
    with pytest.raises(EnrollmentRefused, match="expired"):
        fed.enroll(expired, "late", other, {"memory_gb": 32}, {"examples": 5})


@pytest.mark.usefixtures("store")
def test_retried_upload_is_acknowledged_once_and_a_different_one_refused(tmp_path: Path) -> None:
    fed = _fed(tmp_path, Clock())
    a, _ = _join(fed, "a")
    _join(fed, "b")
    fed.tick()
    up = _upload(fed, a, 1.0)
    assert fed.port.upload(up) == "accepted"
    assert fed.port.upload(up) == "duplicate"
    with pytest.raises(UpdateRejected, match="already uploaded"):
        fed.port.upload(_upload_again(fed, up, 7.0))
    assert fed.engine.open_round_info is not None
    assert len(fed.engine.open_round_info[2]) == 1
    assert fed.rejections == {"already_uploaded": 1}


def _upload_again(fed: PersistentCoordinator, up: Update, value: float) -> Update:
    from dataclasses import replace

    codec = fed.engine.codec
    tensors = {k: torch.full_like(v, value) for k, v in INITIAL.items()}
    return replace(up, payload=codec.to_bytes(codec.encode(tensors, shared_seed=0)))


@pytest.mark.usefixtures("store")
def test_a_restart_mid_round_loses_no_accepted_update_and_counts_none_twice(
    tmp_path: Path,
) -> None:
    clock = Clock()
    fed = _fed(tmp_path / "crash", clock)
    ref = _fed(tmp_path / "ref", Clock())
    ids = {}
    for f in (fed, ref):
        ids[id(f)] = [_join(f, n, e) for n, e in (("a", 30), ("b", 10))]
        f.tick()
    (a, _), (b, _) = ids[id(fed)]
    fed.port.upload(_upload(fed, a, 1.0, 30))
    del fed  # the process dies here: nothing but the database and blobs remain
    fed = _fed(tmp_path / "crash", clock)
    assert fed.engine.open_round_info is not None
    assert fed.engine.open_round_info[2] == {a}  # the accepted update is back, once
    assert fed.next_task(a) is None and fed.next_task(b) is not None
    fed.port.upload(_upload(fed, b, 5.0, 10))
    v = fed.tick()
    (ra, _), (rb, _) = ids[id(ref)]
    ref.port.upload(_upload(ref, ra, 1.0, 30))
    ref.port.upload(_upload(ref, rb, 5.0, 10))
    rv = ref.tick()
    assert v is not None and rv is not None and v.id == rv.id
    # and after the round: the version, server momentum and round number survive a restart
    fed.tick()
    again = _fed(tmp_path / "crash", clock)
    assert again.engine.version.id == v.id and again.engine.state.round == 1
    for k in INITIAL:
        torch.testing.assert_close(
            again.engine.state.server_state.m[k], fed.engine.state.server_state.m[k]
        )
    assert again.engine.open_round_info is not None and again.engine.open_round_info[0] == 1


def test_deadline_closes_with_stragglers_or_aborts_an_empty_round(tmp_path: Path) -> None:
    clock = Clock()
    fed = _fed(tmp_path, clock)
    a, _ = _join(fed, "a")
    _join(fed, "b")
    fed.tick()
    clock.t += 61
    assert fed.tick() is None and fed.engine.open_round_info is None  # aborted, nobody uploaded
    fed.tick()  # round 0 again, new attempt
    fed.port.upload(_upload(fed, a, 1.0))
    clock.t += 61
    v = fed.tick()
    assert v is not None and v.metrics["stragglers"] == 1.0
    assert [act for _, act, _ in fed.audit_log()].count("abort_round") == 1


def test_signed_requests_refuse_replays_and_revoked_participants(tmp_path: Path) -> None:
    clock = Clock()
    fed = _fed(tmp_path, clock)
    pid, me = _join(fed, "a")
    h = sign_request(me, "GET", "/v1/task", b"", now=clock.t)
    assert fed.authenticate(pid, "GET", "/v1/task", b"", h) == pid
    with pytest.raises(AuthError, match="replay"):
        fed.authenticate(pid, "GET", "/v1/task", b"", h)
    with pytest.raises(AuthError, match="unknown"):
        fed.authenticate("0" * 64, "GET", "/v1/task", b"", h)
    fed.revoke(pid)
    h2 = sign_request(me, "GET", "/v1/task", b"", now=clock.t)
    with pytest.raises(AuthError, match="revoked"):
        fed.authenticate(pid, "GET", "/v1/task", b"", h2)


def test_state_changes_are_logged_as_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from zenfed.logs import configure_json_logging

    configure_json_logging()
    fed = _fed(tmp_path, Clock())
    a, _ = _join(fed, "a")
    _join(fed, "b")
    fed.tick()
    fed.port.upload(_upload(fed, a, 1.0))
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    events = [x["event"] for x in lines]
    assert events == ["enroll", "enroll", "open_round", "upload"]
    assert lines[-1]["participant"] == a and lines[-1]["bytes"] > 0 and lines[-1]["round"] == 0


@pytest.mark.usefixtures("store")
def test_dp_ledger_survives_a_restart_and_the_budget_stops_the_service(tmp_path: Path) -> None:
    from zenfed.privacy import dp

    raw = _cfg().model_dump(mode="python")
    raw["sampling"] = {"method": "poisson", "fraction": 1.0, "min_participants": 2}
    raw["privacy"] = {"clip_norm": 1.0, "target_epsilon": 40.0, "adaptive_clipping": True}
    raw["run"] = {"rounds": 2}
    cfg = parse_config(raw)
    clock = Clock()
    fed = _fed(tmp_path, clock, cfg)
    people = [_join(fed, n)[0] for n in ("a", "b")]
    for _ in range(2):
        fed.tick()
        for pid in people:
            fed.port.upload(_upload(fed, pid, 0.5))
        assert fed.tick() is not None
    spent = fed.engine.epsilon()
    z = fed.engine.privacy.noise_multiplier
    assert z is not None and spent == pytest.approx(dp.epsilon([(1.0, z)] * 2, 1e-6))
    assert fed.status()["epsilon"] == pytest.approx(spent)
    clip = fed.engine.state.privacy.clip_norm
    again = _fed(tmp_path, clock, cfg)  # restart: the ledger comes back from the versions
    assert again.engine.epsilon() == pytest.approx(spent)
    assert again.engine.state.privacy.clip_norm == pytest.approx(clip) and clip != 1.0
    # one more round would exceed the target: the service stops instead of opening it
    longer = parse_config({**raw, "run": {"rounds": 5}})
    more = _fed(tmp_path, clock, longer)
    assert more.tick() is None and more.engine.open_round_info is None
    assert more.finished() and "budget" in more.status()["stopped"]
    assert any(a == "privacy_budget_exhausted" for _, a, _ in more.audit_log())


@pytest.mark.usefixtures("store")
def test_a_commit_that_fails_to_store_leaves_the_round_open_and_the_next_tick_commits_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = _fed(tmp_path, Clock())
    a, _ = _join(fed, "a")
    b, _ = _join(fed, "b")
    fed.tick()
    for pid in (a, b):
        fed.port.upload(_upload(fed, pid, 0.0))  # the result equals its parent's tensors
    before = fed.engine.version.id
    real_put = fed.blobs.put

    def full_disk(data: bytes) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fed.blobs, "put", full_disk)
    with pytest.raises(OSError, match="No space"):
        fed.tick()
    # nothing moved: the same version, the round still open with both updates counted
    assert fed.engine.version.id == before and fed.engine.state.round == 0
    assert fed.engine.open_round_info is not None and len(fed.engine.open_round_info[2]) == 2
    monkeypatch.setattr(fed.blobs, "put", real_put)
    v = fed.tick()
    assert v is not None and v.parent == before and v.id != before
    again = _fed(tmp_path, Clock())  # and the store agrees
    assert again.engine.version.id == v.id and again.engine.state.round == 1


def test_the_database_and_blob_store_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    import stat

    from zenfed.deploy import private_state_dir

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    old_umask = os.umask(0o022)
    try:
        private_state_dir(state)
        fed = PersistentCoordinator(
            _cfg(), INITIAL, Database(f"sqlite:///{state / 'z.db'}"), BlobStore(state / "blobs")
        )
        _join(fed, "a")
    finally:
        os.umask(old_umask)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(state) == 0o700 and mode(state / "blobs") == 0o700
    files = [state / f"z.db{s}" for s in ("", "-wal", "-shm")]
    assert all(f.exists() and mode(f) == 0o600 for f in files), [oct(mode(f)) for f in files]
    blobs = [p for p in (state / "blobs").rglob("*")]
    assert blobs and all(mode(p) == (0o700 if p.is_dir() else 0o600) for p in blobs)


def test_a_database_left_world_readable_by_an_older_version_is_tightened(tmp_path: Path) -> None:
    import stat

    path = tmp_path / "old.db"
    Database(f"sqlite:///{path}").upgrade()
    path.chmod(0o644)
    Database(f"sqlite:///{path}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_enrollment_token_can_stay_out_of_the_process_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zenfed.deploy import resolve_token
    from zenfed.errors import ZenfedError

    monkeypatch.delenv("ZENFED_TOKEN", raising=False)
    assert resolve_token(None, None) is None
    f = tmp_path / "token"
    f.write_text("s3cret\n")
    assert resolve_token(None, f) == "s3cret"
    monkeypatch.setenv("ZENFED_TOKEN", "from-env")
    assert resolve_token(None, None) == "from-env"
    assert resolve_token("given", None) == "given"
    with pytest.raises(ZenfedError, match="not both"):
        resolve_token("given", f)
    with pytest.raises(ZenfedError, match="does not exist"):
        resolve_token(None, tmp_path / "nope")


@pytest.mark.usefixtures("store")
def test_a_restart_replays_every_field_of_a_stored_update(tmp_path: Path) -> None:
    from dataclasses import replace

    clock = Clock()
    fed = _fed(tmp_path, clock)
    a, _ = _join(fed, "a")
    b, _ = _join(fed, "b")
    fed.tick()
    fed.port.upload(replace(_upload(fed, a, 1.0), record_epsilon=2.5))
    again = _fed(tmp_path, clock)  # the process died: the round comes back from the store
    again.port.upload(_upload(again, b, 1.0))
    v = again.tick()
    assert v is not None and v.metrics["record_epsilon_max"] == 2.5


def test_an_update_s_metadata_has_one_form_and_it_carries_no_recomputed_field() -> None:
    from zenfed.transport.http.schemas import UpdateMeta

    u = Update(0, "p", "v" * 64, b"x", 10, 8, 100, 1.0, 2.0, 1, record_epsilon=0.5)
    meta = u.metadata()
    assert set(meta) == set(UpdateMeta.model_fields)  # the wire carries exactly this
    assert "below_clip" not in meta  # the coordinator computes clip bits itself
    assert Update.from_metadata(0, "p", b"x", meta) == u
    with pytest.raises(Exception, match="below_clip"):
        UpdateMeta.model_validate({**meta, "below_clip": True})


@pytest.mark.usefixtures("store")
def test_a_restart_after_a_skipped_round_reopens_the_round_in_the_store(tmp_path: Path) -> None:
    from zenfed.coordinator import Member, build_matcher

    raw = _cfg().model_dump(mode="python")
    raw["sampling"] = {"method": "poisson", "fraction": 0.5, "min_participants": 2}
    members = [Member("a", "a", 10), Member("b", "b", 10)]
    spec = parse_config(raw).sampling
    seed = next(  # a seed whose first round samples nobody (then it is skipped)
        s for s in range(100) if not build_matcher(spec, s).select(0, members)
    )
    cfg = parse_config({**raw, "run": {"rounds": 3, "seed": seed}})
    clock = Clock()
    fed = _fed(tmp_path, clock, cfg)
    for name in ("a", "b"):
        _join(fed, name)
    while fed.engine.open_round_info is None:
        fed.tick()
    assert fed.engine.state.round >= 1 and fed.engine.version.round == -1  # skipped ones
    opened = fed.engine.open_round_info
    again = _fed(tmp_path, clock, cfg)
    assert again.engine.open_round_info == opened


@pytest.mark.usefixtures("store")
def test_a_participant_revoked_mid_round_stays_out_of_it_after_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    fed = _fed(tmp_path, clock)
    a, _ = _join(fed, "a")
    _join(fed, "b")
    fed.tick()
    fed.revoke("b")
    again = _fed(tmp_path, clock)
    again.port.upload(_upload(again, a, 1.0))
    v = again.tick()  # quorum of the cohort that is left: no wait for b's deadline
    assert v is not None and v.participants == (a,)


@pytest.mark.usefixtures("store")
def test_a_median_round_keeps_its_updates_in_the_blob_store_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    raw = _cfg().model_dump(mode="python")
    raw["server"] = {"aggregator": "median"}
    raw["sampling"] = {"fraction": 1.0, "min_participants": 3}
    cfg = parse_config(raw)
    clock = Clock()
    fed = _fed(tmp_path, clock, cfg)
    people = [_join(fed, n)[0] for n in ("a", "b", "c")]
    fed.tick()
    before = sum(1 for _ in fed.blobs.digests())
    fed.port.upload(_upload(fed, people[0], 1.0))
    fed.port.upload(_upload(fed, people[1], 100.0))  # an outlier the median ignores
    assert sum(1 for _ in fed.blobs.digests()) == before + 4  # 2 payloads, 2 kept updates
    again = _fed(tmp_path, clock, cfg)  # restart mid-round: replayed, spilled anew
    again.port.upload(_upload(again, people[2], 3.0))
    v = again.tick()
    assert v is not None
    torch.testing.assert_close(again.engine.state.params["a"], torch.full((2, 3), 3.0))


def test_a_participant_state_from_before_its_format_was_named_still_loads() -> None:
    import io

    from zenfed.participant.state import ParticipantState

    buf = io.BytesIO()
    old = {"optimizer": None, "rounds_trained": 4, "extra": {}, "record_privacy": [[0.1, 1.0]]}
    torch.save(old, buf)
    st = ParticipantState.from_bytes(buf.getvalue())
    assert st.rounds_trained == 4 and st.record_privacy == [(0.1, 1.0)]


@pytest.mark.usefixtures("store")
def test_a_restart_mid_buffer_keeps_its_updates_its_tasks_in_flight_and_past_acks(
    tmp_path: Path,
) -> None:
    clock = Clock()
    cfg = _cfg().model_copy(
        update={"buffered": BufferedConfig(enabled=True, k=2), "run": RunConfig(rounds=5)}
    )
    fed = _fed(tmp_path, clock, cfg)
    (a, _), (b, _), (c, _) = (_join(fed, n) for n in ("a", "b", "c"))
    fed.tick()  # the first buffer opens
    up_a, up_b = _upload(fed, a, 1.0), _upload(fed, b, 3.0)
    fed.port.upload(up_a)
    assert fed.port.upload(up_b) == "accepted" and fed.tick() is not None  # buffer 0 made v1
    slow = fed.next_task(c)  # from v1, in flight
    up_a2 = _upload(fed, a, 5.0)  # into buffer 1
    fed.port.upload(up_a2)
    assert slow is not None and fed.engine.open_round_info == (1, {c, a}, {a})
    del fed  # the process dies here: nothing but the database and blobs remain
    fed = _fed(tmp_path, clock, cfg)
    info = fed.engine.open_round_info
    assert info is not None and info[0] == 1 and info[2] == {a}  # a's update is back, once
    assert fed.engine.policy.inflight.tasks  # type: ignore[attr-defined] == {c: slow}  # and c's task still in flight
    assert fed.next_task(c) == slow
    # an acknowledgement lost in the crash: the retry is known, in this buffer and the last
    assert fed.port.upload(up_a2) == "duplicate" and fed.port.upload(up_b) == "duplicate"
    fed.port.upload(_upload(fed, c, 7.0))
    v2 = fed.tick()
    assert v2 is not None and v2.participants == tuple(sorted((a, c)))


def test_a_retry_after_its_round_closed_is_a_duplicate_not_a_refusal(tmp_path: Path) -> None:
    """An agent whose acknowledgement was lost (a restart) may retry after the round has
    closed: it hears "duplicate"; another payload for that round is still refused."""
    clock = Clock()
    fed = _fed(tmp_path, clock)
    a, _ = _join(fed, "clinic", 30)
    b, _ = _join(fed, "lab", 10)
    fed.tick()
    up_a, up_b = _upload(fed, a, 1.0, 30), _upload(fed, b, 5.0, 10)
    fed.port.upload(up_a)
    fed.port.upload(up_b)
    assert fed.tick() is not None  # the round closed
    fed.tick()  # and the next opened
    fed.port.admit(a, up_a.round)  # let through: it may be a retry
    assert fed.port.upload(up_a) == "duplicate"
    other = _upload(fed, a, 2.0, 30)  # a task of the new round; sent to the old one
    with pytest.raises(UpdateRejected):
        fed.port.upload(replace(other, round=up_a.round, base_version=up_a.base_version))
    with pytest.raises(UpdateRejected, match="not open"):  # nothing of b's in round 5
        fed.port.admit(b, 5)


@pytest.mark.usefixtures("store")
def test_the_roster_survives_a_restart_with_what_each_member_declared(tmp_path: Path) -> None:
    clock = Clock()
    fed = _fed(tmp_path, clock)
    a, me_a = _join(fed, "a", examples=12)
    me_b = Identity(Ed25519PrivateKey.generate())
    capacity = {"memory_gb": 80, "device": "cuda", "train_tokens_per_s": 5400.5}
    profile = {"examples": 30, "tokens": 9000, "domain": "contracts", "language": "en"}
    b = fed.enroll(fed.invite("b"), "b", me_b.public_key, capacity, profile)  # never polled
    c, _ = _join(fed, "c")
    fed.revoke("c")
    again = _fed(tmp_path, clock)
    roster = again.port.roster
    mb = roster.get(b)
    assert mb is not None and (mb.name, mb.examples, mb.key) == ("b", 30, me_b.public_key)
    assert dict(mb.capacity) == capacity and dict(mb.profile) == profile
    assert not mb.ready and mb.status == "active"  # enrolled, never asked for work
    ma, mc = roster.get(a), roster.get(c)
    assert ma is not None and ma.ready and ma.key == me_a.public_key and ma.examples == 12
    assert mc is not None and mc.status == "revoked" and roster.examples(c) == 10
    assert [m.id for m in roster.pool()] == [a] and roster.key(c) is None
    assert again.next_task(b) is None and [m.id for m in roster.pool()] == [a, b]


@pytest.mark.usefixtures("store")
def test_a_round_that_ends_without_a_version_moves_on_in_the_service_and_the_simulation(
    tmp_path: Path,
) -> None:
    from zenfed.coordinator import Coordinator, CoordinatorPort

    clock = Clock()
    fed = _fed(tmp_path, clock)
    for name in ("a", "b"):
        _join(fed, name)
    sim = CoordinatorPort(
        Coordinator(_cfg(), INITIAL, {"a": 10, "b": 10}), clock=clock, wait_for_minimum=False
    )
    for port in (fed.lines["main"].port, sim):  # the service's port, and the simulation's
        assert port.tick() == "opened" and port.engine.state.round == 0
        clock.t += 61.0  # past service.round_timeout_s with no update
        assert port.tick() == "aborted" and port.engine.current is None
        assert port.engine.state.round == 1  # the next round number, not round 0 again
        assert port.tick() == "opened" and port.engine.current is not None
        assert port.engine.current.round == 1
    again = _fed(tmp_path, clock)  # and the service's restart agrees
    assert again.engine.state.round == 1 and again.engine.current is not None
