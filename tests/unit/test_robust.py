from collections.abc import Callable, Sequence
from functools import partial

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from zenfed.aggregate import fedavg, median
from zenfed.aggregate.robust import (
    bucket,
    bucket_assignment,
    centered_clipping,
    geometric_median,
    krum,
    krum_scores,
    norm_bound,
    tolerated,
    trimmed_mean,
)
from zenfed.errors import ZenfedError
from zenfed.tensors import Tensors

Rule = Callable[[Sequence[Tensors], Sequence[float]], Tensors]


def _t(*vals: float) -> Tensors:
    return {"w": torch.tensor(vals, dtype=torch.float32)}


def _close(out: Tensors, *vals: float) -> None:
    torch.testing.assert_close(out["w"], torch.tensor(vals, dtype=torch.float32))


# --- hand-computed results -------------------------------------------------------------


def test_trimmed_mean_matches_hand_computed() -> None:
    ups = [_t(1, 10), _t(2, -5), _t(3, 0), _t(4, 7), _t(100, 1)]
    # beta 0.2, n 5: k = 1. Coord 0: drop 1 and 100, mean(2, 3, 4) = 3.
    # Coord 1: sorted -5, 0, 1, 7, 10; drop -5 and 10, mean(0, 1, 7) = 8/3. Unweighted.
    _close(trimmed_mean(ups, [1, 2, 3, 4, 5], beta=0.2), 3.0, 8 / 3)
    # beta 0: the plain mean, (1 + 2 + 3 + 4 + 100) / 5 = 22, (10 - 5 + 0 + 7 + 1) / 5 = 2.6
    _close(trimmed_mean(ups, [1, 2, 3, 4, 5], beta=0.0), 22.0, 2.6)


def test_krum_matches_hand_computed() -> None:
    ups = [_t(0), _t(1), _t(2), _t(10), _t(11)]
    # f = 1: sum of squared distances to the n - f - 2 = 2 nearest others
    # 0: 1 + 4 = 5; 1: 1 + 1 = 2; 2: 1 + 4 = 5; 10: 1 + 64 = 65; 11: 1 + 81 = 82
    torch.testing.assert_close(
        krum_scores(ups, f=1), torch.tensor([5.0, 2.0, 5.0, 65.0, 82.0], dtype=torch.float64)
    )
    weights = [1.0, 1.0, 2.0, 1.0, 1.0]
    _close(krum(ups, weights, f=1), 1.0)  # the lowest score: update 1
    # m = 3: updates 1, 0, 2 (0 before 2 on the tie); (0 * 1 + 1 * 1 + 2 * 2) / 4 = 1.25
    _close(krum(ups, weights, f=1, m=3), 1.25)


def test_geometric_median_matches_hand_computed_weiszfeld_steps() -> None:
    pts, w = [_t(0, 0), _t(4, 0), _t(0, 4), _t(1, 1)], [1.0] * 4
    # z0 = coordinate-wise median = (0.5, 0.5); distances sqrt(0.5), sqrt(12.5) twice,
    # sqrt(0.5): b = (sqrt2, sqrt2 / 5, sqrt2 / 5, sqrt2); x of z1 = (4 sqrt2 / 5 + sqrt2)
    # / (12 sqrt2 / 5) = 0.75, and y the same by symmetry
    _close(geometric_median(pts, w, iterations=1), 0.75, 0.75)
    # weighted: [0, 3] with weights [2, 1]: z0 = 1.5, b = (2 / 1.5, 1 / 1.5), z1 = 2 / 2 = 1;
    # distances 1, 2: b = (2, 0.5), z2 = 1.5 / 2.5 = 0.6
    _close(geometric_median([_t(0), _t(3)], [2.0, 1.0], iterations=1), 1.0)
    _close(geometric_median([_t(0), _t(3)], [2.0, 1.0], iterations=2), 0.6)
    # it converges to the weighted geometric median, 0 (weight 2 of 3 sits there)
    out = geometric_median([_t(0), _t(3)], [2.0, 1.0], iterations=60, tol=0.0)
    assert abs(float(out["w"])) < 1e-4
    # objective 4.5 at z0, 4 at z1: the relative change 0.125 <= tol 0.9 stops it at z1
    _close(geometric_median([_t(0), _t(3)], [2.0, 1.0], iterations=10, tol=0.9), 1.0)


def test_norm_bound_matches_hand_computed() -> None:
    # fixed bound 2: (3, 4) has norm 5 -> (1.2, 1.6); (0, 1) stays; mean (0.6, 1.3)
    _close(norm_bound([_t(3, 4), _t(0, 1)], [1.0, 1.0], max_norm=2.0), 0.6, 1.3)
    ups = [_t(1, 0), _t(0, 2), _t(6, 8)]  # norms 1, 2, 10: median 2
    # multiple 1: bound 2, (6, 8) -> (1.2, 1.6); mean (2.2 / 3, 3.6 / 3)
    _close(norm_bound(ups, [1.0, 1.0, 1.0], multiple=1.0), 2.2 / 3, 1.2)
    # multiple 0.5: bound 1, (0, 2) -> (0, 1), (6, 8) -> (0.6, 0.8); weights 2, 1, 1:
    # ((2 + 0 + 0.6) / 4, (0 + 1 + 0.8) / 4)
    _close(norm_bound(ups, [2.0, 1.0, 1.0], multiple=0.5), 0.65, 0.45)


def test_centered_clipping_matches_hand_computed() -> None:
    ups, w = [_t(0), _t(1), _t(10)], [2.0, 1.0, 1.0]
    # v0 = median = 1; diffs -1, 0, 9 -> clipped at 1: -1, 0, 1
    # v1 = 1 + (2 * -1 + 0 + 1) / 4 = 0.75
    _close(centered_clipping(ups, w, tau=1.0, iterations=1), 0.75)
    # diffs -0.75, 0.25, 9.25 -> -0.75, 0.25, 1; v2 = 0.75 + (-1.5 + 0.25 + 1) / 4 = 0.6875
    _close(centered_clipping(ups, w, tau=1.0, iterations=2), 0.6875)
    # adaptive: [0, 1, 2, 10], v0 = 1.5; diffs -1.5, -0.5, 0.5, 8.5; tau = median of
    # norms (0.5, 0.5, 1.5, 8.5) = 1; clipped -1, -0.5, 0.5, 1; weights 1, 1, 1, 2:
    # v1 = 1.5 + (-1 - 0.5 + 0.5 + 2) / 5 = 1.7
    ups4 = [_t(0), _t(1), _t(2), _t(10)]
    _close(centered_clipping(ups4, [1.0, 1.0, 1.0, 2.0], iterations=1), 1.7)


def test_bucket_means_and_weights_match_hand_computed() -> None:
    ups, w = [_t(0), _t(10), _t(20), _t(30), _t(40)], [1.0, 1.0, 1.0, 1.0, 2.0]
    means, totals = bucket(ups, w, s=5, seed=3)  # one bucket: (0+10+20+30+80) / 6
    _close(means[0], 140 / 6)
    assert totals == [6.0]
    groups = bucket_assignment(5, 2, seed=3)
    means, totals = bucket(ups, w, s=2, seed=3)
    assert [len(g) for g in groups] == [2, 2, 1]
    for g, m, tot in zip(groups, means, totals, strict=True):
        assert tot == sum(w[i] for i in g)
        _close(m, sum(10 * i * w[i] for i in g) / tot)


# --- contract over every rule ----------------------------------------------------------

RULES: dict[str, tuple[Rule, int]] = {  # the rule with its parameters, its smallest n
    "trimmed_mean": (partial(trimmed_mean, beta=0.2), 1),
    "krum": (partial(krum, f=1, m=2), 5),
    "geometric_median": (geometric_median, 1),
    "norm_bound_fixed": (partial(norm_bound, max_norm=100.0), 1),
    "norm_bound_adaptive": (partial(norm_bound, multiple=2.0), 1),
    "centered_clipping": (centered_clipping, 1),
    "centered_clipping_tau": (partial(centered_clipping, tau=1.0), 1),
}


@pytest.mark.parametrize("name", RULES)
def test_rule_of_identical_updates_is_that_update(name: str) -> None:
    rule, _ = RULES[name]
    u = {"a": torch.randn(3, 4), "b": torch.randn(5)}
    out = rule([u] * 5, [1.0, 7.0, 100.0, 3.0, 2.0])
    for k in u:
        torch.testing.assert_close(out[k], u[k])


@pytest.mark.parametrize("name", RULES)
def test_rule_keeps_names_and_shapes_returns_finite_float32(name: str) -> None:
    rule, _ = RULES[name]
    g = torch.Generator().manual_seed(1)
    ups = [
        {"b": torch.randn(2, 3, generator=g, dtype=torch.float64), "a": torch.randn(4, generator=g)}
        for _ in range(6)
    ]
    before = [{k: v.clone() for k, v in u.items()} for u in ups]
    out = rule(ups, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert list(out) == ["b", "a"]
    for k in out:
        assert out[k].shape == ups[0][k].shape and out[k].dtype == torch.float32
        assert bool(torch.isfinite(out[k]).all())
    for u, b in zip(ups, before, strict=True):  # the inputs are not mutated
        assert all(torch.equal(u[k], b[k]) for k in u)


def _update(vals: Sequence[float]) -> Tensors:
    t = torch.tensor(vals, dtype=torch.float32)
    return {"a": t[:2], "b": t[2:].reshape(1, 2)}


@pytest.mark.parametrize("name", RULES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_rule_is_permutation_invariant(name: str, data: st.DataObject) -> None:
    rule, min_n = RULES[name]
    value = st.floats(-10, 10, width=32)
    items = data.draw(
        st.lists(
            st.tuples(st.lists(value, min_size=4, max_size=4), st.integers(1, 1000)),
            min_size=min_n,
            max_size=8,
        )
    )
    order = data.draw(st.permutations(range(len(items))))
    updates = [_update(v) for v, _ in items]
    weights = [float(w) for _, w in items]
    if name == "krum":  # Krum breaks score ties by index: skip ties at the selection edge
        s = krum_scores(updates, f=1).sort().values
        assume(bool(s[1] < s[2]))
    a = rule(updates, weights)
    b = rule([updates[i] for i in order], [weights[i] for i in order])
    for k in a:
        torch.testing.assert_close(a[k], b[k])


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.integers(1, 8), st.integers(0, 2**31))
def test_bucket_assignment_is_a_seeded_partition(n: int, s: int, seed: int) -> None:
    groups = bucket_assignment(n, s, seed)
    assert groups == bucket_assignment(n, s, seed)
    assert sorted(i for g in groups for i in g) == list(range(n))
    assert all(len(g) == s for g in groups[:-1]) and 1 <= len(groups[-1]) <= s


def test_bucket_assignment_depends_on_the_seed() -> None:
    assert len({tuple(map(tuple, bucket_assignment(10, 2, seed))) for seed in range(5)}) > 1


# --- each rule resists its attack, fedavg does not -------------------------------------


def _attacked(
    attack: str, seed: int, n_honest: int = 7, n_bad: int = 2
) -> tuple[list[Tensors], list[float], torch.Tensor]:
    """n_honest updates ~ N(mu, 0.1^2) in dimension 50 and n_bad attackers first."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(50, generator=g, dtype=torch.float64)
    honest = [mu + 0.1 * torch.randn(50, generator=g, dtype=torch.float64) for _ in range(n_honest)]
    direction = torch.randn(50, generator=g, dtype=torch.float64)
    bad = {
        "sign_flip": [-20 * mu] * n_bad,
        "huge": [1e4 * torch.randn(50, generator=g, dtype=torch.float64) for _ in range(n_bad)],
        "scaling": [30 * direction * mu.norm() / direction.norm()] * n_bad,  # boosted backdoor
    }[attack]
    updates = [{"a": v[:30].reshape(5, 6), "b": v[30:]} for v in bad + honest]
    weights = [float(w) for w in torch.randint(50, 150, (len(updates),), generator=g)]
    return updates, weights, mu


def _dist(out: Tensors, mu: torch.Tensor) -> float:
    return float((torch.cat([out["a"].reshape(-1), out["b"]]).double() - mu).norm())


ROBUST: dict[str, Callable[..., Tensors]] = {
    "trimmed_mean": partial(trimmed_mean, beta=0.25),  # k = 2 of 9
    "krum": partial(krum, f=2, m=3),
    "geometric_median": geometric_median,
    "centered_clipping": centered_clipping,
    "norm_bound_fixed": norm_bound,  # max_norm set below from mu
    "norm_bound_adaptive": partial(norm_bound, multiple=1.0),
}
CASES = [
    (rule, attack)
    for rule in ROBUST
    for attack in ("sign_flip", "huge", "scaling")
    if not (rule.startswith("norm_bound") and attack == "sign_flip")  # not its attack
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("name", "attack"), CASES)
def test_rule_resists_its_attack_where_fedavg_fails(name: str, attack: str, seed: int) -> None:
    updates, weights, mu = _attacked(attack, seed)
    rule = ROBUST[name]
    if name == "norm_bound_fixed":
        rule = partial(norm_bound, max_norm=float(mu.norm()))
    # norm bounding only caps the attackers' pull (2/9 of the weight, each at the bound);
    # the rules that out-vote them land within the honest noise
    slack = 0.5 if name.startswith("norm_bound") else 0.2
    assert _dist(rule(updates, weights), mu) < slack * float(mu.norm())
    assert _dist(fedavg(updates, weights), mu) > 2 * float(mu.norm())


@pytest.mark.parametrize("attack", ["sign_flip", "huge", "scaling"])
def test_krum_does_not_select_the_attackers(attack: str) -> None:
    updates, _, _ = _attacked(attack, seed=0)
    scores = krum_scores(updates, f=2)  # attackers are updates 0 and 1; m = 3 selected
    assert float(scores[:2].min()) > float(scores[2:].sort().values[2])


@pytest.mark.parametrize("seed", range(5))
def test_bucketing_then_median_resists_two_of_ten(seed: int) -> None:
    updates, weights, mu = _attacked("sign_flip", seed, n_honest=8, n_bad=2)
    means, totals = bucket(updates, weights, s=2, seed=seed)
    assert len(means) == 5  # at most 2 of 5 buckets hold an attacker
    assert _dist(median(means, totals), mu) < 0.5 * float(mu.norm())
    assert _dist(fedavg(means, totals), mu) > 2 * float(mu.norm())


# --- refusals and tolerance ------------------------------------------------------------

FIVE = [_t(float(i)) for i in range(5)]
W5 = [1.0] * 5


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda: krum(FIVE, W5, f=2), r"krum with f=2 needs more than 2f\+2 = 6 updates, got 5"),
        (lambda: krum(FIVE, W5, f=-1), "krum with f=-1"),
        (lambda: krum(FIVE, W5, f=1, m=0), "selecting m=0"),
        (lambda: krum(FIVE, W5, f=1, m=5), "selecting m=5"),
        (lambda: trimmed_mean(FIVE, W5, beta=0.5), r"beta=0.5 .*\[0, 0.5\)"),
        (lambda: trimmed_mean(FIVE, W5, beta=-0.1), "beta=-0.1"),
        (lambda: norm_bound(FIVE, W5), "max_norm=None, multiple=None"),
        (lambda: norm_bound(FIVE, W5, max_norm=1.0, multiple=1.0), "max_norm=1.0, multiple=1.0"),
        (lambda: norm_bound(FIVE, W5, max_norm=0.0), "max_norm=0.0"),
        (lambda: norm_bound(FIVE, W5, multiple=-1.0), "multiple=-1.0"),
        (lambda: geometric_median(FIVE, W5, iterations=0), "iterations=0"),
        (lambda: geometric_median(FIVE, W5, nu=0.0), "nu=0.0"),
        (lambda: centered_clipping(FIVE, W5, tau=0.0), "tau=0.0"),
        (lambda: centered_clipping(FIVE, W5, iterations=0), "iterations=0"),
        (lambda: bucket(FIVE, W5, s=0, seed=1), "s=0"),
        (lambda: bucket_assignment(5, 0, seed=1), "s=0"),
        (lambda: geometric_median([_t(1), {"v": torch.ones(1)}], [1, 1]), "names or shapes"),
        (lambda: krum([], [], f=0), "0 updates"),
        (lambda: tolerated("mean_of_my_dreams", 5, {}), "unknown aggregation rule"),
    ],
)
def test_refusals_name_the_problem(call: Callable[[], object], problem: str) -> None:
    with pytest.raises(ZenfedError, match=problem) as err:
        call()
    assert err.value.fix


def test_tolerated_counts() -> None:
    assert tolerated("fedavg", 9, {}) == 0
    assert tolerated("median", 9, {}) == 4 and tolerated("median", 10, {}) == 4
    assert tolerated("trimmed_mean", 9, {"beta": 0.25}) == 2
    assert tolerated("krum", 9, {"f": 2, "m": 3}) == 2
    assert tolerated("geometric_median", 9, {}) == 4
    assert tolerated("centered_clipping", 8, {"tau": 1.0}) == 3
    assert tolerated("norm_bound", 9, {"multiple": 1.0}) == 4
    assert tolerated("norm_bound", 9, {"max_norm": 1.0}) == 0
