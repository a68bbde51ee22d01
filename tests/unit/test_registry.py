"""``[server] aggregator``: rules by name with parameters, and the refusals the issue names."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_config
from zenfed.aggregate import RULES, build_rule
from zenfed.config import RULE_PARAMS, AggregatorSpec, parse_config
from zenfed.coordinator.engine import Coordinator
from zenfed.errors import ZenfedError
from zenfed.sim.attacks import check_tolerance

INITIAL = {"a": torch.zeros(2, 3), "b": torch.ones(4)}  # as test_coordinator's


def _spec(raw: object) -> AggregatorSpec:
    return parse_config({"server": {"aggregator": raw}}).server.aggregator


def test_a_name_or_a_table_names_a_rule_with_its_parameters() -> None:
    assert _spec("median") == AggregatorSpec(rule="median")
    krum = _spec({"rule": "krum", "f": 1, "m": 3})
    assert krum.params == {"f": 1, "m": 3}
    assert build_rule(krum).describe() == "krum(f=1, m=3)"
    bucketed = build_rule(_spec({"rule": "median", "bucket": 2}))
    assert bucketed.describe() == "median() over buckets of 2" and not bucketed.streaming
    assert set(RULES) == set(RULE_PARAMS)  # the config's table and the registry agree


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("krumm", "rule"),
        ({"rule": "krum"}, "krum needs 'f'"),
        ({"rule": "krum", "f": 1, "beta": 0.1}, "'beta' is not a parameter of krum"),
        ({"rule": "median", "bucket": 1}, "bucket must be at least 2"),
        ({"rule": "fedavg", "bucket": 3}, "goes with a robust rule"),
        ({"rule": "trimmed_mean", "betta": 0.1}, "betta"),
    ],
)
def test_a_rule_or_parameter_that_does_not_exist_is_refused(raw: object, message: str) -> None:
    with pytest.raises(ZenfedError, match=message):
        _spec(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"rule": "trimmed_mean", "beta": 0.5}, "beta"),
        ({"rule": "krum", "f": -1}, "f"),
        ({"rule": "norm_bound"}, "max_norm"),
        ({"rule": "norm_bound", "max_norm": 1.0, "multiple": 2.0}, "max_norm"),
        ({"rule": "centered_clipping", "tau": -1.0}, "tau"),
        ({"rule": "geometric_median", "iterations": 0}, "iterations"),
    ],
)
def test_an_impossible_value_fails_at_start_up_naming_the_rule(raw: object, message: str) -> None:
    with pytest.raises(ZenfedError, match=f"server.aggregator = .*{message}"):
        build_rule(_spec(raw))


def test_a_cohort_too_small_for_krum_is_refused_before_round_one() -> None:
    cfg = tiny_config(server={"aggregator": {"rule": "krum", "f": 1}})
    with pytest.raises(ZenfedError, match=r"needs at least 5 updates a round, got 4"):
        Coordinator(cfg, INITIAL, {f"p{i}": 10 for i in range(4)})
    Coordinator(cfg, INITIAL, {f"p{i}": 10 for i in range(5)})  # 2f + 3 = 5: enough


def test_a_round_left_with_too_few_updates_for_the_rule_is_aborted() -> None:
    from tests.unit.test_coordinator import _update
    from zenfed.coordinator.port import CoordinatorPort

    cfg = tiny_config(server={"aggregator": {"rule": "krum", "f": 1}})
    c = Coordinator(cfg, INITIAL, {f"p{i}": 10 for i in range(5)})
    port = CoordinatorPort(c, clock=lambda: 0.0, wait_for_minimum=False)
    assert port.tick() == "opened"
    root = c.version.id
    for pid in ("p0", "p1", "p2", "p3"):  # one short of 2f + 3
        c.submit(_update(c, pid, 1.0, 10))
    c.current.deadline = -1.0  # type: ignore[union-attr]
    assert port.tick() == "aborted" and "needs at least 5 updates" in port.last_reason
    assert c.version.id == root and c.current is None


def test_more_attackers_than_a_robust_rule_tolerates_is_refused() -> None:
    krum = build_rule(AggregatorSpec(rule="krum", f=1))
    check_tolerance(1, 10, 10, krum)  # one per round: tolerated
    with pytest.raises(ZenfedError, match=r"about 2 per round of 10.*tolerates 1"):
        check_tolerance(2, 10, 10, krum)
    median = build_rule(AggregatorSpec(rule="median"))
    with pytest.raises(ZenfedError, match="tolerates 2"):
        check_tolerance(3, 5, 5, median)
    check_tolerance(4, 10, 10, median)
    # FedAvg claims nothing: it runs, as the baseline a defence is measured against
    check_tolerance(3, 10, 10, build_rule(AggregatorSpec()))
    bucketed = build_rule(AggregatorSpec(rule="median", bucket=2))  # 5 buckets: 2 bad ones
    check_tolerance(2, 10, 10, bucketed)
    with pytest.raises(ZenfedError, match="tolerates 2"):
        check_tolerance(3, 10, 10, bucketed)
