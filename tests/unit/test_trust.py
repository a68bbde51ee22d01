"""Poisoning detection, evaluation gates and rollback: the pure parts, the engine's port
and the deployment's coordinator (quarantine and rollback survive a restart)."""

import math
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from tests.unit.test_coordinator import _update
from tests.unit.test_persistent import INITIAL, Clock, _cfg, _fed, _join, _upload
from zenfed.aggregate.anomaly import anomaly_scores
from zenfed.compress.downlink import receive
from zenfed.config import DetectConfig, parse_config
from zenfed.coordinator.engine import Coordinator, RoundAborted
from zenfed.coordinator.gate import Gate
from zenfed.coordinator.port import CoordinatorPort
from zenfed.coordinator.screening import Screen
from zenfed.coordinator.trust import UnknownVersion, rollback
from zenfed.errors import ZenfedError
from zenfed.protocol import Update
from zenfed.service.persistent import PersistentCoordinator, UnknownParticipant
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Database, Round, Version
from zenfed.tensors import Tensors, tensors_hash


def _t(*values: float) -> Tensors:
    return {"w": torch.tensor(values)}


# ---- anomaly scores, screening, the gate: pure ---------------------------------------------


def test_anomaly_scores_match_a_hand_computation() -> None:
    updates = {"a": _t(1.0, 0.0), "b": _t(0.0, 2.0), "c": _t(-3.0, 0.0)}
    s = anomaly_scores(updates, _t(1.0, 1.0))
    assert s["a"].norm == pytest.approx(1.0) and s["c"].norm == pytest.approx(3.0)
    assert s["c"].norm_ratio == pytest.approx(1.5)  # the median norm is 2
    assert s["a"].cosine_aggregate == pytest.approx(1 / math.sqrt(2))
    assert s["c"].cosine_aggregate == pytest.approx(-1 / math.sqrt(2))
    # a: cos to b is 0, to c is -1 -> mean -0.5
    assert s["a"].cosine_others == pytest.approx(-0.5)


def _honest(i: int) -> Tensors:
    g = torch.Generator().manual_seed(i)
    return {"w": torch.ones(50) + 0.3 * torch.randn(50, generator=g)}


def test_a_scaled_update_is_flagged_and_quarantined_after_two_rounds_not_one() -> None:
    screen = Screen(DetectConfig(enabled=True))
    rep: dict[str, float] = {}
    quarantined: dict[str, str] = {}
    for rnd in range(2):
        ups = {f"h{i}": _honest(10 * rnd + i) for i in range(4)}
        ups["bad"] = {"w": 20 * _honest(99)["w"]}
        mean = {"w": torch.stack([u["w"] for u in ups.values()]).median(dim=0).values}
        a = screen.assess(ups, mean, {"w": torch.zeros(50)}, rep, quarantined)
        assert set(a.flags) == {"bad"} and "norm" in a.flags["bad"]
        rep = a.reputation
        if rnd == 0:  # one bad round lowers the reputation without quarantining
            assert a.quarantine == {} and rep["bad"] == pytest.approx(0.5)
        else:
            assert set(a.quarantine) == {"bad"}
        quarantined |= a.quarantine
    assert all(rep[f"h{i}"] == 1.0 for i in range(4))


def test_a_sign_flipped_update_and_a_free_rider_are_flagged() -> None:
    screen = Screen(DetectConfig(enabled=True))
    ups = {f"h{i}": _honest(i) for i in range(4)}
    ups["flip"] = {"w": -_honest(7)["w"]}
    ups["free"] = {"w": torch.zeros(50)}
    mean = {"w": torch.stack([u["w"] for u in ups.values()]).median(dim=0).values}
    a = screen.assess(ups, mean, {"w": torch.zeros(50)}, {}, {})
    assert set(a.flags) == {"flip", "free"}
    assert "cosine" in a.flags["flip"] and "norm" in a.flags["free"]


def test_a_round_whose_every_update_is_flagged_is_aborted_and_the_version_stays() -> None:
    def loss(t: Tensors) -> float:  # any step away from the initial adapter hurts
        return 1.0 + sum(float((t[k] - INITIAL[k]).pow(2).sum()) for k in INITIAL)

    raw = {**_engine_cfg(), "detect": {"enabled": True}}  # the screen below validates
    people = {"p": 10, "q": 10, "r": 10}
    screen = Screen(DetectConfig(enabled=True, validation=True, norm_factor=100), loss)
    coord = Coordinator(parse_config(raw), INITIAL, people, screen=screen)
    before = coord.version.id
    coord.open_round()
    for pid in people:
        coord.submit(_update(coord, pid, 1.0, 10))
    with pytest.raises(RoundAborted, match="3 flagged updates left out, 0 remain"):
        coord.aggregate_round()
    assert coord.version.id == before and coord.current is not None  # nothing committed


def test_the_validation_effect_flags_an_update_that_hurts_alone() -> None:
    target = torch.ones(50)
    calls = []

    def loss(t: Tensors) -> float:
        calls.append(1)
        return float((t["w"] - target).pow(2).mean()) + 1.0

    screen = Screen(DetectConfig(enabled=True, validation=True, norm_factor=100), loss)
    ups = {"good": {"w": 0.5 * target}, "harm": {"w": -0.5 * target}, "ok": {"w": 0.4 * target}}
    a = screen.assess(ups, {"w": 0.4 * target}, {"w": torch.zeros(50)}, {}, {})
    assert a.effects["good"] < 0 < a.effects["harm"]
    assert "validation loss" in a.flags["harm"] and "good" not in a.flags
    assert len(calls) == 4  # the base once, each update once


def test_the_gate_passes_within_tolerance_and_rejects_beyond_it() -> None:
    gate = Gate(lambda t: float(t["w"].sum()), tolerance=0.1)
    current = _t(1.0, 1.0)  # loss 2
    assert gate.judge(_t(1.0, 1.1), "v0", current).passed  # +5 %
    bad = gate.judge(_t(2.0, 2.0), "v0", current)  # +100 %
    assert not bad.passed and "rejected" in bad.reason and "+100.00 %" in bad.reason
    assert not gate.judge(_t(float("nan"), 1.0), "v0", current).passed


# ---- the engine's port: the gate keeps a poisoned candidate out ----------------------------


def _engine_cfg() -> dict:  # type: ignore[type-arg]
    return {
        "data": {"categories": ["ai"]},
        "sampling": {"fraction": 1.0, "min_participants": 1},
        "run": {"rounds": 4},
    }


def test_a_gate_rejects_a_poisoned_candidate_and_keeps_the_published_version() -> None:
    cfg = parse_config(_engine_cfg())
    target = {k: torch.full_like(v, 0.5) for k, v in INITIAL.items()}

    def loss(t: Tensors) -> float:  # distance to a known good adapter
        return 1.0 + sum(float((t[k] - target[k]).pow(2).sum()) for k in t)

    coord = Coordinator(cfg, INITIAL, {"p": 10, "q": 10})
    port = CoordinatorPort(coord, clock=lambda: 0.0, gate=Gate(loss, 0.02))
    assert port.tick() == "opened"
    for pid in ("p", "q"):  # a good round: towards the target
        port.upload(
            _update(coord, pid, 0.0, 10, tensors={k: target[k] - INITIAL[k] for k in INITIAL})
        )
    assert port.tick() == "closed"
    good, good_tensors = coord.version, dict(coord.state.published)
    assert port.tick() == "opened"
    for pid in ("p", "q"):  # poisoned: far from the target
        port.upload(_update(coord, pid, 30.0, 10))
    assert port.tick() == "rejected"
    assert "rejected" in port.last_reason
    assert coord.version == good and coord.state.round == 2  # kept; the next round is 3
    assert all(torch.equal(coord.state.published[k], good_tensors[k]) for k in INITIAL)
    assert port.tick() == "opened" and coord.current is not None and coord.current.round == 2


def test_rollback_makes_a_new_version_with_the_earlier_tensors_and_refuses_bad_input() -> None:
    cfg = parse_config(_engine_cfg())
    coord = Coordinator(cfg, INITIAL, {"p": 10})
    port = CoordinatorPort(coord, clock=lambda: 0.0)
    for value in (1.0, 2.0):
        port.tick()
        port.upload(_update(coord, "p", value, 10))
        assert port.tick() == "closed"
    first = coord.state.versions[1]
    first_tensors = {k: INITIAL[k] + 1.0 for k in INITIAL}
    state_before = coord.state
    with pytest.raises(UnknownVersion, match="not in this federation's lineage"):
        port.rollback("00" * 32, first_tensors)
    with pytest.raises(ZenfedError, match="do not match its content hash"):
        port.rollback(first.id, {k: v + 1 for k, v in first_tensors.items()})
    with pytest.raises(ZenfedError, match="already the current version"):
        port.rollback(coord.version.id, coord.state.published)
    assert coord.state is state_before  # nothing changed
    v = port.rollback(first.id[:12], first_tensors)
    assert v.rollback_of == first.id and v.parent == coord.state.versions[-2].id
    assert v.content == first.content and v.round == 2 and coord.state.round == 3
    assert all(torch.equal(coord.state.published[k], first_tensors[k]) for k in INITIAL)
    assert coord.state.server_state.step == 0  # the server optimizer starts afresh
    assert tensors_hash(coord.state.published) == first.content


def test_rollback_of_a_state_is_pure() -> None:
    cfg = parse_config(_engine_cfg())
    coord = Coordinator(cfg, INITIAL, {"p": 10})
    with pytest.raises(ZenfedError, match="already the current version"):
        rollback(coord.state, coord.version.id, INITIAL)


# ---- the deployment: quarantine and rollback survive a restart ------------------------------


def _detect_fed(tmp: Path, clock: Clock) -> PersistentCoordinator:
    raw = _cfg().model_dump(mode="json")
    raw["detect"] = {"enabled": True}
    raw["run"]["rounds"] = 5
    raw["server"] = {"aggregator": "median"}
    cfg = parse_config(raw)
    return PersistentCoordinator(
        cfg, INITIAL, Database(f"sqlite:///{tmp / 'fed.db'}"), BlobStore(tmp / "blobs"), clock
    )


def _honest_upload(fed: PersistentCoordinator, pid: str, i: int, scale: float = 1.0) -> None:
    u = _upload(fed, pid, 1.0)
    codec = fed.engine.codec
    task = fed.engine.current.tasks[pid]  # type: ignore[union-attr]
    g = torch.Generator().manual_seed(i)
    delta = {k: scale * (1 + 0.2 * torch.randn(v.shape, generator=g)) for k, v in INITIAL.items()}
    payload = codec.to_bytes(codec.encode(delta, shared_seed=task.codec_seed))
    fed.port.upload(Update(**{**u.__dict__, "payload": payload}))


def test_quarantine_survives_a_restart_and_an_operator_reinstates(tmp_path: Path) -> None:
    clock = Clock()
    fed = _detect_fed(tmp_path, clock)
    pids = [_join(fed, n)[0] for n in ("h1", "h2", "h3", "evil")]
    for rnd in range(2):
        fed.tick()
        for i, pid in enumerate(pids):
            _honest_upload(fed, pid, 10 * rnd + i, scale=25.0 if pid == pids[-1] else 1.0)
        assert fed.tick() is not None
    status = fed.status()
    assert list(status["quarantined"]) == ["evil"] and "norm" in status["quarantined"]["evil"]
    actions = [a for _, a, _ in fed.audit_log()]
    assert actions.count("flagged") == 2 and "quarantine" in actions
    fed.db.close()

    again = _detect_fed(tmp_path, clock)  # a restart
    assert list(again.status()["quarantined"]) == ["evil"]
    for pid in pids:
        again.next_task(pid)
    again.tick()
    assert again.engine.current is not None and pids[-1] not in again.engine.current.tasks
    with pytest.raises(UnknownParticipant):
        again.reinstate("nobody")
    with pytest.raises(ZenfedError, match="is not quarantined"):
        again.reinstate("h1")
    assert again.reinstate("evil") == pids[-1]
    again.db.close()

    third = _detect_fed(tmp_path, clock)  # the reinstatement survives a restart too
    assert third.status()["quarantined"] == {}
    assert third.engine.state.reputation[pids[-1]] == 1.0
    assert ("operator", "reinstate") in [(a, b) for a, b, _ in third.audit_log()]


def test_rollback_in_the_deployment_republishes_the_exact_tensors_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    clock = Clock()
    fed = _fed(tmp_path, clock)
    a, _ = _join(fed, "a")
    b, _ = _join(fed, "b")
    for value in (1.0, 3.0):
        fed.tick()
        for pid in (a, b):
            fed.port.upload(_upload(fed, pid, value))
        assert fed.tick() is not None
    first = fed.engine.state.versions[1]
    with fed.db.transaction() as s:
        first_blob = s.get(Version, first.id).blob_sha256  # type: ignore[union-attr]
    first_tensors = receive(fed.blobs.get(first_blob), None, None, first.id)
    fed.tick()  # a round is open: the rollback aborts it
    assert fed.engine.current is not None
    with pytest.raises(UnknownVersion):
        fed.rollback("abcdef0123456789")
    v = fed.rollback(first.id[:12])
    assert fed.engine.current is None and v.rollback_of == first.id
    published = fed.engine.state.published
    assert all(torch.equal(published[k], first_tensors[k]) for k in first_tensors)
    assert ("operator", "rollback") in [(x, y) for x, y, _ in fed.audit_log()]
    fed.db.close()
    again = _fed(tmp_path, clock)
    assert again.engine.version.id == v.id and again.engine.version.rollback_of == first.id
    assert all(torch.equal(again.engine.state.published[k], first_tensors[k]) for k in INITIAL)
    assert again.status()["lineage"][-1]["rollback_of"] == first.id[:12]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"gate": {"source": "validation_file"}}, "gate.validation_file is needed"),
        ({"gate": {"source": "heldout", "tolerance": -1.0}}, "gate.tolerance must be >= 0"),
        ({"detect": {"enabled": True, "decay": 1.0}}, "detect.decay"),
        ({"detect": {"enabled": True, "validation": True}}, "needs|set gate.source"),
        ({"detect": {"enabled": True}, "secagg": {"enabled": True, "clip_norm": 1.0}}, "hides"),
        ({"detect": {"enabeld": True}}, "enabeld"),
    ],
)
def test_a_bad_trust_setting_is_refused_with_its_reason(extra: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ZenfedError, match=message):
        parse_config({**_engine_cfg(), **extra})


def test_a_flagged_update_is_left_out_of_its_rounds_aggregate() -> None:
    raw = {**_engine_cfg(), "detect": {"enabled": True}}
    people = {"p": 10, "q": 10, "r": 10, "bad": 10}
    coord = Coordinator(
        parse_config(raw), INITIAL, people, screen=Screen(DetectConfig(enabled=True))
    )
    port = CoordinatorPort(coord, clock=lambda: 0.0)
    port.tick()
    for pid, value in (("p", 1.0), ("q", 1.1), ("r", 0.9), ("bad", 50.0)):
        port.upload(_update(coord, pid, value, 10))
    assert port.tick() == "closed"
    assert coord.version.metrics["flagged"] == 1.0
    # FedAvg of the three others: 1.0 (with the 50s it would be 13.25)
    for k in INITIAL:
        torch.testing.assert_close(
            coord.state.params[k] - INITIAL[k], torch.full_like(INITIAL[k], 1.0)
        )


def test_a_gated_round_in_the_deployment_is_recorded_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    raw = _cfg().model_dump(mode="json")
    raw["gate"] = {"source": "validation_file", "validation_file": "held.jsonl"}
    cfg = parse_config(raw)

    def loss(t: Tensors) -> float:  # any move away from zero is a regression
        return 1.0 + sum(float(v.abs().sum()) for v in t.values())

    def fed() -> PersistentCoordinator:
        db = Database(f"sqlite:///{tmp_path / 'fed.db'}")
        return PersistentCoordinator(cfg, INITIAL, db, BlobStore(tmp_path / "blobs"), clock, loss)

    clock = Clock()
    first = fed()
    a, _ = _join(first, "a")
    b, _ = _join(first, "b")
    first.tick()
    for pid in (a, b):
        first.port.upload(_upload(first, pid, 5.0))
    root = first.engine.version
    assert first.tick() is None and first.engine.version == root
    assert first.engine.state.round == 1  # the next round is a new one
    with first.db.transaction() as s:
        rows = s.scalars(select(Round)).all()
    assert [r.status for r in rows] == ["rejected"] and "rejected" in (rows[0].reason or "")
    assert "reject_round" in [x for _, x, _ in first.audit_log()]
    first.db.close()
    again = fed()
    assert again.engine.version == root and again.engine.state.round == 1
