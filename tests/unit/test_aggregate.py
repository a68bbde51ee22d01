import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zenfed.aggregate import ServerOptState, StreamingMean, fedavg, server_step
from zenfed.config import ServerConfig


def _t(*vals: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(vals, dtype=torch.float32)}


def test_fedavg_of_identical_updates_is_that_update() -> None:
    u = {"a": torch.randn(3, 4), "b": torch.randn(5)}
    out = fedavg([u, u, u], [1.0, 7.0, 100.0])
    for k in u:
        torch.testing.assert_close(out[k], u[k])


def test_fedavg_weights_by_examples_exactly() -> None:
    out = fedavg([_t(1.0, 0.0), _t(4.0, 8.0)], [30.0, 10.0])
    # (30 * 1 + 10 * 4) / 40 = 1.75; (0 + 80) / 40 = 2
    torch.testing.assert_close(out["w"], torch.tensor([1.75, 2.0]))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-10, 10), st.integers(1, 1000)), min_size=1, max_size=8),
    st.randoms(),
)
def test_fedavg_is_permutation_invariant(items: list[tuple[float, int]], rnd: object) -> None:
    updates = [_t(v, -v) for v, _ in items]
    weights = [float(w) for _, w in items]
    order = list(range(len(items)))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    a = fedavg(updates, weights)
    b = fedavg([updates[i] for i in order], [weights[i] for i in order])
    torch.testing.assert_close(a["w"], b["w"])


def test_weighted_mean_rejects_non_positive_weights() -> None:
    import pytest

    from zenfed.errors import ZenfedError

    acc = StreamingMean()
    with pytest.raises(ZenfedError, match="positive"):
        acc.add("a", _t(1.0), 0.0)
    with pytest.raises(ZenfedError, match="no updates"):
        acc.result()


X = _t(1.0, -2.0)
D1 = _t(0.5, 0.25)  # mean delta of round 1, so g1 = (-0.5, -0.25)
D2 = _t(-1.0, 0.5)  # g2 = (1.0, -0.5)


def _two_steps(cfg: ServerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    x1, s1 = server_step(cfg, X, D1, ServerOptState())
    x2, _ = server_step(cfg, x1, D2, s1)
    return x1["w"], x2["w"]


def test_fedavg_server_step_with_lr_one_is_plain_averaging() -> None:
    x1, x2 = _two_steps(ServerConfig(optimizer="fedavg", lr=1.0))
    torch.testing.assert_close(x1, torch.tensor([1.5, -1.75]))
    torch.testing.assert_close(x2, torch.tensor([0.5, -1.25]))


def test_fedavgm_matches_hand_computed_steps() -> None:
    x1, x2 = _two_steps(ServerConfig(optimizer="fedavgm", lr=0.5, momentum=0.9))
    # m1 = g1 = (-0.5, -0.25); x1 = x - 0.5 m1 = (1.25, -1.875)
    torch.testing.assert_close(x1, torch.tensor([1.25, -1.875]))
    # m2 = 0.9 m1 + g2 = (0.55, -0.725); x2 = x1 - 0.5 m2 = (0.975, -1.5125)
    torch.testing.assert_close(x2, torch.tensor([0.975, -1.5125]))


def test_nesterov_matches_hand_computed_steps() -> None:
    x1, x2 = _two_steps(ServerConfig(optimizer="nesterov", lr=0.7, momentum=0.9))
    # m1 = g1; step = g1 + 0.9 m1 = 1.9 g1 = (-0.95, -0.475); x1 = x - 0.7 step
    torch.testing.assert_close(x1, torch.tensor([1.665, -1.6675]))
    # m2 = (0.55, -0.725); step = g2 + 0.9 m2 = (1.495, -1.1525); x2 = x1 - 0.7 step
    torch.testing.assert_close(x2, torch.tensor([1.665 - 1.0465, -1.6675 + 0.80675]))


def test_fedadam_matches_hand_computed_step() -> None:
    cfg = ServerConfig(optimizer="fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    x1, _ = server_step(cfg, X, D1, ServerOptState())
    g = torch.tensor([-0.5, -0.25])
    m, v = 0.1 * g, 0.01 * g**2
    torch.testing.assert_close(x1["w"], X["w"] - 0.1 * m / (v.sqrt() + 1e-3))


def test_fedyogi_matches_hand_computed_steps() -> None:
    cfg = ServerConfig(optimizer="fedyogi", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    x1, s1 = server_step(cfg, X, D1, ServerOptState())
    x2, _ = server_step(cfg, x1, D2, s1)
    g1, g2 = torch.tensor([-0.5, -0.25]), torch.tensor([1.0, -0.5])
    m1 = 0.1 * g1
    v1 = -(0.01) * g1**2 * torch.sign(-(g1**2))  # from v0 = 0
    m2 = 0.9 * m1 + 0.1 * g2
    v2 = v1 - 0.01 * g2**2 * torch.sign(v1 - g2**2)
    expected = X["w"] - 0.1 * m1 / (v1.sqrt() + 1e-3) - 0.1 * m2 / (v2.sqrt() + 1e-3)
    torch.testing.assert_close(x2["w"], expected)
    assert not torch.allclose(v2, 0.99 * v1 + 0.01 * g2**2)  # differs from Adam's v


def test_server_step_does_not_mutate_its_inputs() -> None:
    x = {"w": torch.tensor([1.0, 2.0])}
    d = {"w": torch.tensor([0.5, 0.5])}
    st0 = ServerOptState()
    x_new, s_new = server_step(ServerConfig(optimizer="fedavgm"), x, d, st0)
    torch.testing.assert_close(x["w"], torch.tensor([1.0, 2.0]))
    assert st0.m == {} and s_new.step == 1 and x_new["w"] is not x["w"]
