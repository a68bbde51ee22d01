"""Differential privacy: clipping, the accountant (checked against dp-accounting directly),
calibration, the budget stop, central and distributed noise, and the engine's secure
rounds (same result as plaintext; aborted below the survivors needed)."""

import math
from typing import Any

import dp_accounting
import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from zenfed.compress import CodecError, Pipeline
from zenfed.config import parse_config
from zenfed.coordinator import Coordinator
from zenfed.coordinator.engine import RoundAborted
from zenfed.errors import ZenfedError
from zenfed.participant.agent import masked_update
from zenfed.privacy import dp
from zenfed.privacy.secagg import SecAggAborted, SecAggClient
from zenfed.protocol import Update

INITIAL = {"a": torch.zeros(40, 50), "b": torch.zeros(100)}
IDS = [f"p{i}" for i in range(8)]


def _direct(q: float, z: float, rounds: int, delta: float, kind: str) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
    )
    acc = dp_accounting.rdp.RdpAccountant() if kind == "rdp" else dp_accounting.pld.PLDAccountant()
    return float(acc.compose(event).get_epsilon(delta))


@pytest.mark.parametrize(
    ("q", "z", "rounds", "delta", "kind"),
    [
        (0.01, 1.1, 1000, 1e-5, "rdp"),
        (0.1, 1.0, 60, 1e-6, "rdp"),
        (0.25, 2.0, 30, 1e-6, "rdp"),
        (1.0, 5.0, 10, 1e-5, "rdp"),
        (0.1, 1.0, 60, 1e-6, "pld"),
        (0.25, 2.0, 30, 1e-6, "pld"),
    ],
)
def test_reported_epsilon_equals_a_direct_dp_accounting_computation(
    q: float, z: float, rounds: int, delta: float, kind: str
) -> None:
    ours = dp.epsilon([(q, z)] * rounds, delta, kind)
    assert ours == pytest.approx(_direct(q, z, rounds, delta, kind), rel=1e-9)
    assert 0 < ours < float("inf")


def test_zero_rounds_spend_nothing_and_more_rounds_spend_more() -> None:
    assert dp.epsilon([], 1e-6) == 0.0
    assert dp.PrivacyLedger().spent(1e-6, "pld") == 0.0
    eps = [dp.epsilon([(0.1, 1.0)] * t, 1e-6) for t in (1, 10, 100)]
    assert eps[0] < eps[1] < eps[2]


def test_calibration_reaches_the_target_and_an_unreachable_target_is_refused() -> None:
    z = dp.calibrate_noise(3.0, 1e-6, 0.1, 60)
    assert dp.epsilon([(0.1, z)] * 60, 1e-6) <= 3.0
    assert dp.epsilon([(0.1, z * 0.97)] * 60, 1e-6) > 3.0  # and it is the smallest such z
    with pytest.raises(ZenfedError, match="out of reach"):
        dp.calibrate_noise(1e-4, 1e-12, 1.0, 10_000)
    with pytest.raises(ZenfedError, match="cannot calibrate"):
        dp.calibrate_noise(-1.0, 1e-6, 0.1, 10)


@settings(max_examples=50, deadline=None)
@given(
    st.floats(0.01, 100.0),
    st.floats(1e-3, 10.0),
    st.integers(0, 2**31 - 1),
)
def test_clipping_bounds_every_update_norm(scale: float, clip: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    t = {"a": torch.randn(7, 3, generator=g) * scale, "b": torch.randn(5, generator=g)}
    clipped, norm = dp.clip_l2(t, clip)
    assert dp.l2_norm(clipped) <= clip * (1 + 1e-5)
    assert norm == pytest.approx(dp.l2_norm(t))
    if norm <= clip:  # already inside: untouched
        assert all(torch.equal(clipped[k], t[k]) for k in t)


def test_adaptive_clipping_moves_towards_the_target_quantile() -> None:
    cfg = parse_config({"privacy": {"clip_norm": 1.0}}).privacy
    assert dp.next_clip_norm(cfg, 1.0, below_fraction=1.0) < 1.0  # all inside: shrink
    assert dp.next_clip_norm(cfg, 1.0, below_fraction=0.0) > 1.0  # all clipped: grow
    assert dp.next_clip_norm(cfg, 1.0, below_fraction=0.5) == 1.0


def _cfg(**sections: Any) -> Any:
    raw: dict[str, Any] = {"run": {"rounds": 3}, "data": {"categories": ["ai"]}}
    raw.update(sections)
    return parse_config(raw)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"privacy": {"clip_norm": 1.0, "noise_multiplier": 1.0}}, "Poisson sampling"),
        ({"privacy": {"noise_multiplier": 1.0}}, "needs privacy.clip_norm"),
        (
            {
                "sampling": {"method": "poisson"},
                "privacy": {"clip_norm": 1.0, "noise_multiplier": 1.0, "noise": "distributed"},
            },
            "secagg.enabled",
        ),
        ({"secagg": {"enabled": True}}, "clipping bound"),
        ({"secagg": {"enabled": True, "clip_norm": 1.0, "threshold": 0.3}}, "one half"),
    ],
)
def test_inconsistent_privacy_settings_are_refused(sections: Any, message: str) -> None:
    with pytest.raises(ZenfedError, match=message):
        _cfg(**sections)


def test_a_non_linear_codec_under_secure_aggregation_is_refused() -> None:
    cfg = _cfg(
        secagg={"enabled": True, "clip_norm": 1.0},
        compress={"pipeline": [{"codec": "sign"}]},
    )
    with pytest.raises(CodecError, match="'sign' is not linear"):
        Coordinator(cfg, INITIAL, {p: 10 for p in IDS})


def _update(c: Coordinator, pid: str, payload: bytes, n: int = 10) -> Update:
    info = c.open_round_info
    assert info is not None
    return Update(info[0], pid, c.version.id, payload, n, 8, 100, 1.0, 2.0, 1)


def _dense(c: Coordinator, tensors: dict[str, torch.Tensor]) -> bytes:
    return c.codec.to_bytes(c.codec.encode(tensors, shared_seed=0))


def test_the_budget_stops_training_with_a_clear_message() -> None:
    cfg = _cfg(
        sampling={"method": "poisson", "fraction": 0.9},
        privacy={"clip_norm": 1.0, "target_epsilon": 20.0},
        run={"rounds": 2},
    )
    c = Coordinator(cfg, INITIAL, {p: 10 for p in IDS})
    for _ in range(2):
        for t in c.open_round():
            c.submit(
                _update(c, t.participant, _dense(c, {k: v + 0.01 for k, v in INITIAL.items()}))
            )
        c.close_round()
    assert 0 < c.epsilon() <= 20.0
    assert c.version.metrics["epsilon"] == pytest.approx(c.epsilon())
    with pytest.raises(dp.PrivacyBudgetExceeded, match="budget 20"):
        c.open_round()


def test_central_noise_has_the_stated_stddev_and_updates_are_clipped_by_the_coordinator() -> None:
    cfg = _cfg(
        sampling={"method": "poisson", "fraction": 1.0},
        privacy={"clip_norm": 2.0, "noise_multiplier": 0.5},
    )
    c = Coordinator(cfg, INITIAL, {p: 10 for p in IDS})
    tasks = c.open_round()
    assert all(t.clip_norm == 2.0 and t.noise_std == 0.0 for t in tasks)
    big = {k: torch.full_like(v, 100.0) for k, v in INITIAL.items()}  # norm >> C
    for t in tasks:
        c.submit(_update(c, t.participant, _dense(c, big)))
    c.close_round()
    flat = torch.cat([v.reshape(-1) for v in c.state.params.values()])
    # mean = (8 clipped updates + N(0, (z C)^2)) / (q N = 8): the clipped signal
    # contributes C / sqrt(d) per coordinate, the noise z C / 8 = 0.125 stddev
    signal = 2.0 / flat.numel() ** 0.5
    assert float((flat - signal).std()) == pytest.approx(0.125, rel=0.05)
    assert float(flat.mean()) == pytest.approx(signal, abs=0.01)


def _secure_round(
    c: Coordinator, deltas: dict[str, dict[str, torch.Tensor]], drop: frozenset[str] = frozenset()
) -> None:
    """The four stages driven by hand, participants masking with the agent's own code."""
    sks = _KEYS
    tasks = c.open_round()
    assert c.current is not None and c.current.secure is not None
    srv = c.current.secure.server
    clients = {
        t.participant: SecAggClient(t.participant, t.secagg, sks[t.participant].sign) for t in tasks
    }
    for cl in clients.values():
        srv.receive_keys(cl.advertise())
    srv.close_stage()
    for p, cl in clients.items():
        srv.receive_shares(p, cl.share_keys(srv.keys_for(p), srv.verify_keys))
    srv.close_stage()
    for t in tasks:
        p = t.participant
        clients[p].receive_shares(srv.inbox(p))
        if p in drop:
            continue
        payload, _ = masked_update(clients[p], c.codec, t, deltas[p], {})
        c.submit(_update(c, p, payload))
    srv.close_stage()
    req = srv.unmask_request()
    for p in req.survivors:
        srv.receive_unmask(p, clients[p].unmask(req))


_KEYS = {p: Ed25519PrivateKey.generate() for p in IDS}
_VKS = {p: k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for p, k in _KEYS.items()}


@pytest.mark.parametrize("pipeline", [[], [{"codec": "randk", "fraction": 0.3}]])
def test_a_secure_round_gives_the_plaintext_round_s_result(pipeline: list[Any]) -> None:
    secure = _cfg(secagg={"enabled": True, "clip_norm": 50.0}, compress={"pipeline": pipeline})
    plain = _cfg(compress={"pipeline": pipeline})
    examples = {p: 10 * (i + 1) for i, p in enumerate(IDS)}
    g = torch.Generator().manual_seed(0)
    deltas = {
        p: {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in INITIAL.items()} for p in IDS
    }
    cs = Coordinator(secure, INITIAL, examples, verify_keys=_VKS)
    _secure_round(cs, deltas, drop=frozenset({"p3"}))
    v = cs.close_round()
    assert v.participants == tuple(p for p in IDS if p != "p3")
    cp = Coordinator(plain, INITIAL, examples)
    tasks = cp.open_round()
    for t in tasks:
        if t.participant != "p3":
            pc = cp.codec
            payload = pc.to_bytes(pc.encode(deltas[t.participant], shared_seed=t.codec_seed))
            cp.submit(_update(cp, t.participant, payload, n=examples[t.participant]))
    cp.close_round()
    for k in INITIAL:  # the example-weighted mean, up to fixed-point rounding
        torch.testing.assert_close(cs.state.params[k], cp.state.params[k], atol=1e-5, rtol=0)


def test_a_secure_round_below_the_survivors_needed_aborts_and_keeps_the_version() -> None:
    cfg = _cfg(secagg={"enabled": True, "clip_norm": 5.0, "min_survivors": 7})
    c = Coordinator(cfg, INITIAL, {p: 10 for p in IDS}, verify_keys=_VKS)
    before = c.version.id
    deltas = {p: {k: torch.ones_like(v) for k, v in INITIAL.items()} for p in IDS}
    with pytest.raises(SecAggAborted, match="2 needed|7 needed"):
        _secure_round(c, deltas, drop=frozenset({"p1", "p2"}))
    c.skip_round("aborted")
    assert c.version.id == before and c.state.round == 1 and c.open_round_info is None


@pytest.mark.parametrize(("noise", "std"), [("distributed", 8**0.5 / 8), ("central", 2 / 8)])
def test_secure_rounds_carry_the_stated_noise(noise: str, std: float) -> None:
    cfg = _cfg(
        sampling={"method": "poisson", "fraction": 1.0},
        privacy={"clip_norm": 1.0, "noise_multiplier": 2.0, "noise": noise},
        secagg={"enabled": True, "min_survivors": 4},
    )
    c = Coordinator(cfg, INITIAL, {p: 10 for p in IDS}, verify_keys=_VKS)
    tasks = c.open_round()
    # distributed: each adds stddev z C / sqrt(4), so any 4 survivors carry the full z C
    share = 1.0 if noise == "distributed" else 0.0
    assert all(t.noise_std == pytest.approx(share) and t.weight == 1.0 for t in tasks)
    c.abort_round()
    zero = {p: {k: torch.zeros_like(v) for k, v in INITIAL.items()} for p in IDS}
    c2 = Coordinator(cfg, INITIAL, {p: 10 for p in IDS}, verify_keys=_VKS)
    _secure_round(c2, zero)
    c2.close_round()
    flat = torch.cat([v.reshape(-1) for v in c2.state.params.values()])
    # distributed: 8 shares of stddev 1 over q N = 8; central: z C = 2 over 8
    assert float(flat.std()) == pytest.approx(std, rel=0.05)


def test_an_empty_poisson_cohort_aborts_the_round() -> None:
    cfg = _cfg(sampling={"method": "poisson", "fraction": 0.01})
    c = Coordinator(cfg, INITIAL, {"p0": 10})
    with pytest.raises(RoundAborted, match="no participant was drawn"):
        for _ in range(20):
            c.open_round()
            c.abort_round()
            c.state.round += 1


def test_pack_flat_clips_and_keeps_only_the_codec_error_as_residual() -> None:
    cfg = _cfg(compress={"pipeline": [{"codec": "randk", "fraction": 0.5}]})
    pipe = Pipeline(cfg.compress, {k: tuple(v.shape) for k, v in INITIAL.items()})
    x = {k: torch.ones_like(v) for k, v in INITIAL.items()}
    flat, residual, norm = pipe.pack_flat(x, {}, shared_seed=1, private_seed=2, clip_norm=3.0)
    assert len(flat) == pipe.flat_length() and np.linalg.norm(flat) == pytest.approx(3.0)
    unclipped, _, _ = pipe.pack_flat(x, {}, shared_seed=1, private_seed=2)
    assert norm == pytest.approx(float(np.linalg.norm(unclipped))) and norm > 3.0
    sent = pipe.decode(pipe.unflatten(unclipped), shared_seed=1)
    for k in x:  # the residual is the codec's error (what random-k did not send)
        torch.testing.assert_close(sent[k] + residual[k], x[k])
        assert float(residual[k].abs().sum()) > 0


@pytest.mark.parametrize("secure", [False, True])
def test_adaptive_clipping_counts_centred_bits_and_moves_the_bound(secure: bool) -> None:
    cfg = _cfg(
        privacy={"clip_norm": 1.0, "adaptive_clipping": True},
        secagg={"enabled": secure, "clip_norm": 1.0},
    )
    c = Coordinator(cfg, INITIAL, {p: 10 * (i + 1) for i, p in enumerate(IDS)}, verify_keys=_VKS)
    small = {p: {k: torch.full_like(v, 1e-4) for k, v in INITIAL.items()} for p in IDS}
    if secure:
        _secure_round(c, small)
    else:
        for t in c.open_round():
            c.submit(_update(c, t.participant, _dense(c, small[t.participant])))
    v = c.close_round()
    # every update inside the bound (no DP noise): the fraction is exactly 1, C shrinks
    assert v.metrics["below_clip_fraction"] == pytest.approx(1.0, abs=1e-6)
    assert c.state.privacy.clip_norm == pytest.approx(math.exp(-0.2 * 0.5))


def test_under_secure_aggregation_the_bound_holds_on_the_encoded_vector(tmp_path: Any) -> None:
    """A random-k 10 % subspace vector of a delta has about sqrt(0.1) of its norm: a bound
    between the two keeps the whole projection (the delta is not clipped before it is
    encoded), so the round equals one with a bound far above both."""
    from tests.conftest import tiny_config
    from zenfed.compress.downlink import full_payload
    from zenfed.protocol.messages import Task, root_version
    from zenfed.sim.runner import load_run, run_simulation
    from zenfed.sim.setup import build_world

    def cfg(clip: float) -> Any:
        return tiny_config(
            secagg={"enabled": True, "clip_norm": clip, "min_survivors": 2},
            compress={"pipeline": [{"codec": "randk", "fraction": 0.1}]},
            sampling={"fraction": 1.0},
            run={"rounds": 1, "seed": 0, "eval_every": 1000},
        )

    world = build_world(cfg(1.0))
    root = root_version(world.initial)
    name = sorted(world.participants)[0]
    task = Task(round=0, participant=name, version=root.id, seed=3)
    delta = world.participants[name].honest_delta(
        task, lambda v, h: full_payload(world.initial, root)
    )
    pipe = Pipeline(cfg(1.0).compress, {k: tuple(v.shape) for k, v in world.initial.items()})
    _, _, projected = pipe.pack_flat(delta, {}, shared_seed=1, private_seed=2)
    full = float(torch.sqrt(sum((v.double() ** 2).sum() for v in delta.values())))
    bound = math.sqrt(projected * full)  # the geometric middle: 1.8x from each
    assert 1.5 * projected < bound < full / 1.5
    params = []
    for clip in (bound, 10 * full):
        out = tmp_path / f"clip{clip:g}"
        run_simulation(cfg(clip), out, fresh=True, world=world)
        params.append(load_run(out)[0].params)
    for k, v in params[0].items():
        moved = params[1][k] - world.initial[k]
        torch.testing.assert_close(v - world.initial[k], moved, rtol=1e-3, atol=1e-6)
    assert max(float((p - world.initial[k]).abs().max()) for k, p in params[0].items()) > 0
