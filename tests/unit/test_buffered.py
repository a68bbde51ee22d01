"""Buffered asynchronous aggregation (FedBuff): the staleness weights and bound, the
trigger, and the engine handing out tasks and aggregating every k arrivals."""

from dataclasses import replace
from typing import Any

import pytest
import torch

from tests.unit.test_coordinator import INITIAL, _update
from zenfed.config import BufferedConfig, DevicesConfig, parse_config
from zenfed.coordinator import Coordinator, UpdateRejected
from zenfed.coordinator.port import CoordinatorPort
from zenfed.coordinator.rounds.buffered import Buffered, staleness_weight
from zenfed.coordinator.rounds.trigger import RoundProgress
from zenfed.errors import ZenfedError
from zenfed.protocol import Task, Update
from zenfed.transport.devices import Devices


@pytest.mark.parametrize(
    ("kind", "staleness", "expected"),
    [
        ("polynomial", 0, 1.0),
        ("polynomial", 3, 0.5),  # 1 / sqrt(1 + 3)
        ("polynomial", 8, 1 / 3),
        ("constant", 5, 1.0),
        ("hinge", 2, 1.0),  # up to hinge_at = 2: full weight
        ("hinge", 4, 1 / (1 + 0.5 * 2)),
    ],
)
def test_staleness_weights_are_exact(kind: str, staleness: int, expected: float) -> None:
    cfg = BufferedConfig(enabled=True, staleness=kind)  # type: ignore[arg-type]
    assert staleness_weight(cfg, staleness) == pytest.approx(expected, rel=1e-12)


def test_the_polynomial_exponent_is_configurable() -> None:
    cfg = BufferedConfig(enabled=True, exponent=1.0)
    assert staleness_weight(cfg, 4) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="staleness must be >= 0"):
        staleness_weight(cfg, -1)


def test_the_trigger_closes_at_k_arrivals_and_has_no_deadline() -> None:
    trig = Buffered(BufferedConfig(enabled=True, k=3))
    assert trig.deadline(5.0) == float("inf")
    assert trig.decide(RoundProgress(cohort=9, received=2, now=1e9, deadline=0.0)) == "wait"
    assert trig.decide(RoundProgress(cohort=9, received=3, now=0.0, deadline=0.0)) == "close"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"k": 0}, "at least 1"),
        ({"k": 4, "concurrency": 3}, "can never fill a buffer"),
        ({"max_staleness": -1}, "must be >= 0"),
    ],
)
def test_impossible_buffer_settings_are_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ZenfedError, match=message):
        parse_config({"buffered": {"enabled": True, **section}})


def test_buffered_with_secagg_is_refused_with_the_reason() -> None:
    with pytest.raises(ZenfedError, match="secure aggregation is not built"):
        parse_config({"buffered": {"enabled": True}, "secagg": {"enabled": True, "clip_norm": 1}})


def _coord(n: int = 4, privacy: dict[str, Any] | None = None, **buffered: Any) -> Coordinator:
    cfg = parse_config(
        {
            "privacy": privacy or {},
            "buffered": {"enabled": True, "k": 2, **buffered},
            "run": {"rounds": 20},
            "service": {"round_timeout_s": 100.0},
            "data": {"categories": ["ai"]},
        }
    )
    return Coordinator(cfg, INITIAL, {f"p{i}": 10 for i in range(1, n + 1)})


def _answer(c: Coordinator, task: Task, value: float) -> Update:
    """``task``'s update: every tensor filled with ``value``, from ``task``'s version."""
    return _update(c, task.participant, value, 10, round=task.round, base_version=task.version)


def test_a_buffer_hands_out_tasks_from_the_newest_version_and_closes_at_k() -> None:
    c = _coord(concurrency=3)
    port = CoordinatorPort(c, clock=lambda: 0.0, wait_for_minimum=False)
    assert port.tick() == "opened" and c.open_round_info == (0, frozenset(), frozenset())
    t1, t2, t3 = (port.task(p) for p in ("p1", "p2", "p3"))
    assert t1 and t2 and t3 and port.task("p4") is None  # concurrency 3
    assert port.task("p1") == t1  # its task in flight, again (a re-fetch)
    v0 = c.version.id
    assert {t.version for t in (t1, t2, t3)} == {v0} and t1.deadline == 100.0
    assert port.upload(_answer(c, t1, 1.0)) == "accepted"
    assert c.state.round == 0  # one of k = 2
    port.upload(_answer(c, t2, 3.0))  # the k-th upload aggregates the buffer at once
    assert port.tick() == "closed" and c.state.round == 1
    torch.testing.assert_close(c.state.params["a"], torch.full((2, 3), 2.0))
    assert c.version.metrics["staleness_mean"] == 0.0
    # the next buffer is open; p3's task from version 0 is still in flight
    t4 = port.task("p4")
    assert t4 is not None and t4.version == c.version.id and t4.round == 1
    port.upload(_answer(c, t3, 5.0))  # 1 version stale: scaled by 1 / sqrt(2)
    port.upload(_answer(c, t4, 1.0))
    assert port.tick() == "closed"
    a = 2.0 + (5.0 / 2**0.5 + 1.0) / 2
    torch.testing.assert_close(c.state.params["a"], torch.full((2, 3), a))
    assert c.version.metrics["staleness_mean"] == 0.5
    assert c.version.metrics["staleness_max"] == 1.0


def test_a_participant_contributes_once_per_buffer() -> None:
    c = _coord()
    port = CoordinatorPort(c, clock=lambda: 0.0, wait_for_minimum=False)
    port.tick()
    t1 = port.task("p1")
    assert t1 is not None
    port.upload(_answer(c, t1, 1.0))
    assert port.task("p1") is None  # already in this buffer: it waits for the next
    t2 = port.task("p2")
    assert t2 is not None
    port.upload(_answer(c, t2, 1.0))
    assert port.tick() == "closed" and port.task("p1") is not None


def test_an_update_beyond_the_staleness_bound_is_refused_and_changes_nothing() -> None:
    c = _coord(max_staleness=1)
    port = CoordinatorPort(c, clock=lambda: 0.0, wait_for_minimum=False)
    port.tick()
    slow = port.task("p1")
    assert slow is not None
    for _ in range(2):  # two versions pass without p1
        a, b = port.task("p2"), port.task("p3")
        assert a and b
        port.upload(_answer(c, a, 1.0))
        port.upload(_answer(c, b, 1.0))
        assert port.tick() == "closed"
    params = {k: v.clone() for k, v in c.state.params.items()}
    with pytest.raises(
        UpdateRejected, match="2 versions ago, more than buffered.max_staleness = 1"
    ) as e:
        port.upload(_answer(c, slow, 9.0))
    assert e.value.reason == "stale"
    torch.testing.assert_close(c.state.params, params)
    assert c.open_round_info is not None and not c.open_round_info[2]
    assert port.task("p1") is not None  # its dropped task freed it


def test_a_task_that_never_answers_expires_and_frees_its_participant() -> None:
    now = [0.0]
    c = _coord(concurrency=2)
    port = CoordinatorPort(c, clock=lambda: now[0], wait_for_minimum=False)
    port.tick()
    assert port.task("p1") and port.task("p2") and port.task("p3") is None
    assert port.next_deadline() == 100.0
    now[0] = 100.0
    port.tick()  # both tasks expire
    assert port.task("p3") is not None and port.task("p4") is not None


def test_fewer_participants_than_k_is_refused_at_start() -> None:
    with pytest.raises(ZenfedError, match="buffered.k = 5 updates per version, but only 4"):
        _coord(n=4, k=5)


def test_devices_durations_speeds_and_availability_windows() -> None:
    names = [f"p{i}" for i in range(200)]
    cfg = DevicesConfig(enabled=True, sigma=1.0, step_seconds=2.0, latency_s=0.5)
    d = Devices(cfg, names, seed=0)
    speeds = torch.tensor([d.speed[n] for n in names])
    assert abs(float(speeds.log().mean())) < 0.2 and 0.8 < float(speeds.log().std()) < 1.2
    assert d.duration("p3", steps=5) == pytest.approx(0.5 + 5 * 2.0 / d.speed["p3"])
    assert Devices(cfg, ["p3"], seed=0).speed["p3"] == d.speed["p3"]  # by name, not by count
    equal = Devices(DevicesConfig(enabled=True, speed="equal"), names, seed=0)
    assert {equal.speed[n] for n in names} == {1.0}
    part = Devices(DevicesConfig(enabled=True, available=0.25, period_s=100.0), ["a"], seed=1)
    online = [part.online("a", t) for t in range(0, 200)]
    assert sum(online) == 50  # a quarter of each period
    t_off = online.index(False)
    back = part.next_online("a", float(t_off))
    assert part.online("a", back) and not part.online("a", back - 0.5) and back > t_off


@pytest.mark.parametrize(
    ("section", "message"),
    [("devices", "simulates participants'"), ("attack", "only the simulation runs")],
)
def test_the_service_refuses_what_only_the_simulation_runs(
    section: str, message: str, tmp_path: Any
) -> None:
    from zenfed.deploy import serve

    values = {"kind": "sign_flip", "fraction": 0.5} if section == "attack" else {"enabled": True}
    cfg = parse_config({section: values})
    with pytest.raises(ZenfedError, match=message):
        serve(cfg, tmp_path / "state")
    assert not (tmp_path / "state").exists()  # nothing was created


def test_each_buffer_is_one_dp_release_accounted_without_subsampling() -> None:
    c = _coord(privacy={"clip_norm": 1.0, "noise_multiplier": 2.0})
    port = CoordinatorPort(c, clock=lambda: 0.0, wait_for_minimum=False)
    port.tick()
    t1, t2 = port.task("p1"), port.task("p2")
    assert t1 and t2 and t1.clip_norm == 1.0
    port.upload(_answer(c, t1, 5.0))  # clipped to norm 1 by the coordinator
    port.upload(_answer(c, t2, 5.0))
    assert port.tick() == "closed"
    assert c.state.privacy.rounds == [(1.0, 2.0)]  # q = 1: nobody was sampled
    v = c.version.metrics
    assert v["sampling_rate"] == 1.0
    # the sum of two clipped updates over k = 2, plus noise of std z * C / k = 1
    mean = torch.cat([c.state.params[k].flatten() - INITIAL[k].flatten() for k in INITIAL])
    clipped = 5.0 / (5.0**2 * mean.numel()) ** 0.5
    # (a sample std of 10 values: within [0.2, 2.5] but for odds below 1e-4; the
    # noise's exact stddev is tested on large tensors in test_privacy / test_regions)
    assert 0.2 < float((mean - clipped).std()) < 2.5
    assert c.epsilon() > 0


def test_updates_arriving_at_the_same_simulated_time_travel_in_order_of_sender() -> None:
    import heapq

    from zenfed.transport.inmemory import InMemoryPort, Travelling

    c = _coord()
    port = CoordinatorPort(c, clock=lambda: 0.0, wait_for_minimum=False)
    port.tick()
    devices = Devices(DevicesConfig(enabled=True, speed="equal"), ["p1", "p2", "p3"], seed=0)
    flight: Travelling = []
    ends = {}
    for p in ("p1", "p2", "p3"):
        task = port.task(p)
        assert task is not None
        ends[p] = InMemoryPort(port, p, lambda s, q: False, {}, (devices, lambda: 0.0, flight))
        ends[p].began = (task, 0.0)
    ends["p1"].upload(_answer(c, ends["p1"].began[0], 1.0))  # type: ignore[index]
    ends["p2"].upload(_answer(c, ends["p2"].began[0], 1.0))  # type: ignore[index]
    heapq.heappop(flight)  # one arrived; two more due at the very same time
    assert ends["p3"].upload(_answer(c, ends["p3"].began[0], 1.0)) == "in_flight"  # type: ignore[index]
    assert [(t, p) for t, p, _ in sorted(flight)] == [(1.0, "p2"), (1.0, "p3")]


def test_an_update_for_a_task_never_handed_out_is_refused_and_changes_nothing() -> None:
    c = _coord()
    port = CoordinatorPort(c, clock=lambda: 0.0, wait_for_minimum=False)
    port.tick()
    t1 = port.task("p1")
    assert t1 is not None
    forged = replace(_answer(c, t1, 1.0), participant="p2")  # p2 was given no task
    with pytest.raises(UpdateRejected, match="'p2' has no task of buffer 0 in flight") as e:
        port.upload(forged)
    assert e.value.reason == "not_in_cohort"
    with pytest.raises(UpdateRejected, match="has no task of buffer 5 in flight"):
        port.upload(replace(_answer(c, t1, 1.0), round=5))  # a buffer that never was
    assert c.open_round_info == (0, frozenset({"p1"}), frozenset())


def test_uploads_counted_together_equal_uploads_one_by_one() -> None:
    """``upload_many`` (the service's group commit) closes a buffer where its k-th update
    lands and checks the rest against the next one, exactly as uploads one at a time."""
    from zenfed.coordinator.port import Journal

    class Batches(Journal):
        def __init__(self) -> None:
            self.stored: list[list[str]] = []

        def storing(self, updates: Any) -> None:
            self.stored.append([u.participant for u in updates])

    def run(together: bool) -> tuple[list[Any], Coordinator, Batches]:
        c, journal = _coord(concurrency=4), Batches()
        port = CoordinatorPort(c, journal, clock=lambda: 0.0, wait_for_minimum=False)
        port.tick()
        tasks = [port.task(p) for p in ("p1", "p2", "p3", "p4")]
        assert all(tasks)
        ups = [_answer(c, t, v) for t, v in zip(tasks, (1.0, 3.0, 5.0, 7.0), strict=True) if t]
        bad = replace(ups[3], payload=ups[3].payload[:-5])  # malformed
        batch = [ups[0], ups[1], ups[2], ups[0], bad, ups[3]]
        if together:
            results = port.upload_many(batch)
        else:
            results = []
            for u in batch:
                try:
                    results.append(port.upload(u))
                except UpdateRejected as e:
                    results.append(e)
                port.tick()
        return results, c, journal

    one, c1, _ = run(together=False)
    many, c2, journal = run(together=True)
    assert [r if isinstance(r, str) else r.reason for r in many] == [
        "accepted",
        "accepted",
        "accepted",
        "duplicate",
        "payload",
        "accepted",
    ]
    assert [r if isinstance(r, str) else r.reason for r in one] == [
        r if isinstance(r, str) else r.reason for r in many
    ]
    assert journal.stored == [["p1", "p2"], ["p3", "p4"]]  # one write per buffer's share
    assert c2.state.round == c1.state.round == 2
    torch.testing.assert_close(c2.state.params, c1.state.params)
