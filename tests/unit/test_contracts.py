"""One contract suite over every aggregation rule, accumulator, server optimizer and codec in
their registries: a new one is checked the moment it is registered.

- rules: identical updates give that update; order does not matter; names, shapes and
  finiteness hold; a weighted mean weighs exactly; a robust rule stays within the honest
  updates' range while fewer than half are arbitrary;
- accumulators: folding updates in any order gives the rule's result;
- server optimizers: a zero pseudo-gradient from a fresh state changes nothing; names,
  shapes and finiteness hold; inputs are not mutated; state survives its byte form;
- codecs: every registered codec is in the codec suite (test_compress.py), and decodes a
  finite tensor to a finite tensor of its shape.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_compress import CODECS as CODEC_CASES
from tests.unit.test_compress import tensors
from zenfed.aggregate import (
    RULES as RULE_REGISTRY,
)
from zenfed.aggregate import (
    SERVER_OPTIMIZERS,
    AggregationRule,
    KeepAll,
    ServerOptState,
    StreamingMean,
    build_rule,
)
from zenfed.aggregate.server_opt import server_step
from zenfed.compress.base import Codec
from zenfed.compress.pipeline import CODECS as CODEC_REGISTRY
from zenfed.config import AggregatorSpec, ServerConfig
from zenfed.coordinator.state import CoordinatorState
from zenfed.protocol.messages import GlobalVersion

# Every registered rule, in a setting that works for the 3 to 7 updates of ``rounds``.
RULES = [
    build_rule(AggregatorSpec.model_validate(spec))
    for spec in (
        "fedavg",
        "median",
        {"rule": "trimmed_mean", "beta": 0.2},
        {"rule": "krum", "f": 0, "m": 2},
        "geometric_median",
        {"rule": "norm_bound", "multiple": 2.0},
        {"rule": "norm_bound", "max_norm": 1e4},  # above the norms of ``rounds``
        "centered_clipping",
    )
]
assert {r.name for r in RULES} == set(RULE_REGISTRY)
SHAPES = {"a": (3, 4), "b": (5,)}


@st.composite
def rounds(draw: Any) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """A round's updates (3 to 7, same names and shapes) and positive weights."""
    n = draw(st.integers(3, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-4, 1.0, 1e3]))
    g = torch.Generator().manual_seed(seed)
    updates = [
        {k: torch.randn(s, generator=g) * scale for k, s in SHAPES.items()} for _ in range(n)
    ]
    weights = [float(draw(st.integers(1, 1000))) for _ in range(n)]
    return updates, weights


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


# ---- aggregation rules ------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.describe())
@settings(max_examples=25, deadline=None)
@given(data=rounds())
def test_identical_updates_give_that_update(rule: AggregationRule, data: Any) -> None:
    updates, weights = data
    same = [updates[0]] * len(updates)
    _close(rule.combine(same, weights), updates[0])


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.describe())
@settings(max_examples=25, deadline=None)
@given(data=rounds(), order=st.randoms())
def test_order_does_not_matter_and_names_shapes_finiteness_hold(
    rule: AggregationRule, data: Any, order: Any
) -> None:
    updates, weights = data
    idx = list(range(len(updates)))
    order.shuffle(idx)
    a = rule.combine(updates, weights)
    b = rule.combine([updates[i] for i in idx], [weights[i] for i in idx])
    _close(a, b)
    assert {k: tuple(v.shape) for k, v in a.items()} == SHAPES
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in a.values())


@pytest.mark.parametrize("rule", [r for r in RULES if r.streaming], ids=lambda r: r.describe())
@settings(max_examples=25, deadline=None)
@given(data=rounds())
def test_a_weighted_mean_weighs_exactly(rule: AggregationRule, data: Any) -> None:
    updates, weights = data
    total = sum(weights)
    want = {
        k: (sum(w * u[k].double() for u, w in zip(updates, weights, strict=True)) / total).float()
        for k in SHAPES
    }
    _close(rule.combine(updates, weights), want)


@pytest.mark.parametrize("rule", [r for r in RULES if not r.streaming], ids=lambda r: r.describe())
@settings(max_examples=25, deadline=None)
@given(data=rounds(), attack=st.sampled_from([1e6, -1e6, 1e30]))
def test_a_robust_rule_stays_bounded_by_the_honest_updates(
    rule: AggregationRule, data: Any, attack: float
) -> None:
    updates, _ = data
    bad = rule.tolerates(len(updates))  # as many attackers as the rule says it tolerates
    honest = updates[bad:]
    poisoned = [{k: torch.full(s, attack) for k, s in SHAPES.items()}] * bad + honest
    out = rule.combine(poisoned, [1.0] * len(poisoned))  # tolerances assume equal weights
    if rule.name in ("median", "trimmed_mean"):  # coordinate-wise: inside the honest range
        for k in SHAPES:
            stacked = torch.stack([u[k] for u in honest])
            assert bool((out[k] >= stacked.min(0).values - 1e-5).all())
            assert bool((out[k] <= stacked.max(0).values + 1e-5).all())

    def norm(t: dict[str, torch.Tensor]) -> float:
        return float(sum(v.double().pow(2).sum() for v in t.values()) ** 0.5)

    assert norm(out) <= 3 * max(norm(u) for u in honest)


# ---- accumulators ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.describe())
@settings(max_examples=20, deadline=None)
@given(data=rounds(), order=st.randoms())
def test_accumulating_in_any_order_gives_the_rule(
    rule: AggregationRule, data: Any, order: Any
) -> None:
    updates, weights = data
    idx = list(range(len(updates)))
    order.shuffle(idx)
    acc = StreamingMean() if rule.streaming else KeepAll(rule)
    for i in idx:
        acc.add(f"p{i}", updates[i], weights[i])
    agg = acc.result()
    assert agg.count == len(updates) and agg.weight == pytest.approx(sum(weights))
    _close(agg.mean(), rule.combine(updates, weights))
    kept = KeepAll(rule)  # the keep-everything accumulator serves any rule
    for i in idx:
        kept.add(f"p{i}", updates[i], weights[i])
    _close(kept.result().mean(), rule.combine(updates, weights))


# ---- server optimizers ------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVER_OPTIMIZERS)
@settings(max_examples=20, deadline=None)
@given(data=rounds())
def test_server_optimizers_keep_names_shapes_and_inputs(name: str, data: Any) -> None:
    updates, _ = data
    cfg = ServerConfig(optimizer=name)  # type: ignore[arg-type]
    x = updates[0]
    before = {k: v.clone() for k, v in x.items()}
    zero = {k: torch.zeros_like(v) for k, v in x.items()}
    same, s0 = server_step(cfg, x, zero, ServerOptState())
    _close(same, x)  # no pseudo-gradient, no move
    params, s1 = server_step(cfg, x, updates[1], s0)
    params, s2 = server_step(cfg, params, updates[-1], s1)
    _close(x, before)  # inputs untouched
    assert s2.step == 3 and {k: tuple(v.shape) for k, v in params.items()} == SHAPES
    assert all(bool(torch.isfinite(v).all()) for v in params.values())
    root = GlobalVersion("r" * 64, -1, None, content="c" * 64)
    state = CoordinatorState(3, params, s2, [root])
    back = CoordinatorState.from_bytes(state.to_bytes())
    assert back.server_state.step == 3
    for a, b in ((back.server_state.m, s2.m), (back.server_state.v, s2.v), (back.params, params)):
        assert a.keys() == b.keys()
        for k in b:
            assert torch.equal(a[k], b[k])  # bit for bit


# ---- codecs ---------------------------------------------------------------------------------


def test_every_registered_codec_is_in_the_codec_suite() -> None:
    assert {c.name for c in CODEC_CASES} == set(CODEC_REGISTRY)


@pytest.mark.parametrize("codec", CODEC_CASES, ids=lambda c: f"{c.name}-{vars(c)}")
@settings(max_examples=30, deadline=None)
@given(x=tensors(), seed=st.integers(0, 2**40))
def test_a_finite_tensor_decodes_finite(codec: Codec, x: torch.Tensor, seed: int) -> None:
    y = codec.decode(codec.encode(x, seed), tuple(x.shape), seed)
    assert bool(torch.isfinite(y).all())
    assert math.isfinite(float(y.double().norm()))
