from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from zenfed.config import parse_config
from zenfed.coordinator import Coordinator, Member, UpdateRejected, sample_participants
from zenfed.errors import ZenfedError
from zenfed.protocol import Update, version_id
from zenfed.tensors import tensors_hash

INITIAL = {"a": torch.zeros(2, 3), "b": torch.ones(4)}


def _coord(**server: Any) -> Coordinator:
    cfg = parse_config(
        {
            "server": server or {"optimizer": "fedavg"},
            "run": {"rounds": 5},
            "data": {"categories": ["ai"]},
        }
    )
    return Coordinator(cfg, INITIAL, {"p1": 30, "p2": 10, "p3": 60})


def _wire(tensors: dict[str, torch.Tensor]) -> bytes:
    """Tensors as a dense (no codec) payload, whatever their names, shapes and dtypes."""
    return safetensors.torch.save({f"{k}#v": t for k, t in tensors.items()})


def _update(
    c: Coordinator, pid: str, value: float, n: int, tensors: Any = None, **kw: Any
) -> Update:
    info = c.open_round_info
    assert info is not None
    tensors = tensors or {k: torch.full_like(v, value) for k, v in INITIAL.items()}
    u = Update(
        round=info[0],
        participant=pid,
        base_version=c.version.id,
        payload=_wire(tensors),
        num_examples=n,
        examples_seen=8,
        num_tokens=100,
        seconds=1.0,
        train_loss=2.0,
        steps=1,
    )
    return replace(u, **kw)


def test_a_round_applies_the_example_weighted_mean() -> None:
    c = _coord()
    tasks = c.open_round()
    assert {t.participant for t in tasks} == {"p1", "p2", "p3"}
    c.submit(_update(c, "p1", 1.0, 30))
    c.submit(_update(c, "p2", 5.0, 10))
    v = c.close_round()
    # (30 * 1 + 10 * 5) / 40 = 2; p3 straggled
    torch.testing.assert_close(c.state.params["a"], torch.full((2, 3), 2.0))
    torch.testing.assert_close(c.state.params["b"], torch.full((4,), 3.0))
    assert v.participants == ("p1", "p2") and v.metrics["stragglers"] == 1.0
    assert v.parent == c.state.versions[0].id and v.content == tensors_hash(c.state.params)
    assert v.id == version_id(v.parent, 0, v.content)  # a commit: parent, round, content
    assert c.state.round == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"round": 7}, "not open"),
        ({"participant": "mallory"}, "not in round 0's cohort"),
        ({"base_version": "0" * 64}, "another version"),
        ({"num_examples": 0}, "num_examples 0"),
        ({"train_loss": float("nan")}, "loss nan"),
        ({"tensors": {"a": torch.zeros(2, 3)}}, "missing part 'b#v'"),
        (
            {"tensors": {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}},
            "unexpected part 'c#v'",
        ),
        ({"tensors": {"a": torch.zeros(3, 2), "b": torch.zeros(4)}}, "expected torch.float32"),
        (
            {"tensors": {"a": torch.zeros(2, 3, dtype=torch.float64), "b": torch.zeros(4)}},
            "float64",
        ),
        ({"tensors": {"a": torch.full((2, 3), float("inf")), "b": torch.zeros(4)}}, "NaN or Inf"),
        ({"payload": b"not safetensors"}, "not valid safetensors"),
        ({"payload": _wire(dict(INITIAL))[:-3]}, "not valid safetensors"),
        ({"payload": b"x" * 10_000_000}, "exceeds the limit"),
    ],
)
def test_bad_updates_are_rejected_and_change_nothing(change: dict[str, Any], message: str) -> None:
    c = _coord()
    c.open_round()
    c.submit(_update(c, "p1", 1.0, 30))
    with pytest.raises(UpdateRejected, match=message):
        c.submit(_update(c, "p2", 100.0, 10, **change))
    c.close_round()
    torch.testing.assert_close(c.state.params["a"], torch.full((2, 3), 1.0))


def test_duplicate_upload_is_rejected() -> None:
    c = _coord()
    c.open_round()
    c.submit(_update(c, "p1", 1.0, 30))
    with pytest.raises(UpdateRejected, match="already uploaded"):
        c.submit(_update(c, "p1", 9.0, 30))


def test_round_without_updates_keeps_the_version() -> None:
    c = _coord()
    c.open_round()
    before = c.version.id
    with pytest.raises(ZenfedError, match="received no updates"):
        c.close_round()
    assert c.version.id == before


def test_fetch_only_serves_the_current_version() -> None:
    c = _coord()
    assert c.fetch(c.version.id) is c.state.params
    with pytest.raises(ZenfedError, match="not the current global version"):
        c.fetch("f" * 64)


def test_sampling_respects_fraction_and_minimum() -> None:
    rng = np.random.default_rng(0)
    names = [f"p{i}" for i in range(10)]
    assert len(sample_participants(names, 0.3, 1, rng)) == 3
    assert len(sample_participants(names, 0.1, 4, rng)) == 4
    assert len(sample_participants(names, 0.1, 40, rng)) == 10
    with pytest.raises(ZenfedError, match="no participants"):
        sample_participants([], 0.5, 1, rng)


def _tasks(c: Coordinator, server_round: int, pool: list[Member]) -> list[Any]:
    """The tasks ``c``'s matcher and strategy give ``pool`` in ``server_round``."""
    return c.strategy.configure(server_round, c.matcher.select(server_round, pool), "v")


def test_cohorts_are_reproducible_per_round() -> None:
    cfg = parse_config({"sampling": {"fraction": 0.5}, "data": {"categories": ["ai"]}})
    names = {f"p{i}": 10 for i in range(8)}
    members = [Member(n, n, 10) for n in names]
    a = _tasks(Coordinator(cfg, INITIAL, names), 3, members)
    b = _tasks(Coordinator(cfg, INITIAL, names), 3, members)
    c = _tasks(Coordinator(cfg, INITIAL, names), 4, members)
    assert [(t.participant, t.seed) for t in a] == [(t.participant, t.seed) for t in b]
    assert len(a) == 4 and [t.participant for t in a] != [t.participant for t in c]
    # ids differ between a simulation and a deployment, names do not: cohorts and seeds
    # follow the names (whatever order the roster holds them in)
    by_key = {f"key-{9 - i}": n for i, n in enumerate(sorted(names))}
    keyed = [Member(k, n, 10) for k, n in reversed(by_key.items())]
    d = _tasks(Coordinator(cfg, INITIAL, names), 3, keyed)
    assert [(by_key[t.participant], t.seed) for t in d] == [(t.participant, t.seed) for t in a]


def test_the_aggregator_key_selects_a_registered_rule_and_refuses_what_cannot_work() -> None:
    from zenfed.aggregate import RULES
    from zenfed.config import AggregatorSpec

    assert set(AggregatorSpec.model_fields["rule"].annotation.__args__) == set(RULES)
    cfg = parse_config({"data": {"categories": ["ai"]}, "server": {"aggregator": "median"}})
    c = Coordinator(cfg, INITIAL, {"p1": 10, "p2": 10, "p3": 10})
    c.open_round()
    for pid, value in (("p1", 1.0), ("p2", 2.0), ("p3", 1000.0)):
        c.submit(_update(c, pid, value, 10))
    c.close_round()
    torch.testing.assert_close(c.state.params["a"], torch.full((2, 3), 2.0))  # the median
    for extra, message in (
        ({"secagg": {"enabled": True, "clip_norm": 1.0}}, "reveals only their sum"),
        (
            {
                "privacy": {"clip_norm": 1.0, "noise_multiplier": 1.0},
                "sampling": {"method": "poisson", "fraction": 0.5},
            },
            "differential privacy",
        ),
    ):
        bad = parse_config(
            {"data": {"categories": ["ai"]}, "server": {"aggregator": "median"}, **extra}
        )
        with pytest.raises(ZenfedError, match=message):
            Coordinator(bad, INITIAL, {"p1": 10})


@pytest.mark.parametrize(
    ("values", "finite"),
    [
        ([1.0, 2.0, -3.0], True),
        ([3e38, 3e38, 3e38], True),  # finite values whose float32 sum overflows
        ([3e38, 3e38, float("nan")], False),
        ([1.0, float("inf"), float("-inf")], False),  # a sum of NaN
        ([0.0, float("-inf"), 0.0], False),
        ([float("nan"), 1.0, 1.0], False),
    ],
)
def test_check_finite_settles_an_overflowing_sum_value_by_value(
    values: list[float], finite: bool
) -> None:
    from zenfed.coordinator.validate import check_finite

    t = {"ok": torch.zeros(3), "x": torch.tensor(values, dtype=torch.float32)}
    if finite:
        check_finite("p", t)
    else:
        with pytest.raises(UpdateRejected, match="tensor 'x' from 'p' has NaN or Inf"):
            check_finite("p", t)
