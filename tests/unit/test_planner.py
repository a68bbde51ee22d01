"""The privacy planner (``zenfed plan``): its epsilon is the accountant's over the run's
releases, its noise per coordinate is the noise a release carries, and the swamping
warning appears exactly when the ratio is above the bound."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch

from zenfed.aggregate import Aggregate
from zenfed.config import FederationConfig, parse_config
from zenfed.errors import ZenfedError
from zenfed.privacy import dp
from zenfed.privacy.planner import (
    PrivacyWarning,
    noised_dimensions,
    plan,
    plan_of,
    record_batch_needed,
    record_plan,
    record_swamping_warning,
    swamping_warning,
    warn_if_swamped,
)
from zenfed.privacy.policy import PrivacyPolicy


def _cfg(privacy: dict[str, Any], fraction: float = 0.1, rounds: int = 40) -> FederationConfig:
    return parse_config(
        {
            "data": {"categories": ["ai"]},
            "sampling": {"method": "poisson", "fraction": fraction},
            "run": {"rounds": rounds},
            "privacy": {"clip_norm": 0.5, **privacy},
        }
    )


@pytest.mark.parametrize(
    ("accountant", "noise"),
    [("rdp", {"target_epsilon": 3.0}), ("pld", {"noise_multiplier": 1.2})],
)
def test_the_plans_epsilon_is_what_the_runs_releases_spend(
    accountant: str, noise: dict[str, float]
) -> None:
    cfg = _cfg({**noise, "accountant": accountant})
    p = plan(cfg, holders=100, dimensions=1000)
    policy = PrivacyPolicy(cfg)  # the coordinator's own: release every round of the run
    ledger = policy.initial_ledger()
    zero = Aggregate({"x": torch.zeros(10, dtype=torch.float64)}, weight=10.0, count=10)
    for _ in range(cfg.run.rounds):
        _, _, ledger = policy.release(zero, ledger, expected_cohort=10.0, secure=False)
    assert p.epsilon == pytest.approx(policy.epsilon(ledger), rel=1e-12)
    if "target_epsilon" in noise:  # calibrated to the target
        assert 2.9 < p.epsilon <= 3.0 * (1 + 1e-6)
    assert p.epsilon == dp.epsilon([(0.1, p.noise_multiplier)] * 40, 1e-6, accountant)


def test_the_noise_per_coordinate_is_the_released_means() -> None:
    cfg = _cfg({"noise_multiplier": 1.5})
    holders, d = 50, 200_000
    p = plan(cfg, holders, d)
    policy = PrivacyPolicy(cfg)
    zero = Aggregate({"x": torch.zeros(d, dtype=torch.float64)}, weight=5.0, count=5)
    released, _, _ = policy.release(
        zero, policy.initial_ledger(), expected_cohort=p.expected_cohort, secure=False
    )
    measured = float(released.mean()["x"].double().std())
    assert measured == pytest.approx(p.noise_per_coordinate * 0.5, rel=0.02)  # x C
    # and the ratio is z sqrt(d) / (q N), free of C
    assert p.ratio == pytest.approx(1.5 * math.sqrt(d) / (0.1 * holders))


def _warnings(cfg: FederationConfig, holders: int) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warn_if_swamped(cfg, {"x": (100, 100)}, holders, PrivacyPolicy(cfg))  # sqrt(d) = 100
    return [str(w.message) for w in seen if issubclass(w.category, PrivacyWarning)]


def test_the_swamping_warning_appears_exactly_when_the_ratio_is_above_the_bound() -> None:
    cfg = _cfg({"noise_multiplier": 1.0}, fraction=1.0)  # ratio = 1 * 100 / N
    assert plan(cfg, 100, 10_000).ratio == pytest.approx(1.0)
    assert _warnings(cfg, 100) == []  # at the bound: not above it
    assert _warnings(cfg, 101) == []
    [message] = _warnings(cfg, 99)
    assert "swamp the update" in message and "100 holders per round" in message
    looser = _cfg({"noise_multiplier": 1.0, "warn_noise_ratio": 2.0}, fraction=1.0)
    assert _warnings(looser, 51) == [] and len(_warnings(looser, 49)) == 1
    assert _warnings(_cfg({}), 1) == []  # clipping without noise: nothing to warn of


def test_the_coordinator_warns_once_before_its_first_round() -> None:
    from zenfed.coordinator.engine import Coordinator

    cfg = _cfg({"noise_multiplier": 1.0}, fraction=1.0)
    initial = {"x": torch.zeros(100, 100)}
    coord = Coordinator(cfg, initial, {"a": 10, "b": 10})  # ratio 100 / 2
    with pytest.warns(PrivacyWarning, match="50.0x"):
        coord.open_round()
    coord.abort_round()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)
        coord.open_round()  # said once


def test_noise_under_secure_aggregation_goes_on_the_codecs_flat_vector() -> None:
    raw = _cfg({"noise_multiplier": 1.0}).model_dump(mode="json")
    raw["secagg"] = {"enabled": True}
    raw["compress"] = {"pipeline": [{"codec": "randk", "fraction": 0.25}]}
    secure = parse_config(raw)
    shapes = {"x": (100, 100)}
    assert noised_dimensions(_cfg({"noise_multiplier": 1.0}), shapes) == 10_000
    assert noised_dimensions(secure, shapes) == 2_500  # the shared random subspace


def test_a_plan_needs_dp_and_holders() -> None:
    with pytest.raises(ZenfedError, match="no participant-level DP"):
        plan(_cfg({}), 10, 10)
    with pytest.raises(ZenfedError, match="--holders"):
        plan(_cfg({"noise_multiplier": 1.0}), 0, 10)
    assert swamping_warning(plan(_cfg({"noise_multiplier": 0.1}, 1.0), 1000, 100)) is None
    for bad in (0.0, -1.0):  # a bound the ratio cannot be compared with
        with pytest.raises(ZenfedError, match="warn_noise_ratio must be positive"):
            _cfg({"noise_multiplier": 1.0, "warn_noise_ratio": bad})


def _record_cfg(**privacy: Any) -> FederationConfig:
    return parse_config(
        {
            "data": {"categories": ["ai"]},
            "train": {"batch_size": 8, "local_steps": 2},
            "run": {"rounds": 15},
            "privacy": {"record_clip_norm": 1.0, **privacy},
        }
    )


def test_a_holders_dp_sgd_plan_spends_its_target_over_the_runs_steps() -> None:
    cfg = _record_cfg(record_target_epsilon=3.0)
    p = record_plan(cfg, examples=400, dimensions=10_000)
    assert (p.steps, p.sampling_rate, p.expected_batch) == (30, 0.02, 8.0)
    assert p.epsilon == pytest.approx(3.0, rel=1e-3) and p.epsilon <= 3.0 * (1 + 1e-9)
    assert p.epsilon == dp.epsilon([(0.02, p.noise_multiplier)] * 30, 1e-6)
    assert p.ratio == pytest.approx(p.noise_multiplier * 100 / 8)
    fixed = record_plan(_record_cfg(record_noise_multiplier=1.3), 400, 10_000)
    assert fixed.noise_multiplier == 1.3 and fixed.ratio == pytest.approx(1.3 * 100 / 8)
    # a holder with fewer records than a batch samples all of them each step
    assert record_plan(cfg, examples=5, dimensions=10).sampling_rate == 1.0


def test_the_batch_a_holder_needs_is_the_smallest_within_the_bound() -> None:
    cfg = _record_cfg(record_target_epsilon=8.0)
    d = 10_000
    needed = record_batch_needed(cfg, 100_000, d)
    assert needed is not None and needed > 8
    assert not record_plan(cfg, 100_000, d, batch=needed).swamped
    assert record_plan(cfg, 100_000, d, batch=needed - 1).swamped
    assert record_batch_needed(cfg, 50, d) is None  # even all 50 records a step are not
    p = record_plan(cfg, 50, d)
    assert "no batch of its records keeps it below" in str(
        record_swamping_warning(p, None, searched=True)
    )
    wide = _record_cfg(record_target_epsilon=8.0, warn_noise_ratio=1e6)
    assert record_swamping_warning(record_plan(wide, 50, d)) is None


def test_a_record_plan_needs_record_dp_and_records() -> None:
    with pytest.raises(ZenfedError, match="no record-level DP"):
        record_plan(_cfg({"noise_multiplier": 1.0}), 100, 10)
    with pytest.raises(ZenfedError, match="0 records"):
        record_plan(_record_cfg(record_noise_multiplier=1.0), 0, 10)


def test_a_record_plan_at_another_batch_counts_that_batchs_epoch_steps() -> None:
    cfg = parse_config(
        {
            "data": {"categories": ["ai"]},
            "train": {"batch_size": 8, "local_epochs": 1.0},
            "run": {"rounds": 2},
            "privacy": {"record_clip_norm": 1.0, "record_target_epsilon": 8.0},
        }
    )
    assert record_plan(cfg, 2000, 100).steps == 2 * 250
    assert record_plan(cfg, 2000, 100, batch=12).steps == 2 * 167  # ceil(2000 / 12)


def test_a_target_out_of_reach_is_a_record_level_error_and_no_batch_for_the_search() -> None:
    cfg = _record_cfg(record_target_epsilon=0.01)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"rounds": 5000})})
    with pytest.raises(ZenfedError, match="record-level epsilon 0.01.*out of reach"):
        record_plan(cfg, 8, 10)  # q = 1 over 10,000 steps
    assert record_batch_needed(cfg, 8, 10) is None


def _with_train(cfg: FederationConfig, **train: Any) -> FederationConfig:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=train)})


def test_a_bound_the_update_cannot_reach_raises_the_ratio_and_the_warning_says_so() -> None:
    # C = 0.5, but one AdamW step at lr 1e-3 moves each of the 10,000 values by about
    # 1e-3: a norm of 0.1, so the signal is 1e-3 a coordinate while the noise is z C / qN
    cfg = _with_train(_cfg({"noise_multiplier": 1.0}, fraction=1.0), lr=1e-3, local_steps=1)
    p = plan(cfg, 400, 10_000)
    assert p.bound_unfilled and p.update_norm_reach == pytest.approx(0.1)
    assert p.ratio == pytest.approx(1.0 * 0.5 / (400 * 1e-3))  # 1.25, not z sqrt(d) / qN
    assert p.holders_per_round_needed == pytest.approx(500)
    message = swamping_warning(p)
    assert message is not None and "reaches a norm of only about 0.1" in message
    assert "5.0x less noise" in message
    # a bound just above the reach (0.5 against 0.4) is named as a share, not as 1.2x
    near = swamping_warning(plan(_with_train(cfg, local_steps=4), 100, 10_000))
    assert near is not None and "20% less noise" in near
    assert swamping_warning(plan(cfg, 500, 10_000)) is None  # exactly at the bound
    # a bound the update fills: back to z sqrt(d) / qN, and nothing said of the reach
    filled = plan(_with_train(cfg, local_steps=5), 400, 10_000)  # reaches 0.5 = C
    assert not filled.bound_unfilled and filled.ratio == pytest.approx(100 / 400)
    # with epochs the steps depend on each holder's records: the bound is taken as filled
    epochs = plan(_with_train(cfg, local_steps=None, local_epochs=1.0), 400, 10_000)
    assert epochs.update_norm_reach is None and epochs.ratio == pytest.approx(100 / 400)


def test_a_random_subspace_lowers_the_rounds_ratio_and_not_the_runs() -> None:
    # the same update (C = 0.5 over 10,000 values) noised whole, or in a shared random
    # quarter of the values with the bound scaled to the projection (0.5 sqrt(0.25))
    whole = _cfg({"noise_multiplier": 1.0}, fraction=1.0)
    raw = _cfg({"noise_multiplier": 1.0, "clip_norm": 0.25}, fraction=1.0).model_dump(mode="json")
    raw["secagg"] = {"enabled": True}
    raw["compress"] = {"pipeline": [{"codec": "randk", "fraction": 0.25}]}
    quarter, shapes = parse_config(raw), {"x": (100, 100)}
    p, sub = plan_of(whole, 400, shapes), plan_of(quarter, 400, shapes)
    assert (sub.dimensions, sub.trained, sub.coverage) == (2_500, 10_000, 0.25)
    assert sub.round_ratio == pytest.approx(p.round_ratio / 2)  # sqrt(2,500 / 10,000)
    assert sub.ratio == pytest.approx(p.ratio) and p.ratio == pytest.approx(100 / 400)
    assert sub.holders_per_round_needed == pytest.approx(p.holders_per_round_needed)
    message = swamping_warning(plan_of(quarter, 50, shapes))  # ratio 2
    assert message is not None and "2,500 noised values of 10,000 trained ones" in message
    assert "25% of the rounds" in message
