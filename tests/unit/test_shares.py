"""The cap on one update's share of a round's weight (``service.max_weight_share``): the
water-filling itself, both accumulators under it, and the engine facing a participant that
declared 2^31 - 1 examples (what the simulation and the service run)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_coordinator import INITIAL, _update
from zenfed.aggregate import KeepAll, StreamingMean
from zenfed.aggregate.registry import build_rule
from zenfed.aggregate.shares import cap_shares, most_capped
from zenfed.config import AggregatorSpec, parse_config
from zenfed.coordinator import Coordinator

HUGE = 2**31 - 1


def test_the_heaviest_weight_is_cut_to_the_share_and_the_others_keep_theirs() -> None:
    assert cap_shares({"big": HUGE, "a": 10, "b": 10}, 0.5) == {"big": 20.0, "a": 10, "b": 10}
    # Two above the level: both cut to the same level t = 0.4 * 10 / (1 - 2 * 0.4) = 20
    capped = cap_shares({"x": 1000, "y": 500, "a": 6, "b": 4}, 0.4)
    assert capped == pytest.approx({"x": 20.0, "y": 20.0, "a": 6, "b": 4})
    assert capped["x"] / sum(capped.values()) == pytest.approx(0.4)


def test_weights_within_the_share_are_left_alone_and_small_rounds_are_not_capped() -> None:
    fair = {"a": 30.0, "b": 30.0, "c": 40.0}
    assert cap_shares(fair, 0.5) == fair
    assert cap_shares({"a": 90.0, "b": 10.0}, 0.5) == {"a": 90.0, "b": 10.0}  # n <= 1 / c
    assert cap_shares({"a": 90.0, "b": 5.0, "c": 5.0}, 1.0) == {"a": 90.0, "b": 5.0, "c": 5.0}
    assert (most_capped(0.5), most_capped(0.4), most_capped(0.5, 2), most_capped(1.0)) == (
        1,
        2,
        0,
        0,
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(1e-3, 1e9), min_size=1, max_size=12),
    st.sampled_from([0.1, 0.25, 0.3, 0.4, 0.5, 0.75]),
)
def test_no_capped_share_exceeds_the_cap_and_the_order_is_kept(
    values: list[float], share: float
) -> None:
    weights = {f"p{i}": w for i, w in enumerate(values)}
    capped = cap_shares(weights, share)
    total = sum(capped.values())
    if len(weights) * share > 1:
        assert max(capped.values()) <= share * total * (1 + 1e-7)
    for p, q in itertools.permutations(weights, 2):  # heavier stays at least as heavy
        if weights[p] >= weights[q]:
            assert capped[p] >= capped[q] * (1 - 1e-12)
    for p in weights:  # a cut weight sits exactly at the level; the rest are untouched
        assert capped[p] == weights[p] or capped[p] == pytest.approx(share * total)


def _updates() -> dict[str, tuple[dict[str, torch.Tensor], float]]:
    g = torch.Generator().manual_seed(0)
    return {
        p: ({"w": torch.randn(3, 4, generator=g)}, w)
        for p, w in {"big": 5e8, "a": 12.0, "b": 30.0, "c": 7.0}.items()
    }


@pytest.mark.parametrize("order", list(itertools.permutations(["big", "a", "b", "c"]))[::5])
def test_the_streaming_mean_equals_the_mean_with_capped_weights_in_any_order(
    order: tuple[str, ...],
) -> None:
    ups, acc = _updates(), StreamingMean(max_share=0.5)
    for p in order:
        acc.add(p, *ups[p])
    agg = acc.result()
    # Worked: big is cut to 12 + 30 + 7 = 49 (half of 98)
    assert dict(agg.weights) == {"big": 49.0, "a": 12.0, "b": 30.0, "c": 7.0}
    want = sum(ups[p][0]["w"] * w for p, w in agg.weights.items()) / 98.0
    torch.testing.assert_close(agg.mean()["w"], want, rtol=1e-6, atol=1e-6)
    keep = KeepAll(build_rule(AggregatorSpec(rule="fedavg")), max_share=0.5)
    for p in order:
        keep.add(p, *ups[p])
    torch.testing.assert_close(keep.result().mean()["w"], want, rtol=1e-6, atol=1e-6)


def test_keep_all_caps_over_the_updates_that_remain_after_detection() -> None:
    ups = _updates()
    keep = KeepAll(build_rule(AggregatorSpec(rule="fedavg")), max_share=0.5)
    for p, (t, w) in ups.items():
        keep.add(p, t, w)
    agg = keep.result(without={"b"})  # big is cut against a and c only: 19
    assert dict(agg.weights) == {"big": 19.0, "a": 12.0, "c": 7.0}


def _engine(share: float | None) -> Coordinator:
    service: dict[str, Any] = {} if share is None else {"max_weight_share": share}
    cfg = parse_config({"run": {"rounds": 2}, "data": {"categories": ["ai"]}, "service": service})
    return Coordinator(cfg, INITIAL, {"big": HUGE, "a": 10, "b": 10})


@pytest.mark.parametrize(("share", "result"), [(None, 0.0), (1.0, -1.0)])
def test_a_participant_declaring_2_31_examples_carries_half_the_round_not_all(
    share: float | None, result: float
) -> None:
    c = _engine(share)
    c.open_round()
    c.submit(_update(c, "big", -1.0, HUGE))  # the attacker's update: -1 everywhere
    c.submit(_update(c, "a", 1.0, 10))
    c.submit(_update(c, "b", 1.0, 10))
    v = c.close_round()
    # Capped at the default 0.5: (20 x -1 + 10 x 1 + 10 x 1) / 40 = 0; uncapped: about -1
    torch.testing.assert_close(c.state.params["a"], torch.full((2, 3), result), atol=2e-8, rtol=0)
    weights = dict(zip(v.participants, v.weights, strict=True))
    assert weights == (
        {"big": 20.0, "a": 10.0, "b": 10.0}
        if share is None
        else {"big": float(HUGE), "a": 10.0, "b": 10.0}
    )


def test_a_secure_round_caps_the_weights_its_tasks_carry() -> None:
    cfg = parse_config(
        {
            "run": {"rounds": 2},
            "data": {"categories": ["ai"]},
            "secagg": {"enabled": True, "clip_norm": 10.0, "min_survivors": 2},
        }
    )
    c = Coordinator(
        cfg,
        INITIAL,
        {"big": HUGE, "a": 10, "b": 10},
        verify_keys={p: b"" for p in ("big", "a", "b")},
    )
    tasks = {t.participant: t for t in c.open_round()}
    assert tasks["big"].weight == 1.0 and tasks["a"].weight == tasks["b"].weight == 0.5
