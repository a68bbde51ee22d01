"""DP-FTRL in the round engine (privacy.mechanism = "tree", sampling.method = "epochs"):
every participant trains once a pass, each round's sum gets its tree's noise increment so
the model after a pass carries exactly the tree's prefix noise, and the ledger's epsilon
is the trees'."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.unit.test_coordinator import _update
from zenfed.config import FederationConfig, parse_config
from zenfed.coordinator import Coordinator, Member
from zenfed.coordinator.matching.epochs import Epochs
from zenfed.coordinator.state import CoordinatorState
from zenfed.errors import ZenfedError
from zenfed.privacy import tree
from zenfed.privacy.dp import PrivacyBudgetExceeded

INITIAL = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
NAMES = [f"h{i:02d}" for i in range(40)]  # (an empty round: odds 0.75^40)


def _cfg(privacy: dict[str, Any] | None = None, rounds: int = 8) -> FederationConfig:
    return parse_config(
        {
            "data": {"categories": ["ai"]},
            "server": {"optimizer": "fedavg", "lr": 1.0},
            "sampling": {"method": "epochs", "fraction": 0.25},  # passes of 4 rounds
            "run": {"rounds": rounds, "seed": 5},
            "privacy": {
                "clip_norm": 100.0,
                "mechanism": "tree",
                **(privacy or {"noise_multiplier": 0.5}),
            },
        }
    )


def test_every_participant_trains_once_a_pass() -> None:
    c = Coordinator(_cfg(rounds=12), INITIAL, {n: 10 for n in NAMES})
    seen: list[list[str]] = []
    pool = [Member(n, n, 10) for n in NAMES]
    for r in range(12):
        seen.append([m.id for m in c.matcher.select(r, pool)])
    for p in range(3):
        rounds = seen[4 * p : 4 * p + 4]
        flat = [n for cohort in rounds for n in cohort]
        assert sorted(flat) == NAMES  # once each, whoever else takes part
    assert seen[0:4] != seen[4:8]  # passes are drawn anew
    # a participant that joins mid-pass is not given a second turn in it
    late = [*pool, Member("late", "late", 10)]
    assert isinstance(c.matcher, Epochs)
    turns = [r for r in range(4, 8) if c.matcher.turn(r, "late")]
    assert len(turns) == 1 and all(
        ("late" in [m.id for m in c.matcher.select(r, late)]) == (r in turns) for r in range(4, 8)
    )
    assert c.expected_cohort == 40 / 4


def _run_pass(c: Coordinator, value: float) -> list[float]:
    """Every cohort member uploads ``value`` everywhere, for one pass; the cohort sizes."""
    sizes = []
    for _ in range(4):
        tasks = c.open_round()
        for t in tasks:
            c.submit(_update(c, t.participant, value, 10))
        sizes.append(len(tasks))
        c.close_round()
    return [float(s) for s in sizes]


def test_after_a_pass_the_model_carries_the_trees_prefix_noise_exactly() -> None:
    c = Coordinator(_cfg(), INITIAL, {n: 10 for n in NAMES})
    sizes = _run_pass(c, 0.5)
    ledger = c.state.privacy
    assert ledger.tree == [(0, 1), (0, 2), (0, 3), (0, 4)]
    noise = tree.TreeNoise(
        {k: tuple(v.shape) for k, v in INITIAL.items()}, 0.5 * 100.0, tree.pass_seed(ledger.seed, 0)
    )
    prefix = noise.prefix(4)  # the node over leaves 1..4, alone
    m = c.expected_cohort  # the fixed denominator: 40 holders / 4 rounds
    for k, v in INITIAL.items():  # FedAvg, lr 1: theta_0 + (sum of sums + prefix noise) / m
        expected = v.double() + (0.5 * sum(sizes) + prefix[k]) / m
        torch.testing.assert_close(c.state.params[k].double(), expected, rtol=0, atol=1e-4)
    latest = c.state.versions[-1].metrics
    assert latest["tree_leaf"] == 4.0 and latest["sampling_rate"] == 1.0


def test_the_ledgers_epsilon_is_the_trees_and_the_budget_holds() -> None:
    c = Coordinator(_cfg({"target_epsilon": 4.0}, rounds=6), INITIAL, {n: 10 for n in NAMES})
    z = c.privacy.noise_multiplier
    assert z is not None
    for r in range(6):
        tasks = c.open_round()
        for t in tasks:
            c.submit(_update(c, t.participant, 0.1, 10))
        c.close_round()
        spent = tree.epsilon(z, tree.passes(r + 1, 4), 1e-6)
        assert c.epsilon() == pytest.approx(spent, rel=1e-12)
    assert c.epsilon() == pytest.approx(4.0, rel=1e-3)  # calibrated: trees of 4 and 2
    # a third leaf lies at the same depth as the second (ceil(log2(T + 1)) = 2): free
    tasks = c.open_round()
    for t in tasks:
        c.submit(_update(c, t.participant, 0.1, 10))
    c.close_round()
    assert c.epsilon() == pytest.approx(4.0, rel=1e-3)
    with pytest.raises(PrivacyBudgetExceeded):  # a fourth needs depth 3: over budget
        c.open_round()
    again = CoordinatorState.from_bytes(c.state.to_bytes())  # a restart keeps the trees
    assert again.privacy.tree == c.state.privacy.tree and again.privacy.seed == c.state.privacy.seed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sampling": {"method": "poisson", "fraction": 0.25}}, "sampling.method = 'epochs'"),
        ({"privacy": {"adaptive_clipping": True}}, "fixed clip_norm"),
        ({"privacy": {"accountant": "pld"}}, "rdp accountant"),
        ({"sampling": {"method": "epochs"}, "privacy": {"mechanism": "gaussian"}}, "Poisson"),
    ],
)
def test_what_dp_ftrl_cannot_do_is_a_config_error(change: dict[str, Any], message: str) -> None:
    raw = _cfg().model_dump(mode="json")
    for section, values in change.items():
        raw[section] = {**raw[section], **values}
    with pytest.raises(ZenfedError, match=message):
        parse_config(raw)
