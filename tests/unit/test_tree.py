"""DP-FTRL's tree aggregation: the noise on each prefix sum is the sum of the nodes of its
dyadic decomposition, the per-round increments add up to it, and the epsilon is
dp-accounting's for the tree."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch
from dp_accounting import rdp

from zenfed.privacy.tree import TreeNoise, depth, epsilon


def test_a_prefix_is_covered_by_one_node_per_set_bit() -> None:
    tree = TreeNoise({"x": (3,)}, std=1.0, seed=7)
    assert tree.nodes(1) == [(0, 0)]
    assert tree.nodes(4) == [(2, 0)]  # leaves 1..4
    assert tree.nodes(6) == [(2, 0), (1, 2)]  # 1..4, 5..6
    assert tree.nodes(7) == [(2, 0), (1, 2), (0, 6)]  # 1..4, 5..6, 7
    assert tree.nodes(0) == []
    for t in range(1, 40):  # the nodes tile [1, t] exactly
        leaves = [i * 2**lv + j + 1 for lv, i in tree.nodes(t) for j in range(2**lv)]
        assert leaves == list(range(1, t + 1))
        assert len(tree.nodes(t)) == bin(t).count("1") <= depth(t)


def test_the_prefix_noise_is_its_nodes_noise_and_the_increments_sum_to_it() -> None:
    tree = TreeNoise({"a": (2, 2), "b": (5,)}, std=0.3, seed=11)
    six = tree.prefix(6)
    by_hand = {k: tree.node(2, 0)[k] + tree.node(1, 2)[k] for k in six}
    for k in six:
        torch.testing.assert_close(six[k], by_hand[k], rtol=0, atol=0)
    running = {k: torch.zeros_like(v) for k, v in six.items()}
    for t in range(1, 14):
        for k, v in tree.increment(t).items():
            running[k] += v
        for k in running:  # round by round, the released sums carry prefix(t)
            torch.testing.assert_close(running[k], tree.prefix(t)[k], rtol=1e-12, atol=1e-12)
    for t, since in ((5, 2), (8, 3), (7, 0), (12, 9)):  # after skipped leaves
        step = tree.increment(t, since=since)
        for k in step:
            expected = tree.prefix(t)[k] - tree.prefix(since)[k]
            torch.testing.assert_close(step[k], expected, rtol=1e-12, atol=1e-12)
    # the same seed draws the same nodes; another seed, others
    again = TreeNoise({"a": (2, 2), "b": (5,)}, std=0.3, seed=11)
    assert torch.equal(again.node(1, 2)["b"], tree.node(1, 2)["b"])
    other = TreeNoise({"a": (2, 2), "b": (5,)}, std=0.3, seed=12)
    assert not torch.equal(other.node(1, 2)["b"], tree.node(1, 2)["b"])


def test_each_node_is_independent_noise_of_the_stated_stddev() -> None:
    tree = TreeNoise({"x": (200_000,)}, std=2.5, seed=3)
    a, b = tree.node(0, 0)["x"], tree.node(0, 1)["x"]
    assert float(a.std()) == pytest.approx(2.5, rel=0.01)
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.01
    # a prefix of t = 7 sums 3 nodes: stddev 2.5 sqrt(3)
    assert float(tree.prefix(7)["x"].std()) == pytest.approx(2.5 * math.sqrt(3), rel=0.01)


@pytest.mark.parametrize("leaves", [1, 3, 4, 10, 60])
def test_the_trees_epsilon_is_dp_accountings(leaves: int) -> None:
    z, delta = 1.3, 1e-6
    direct = rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL
    )
    direct.compose(dp_accounting.SingleEpochTreeAggregationDpEvent(z, leaves))
    assert epsilon(z, [leaves], delta) == pytest.approx(direct.get_epsilon(delta), rel=1e-12)
    # a leaf in depth(T) nodes: a Gaussian mechanism of multiplier z / sqrt(depth)
    gauss = rdp.RdpAccountant()
    gauss.compose(dp_accounting.GaussianDpEvent(z / math.sqrt(depth(leaves))))
    assert epsilon(z, [leaves], delta) == pytest.approx(gauss.get_epsilon(delta), rel=1e-9)
    assert depth(leaves) == math.ceil(math.log2(leaves + 1))


def test_restarted_trees_compose() -> None:
    z, delta = 2.0, 1e-6
    two = epsilon(z, [8, 8], delta)
    assert two > epsilon(z, [8], delta)
    gauss = rdp.RdpAccountant()  # two trees of 8: a Gaussian of z / sqrt(4), twice
    gauss.compose(dp_accounting.GaussianDpEvent(z / 2.0), 2)
    assert two == pytest.approx(gauss.get_epsilon(delta), rel=1e-9)
    assert epsilon(z, [], delta) == 0.0
