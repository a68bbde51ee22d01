"""SecAgg+: the secure sum equals the plaintext sum under dropouts at every stage; too few
survivors abort; masked uploads look uniform; Shamir needs exactly the threshold; every
message out of place is refused."""

import itertools
from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from scipy import stats

from zenfed.privacy.secagg import (
    STAGES,
    SecAggAborted,
    SecAggClient,
    SecAggError,
    SecAggServer,
    UnmaskRequest,
    fixedpoint,
    graph,
    shamir,
)
from zenfed.privacy.secagg.protocol import decode_sum, secure_buckets
from zenfed.transport.http import wire


def _identities(ids: list[str]) -> tuple[dict[str, Ed25519PrivateKey], dict[str, bytes]]:
    sks = {p: Ed25519PrivateKey.generate() for p in ids}
    vks = {p: k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for p, k in sks.items()}
    return sks, vks


def _run(
    n: int,
    d: int,
    drops: dict[str, set[str]],
    seed: int = 0,
    values: dict[str, np.ndarray] | None = None,
    degree: int | None = None,
    bucket: int | None = None,
) -> tuple[np.ndarray, tuple[str, ...], dict[str, np.ndarray], SecAggServer]:
    """One round of the protocol; ``drops[stage]`` stop answering at that stage."""
    ids = [f"p{i:03d}" for i in range(n)]
    sks, vks = _identities(ids)
    rng = np.random.default_rng(seed)
    x = values or {p: rng.uniform(-1, 1, d) for p in ids}
    buckets = secure_buckets(ids, bucket, seed) if bucket else None
    srv = SecAggServer(0, ids, vks, length=d, bound=1.0, seed=seed, degree=degree, buckets=buckets)
    cl = {p: SecAggClient(p, srv.setup_for(p), sks[p].sign) for p in ids}
    live = [p for p in ids if p not in drops.get("advertise_keys", set())]
    for p in live:
        srv.receive_keys(cl[p].advertise())
    srv.close_stage()
    live = [p for p in live if p not in drops.get("share_keys", set())]
    for p in live:
        srv.receive_shares(p, cl[p].share_keys(srv.keys_for(p), vks))
    srv.close_stage()
    live = [p for p in live if p not in drops.get("masked_input", set())]
    for p in live:
        cl[p].receive_shares(srv.inbox(p))
        srv.receive_masked(p, cl[p].mask(x[p]))
    srv.close_stage()
    req = srv.unmask_request()
    for p in req.survivors:
        if p not in drops.get("unmask", set()):
            srv.receive_unmask(p, cl[p].unmask(req))
    return decode_sum(srv.finish(), srv.scale), req.survivors, x, srv


def _keyed(ids: list[str], d: int) -> tuple[SecAggServer, dict[str, SecAggClient]]:
    """A round through stages 1 and 2 with nobody dropping."""
    sks, vks = _identities(ids)
    srv = SecAggServer(0, ids, vks, length=d, bound=1.0)
    cl = {p: SecAggClient(p, srv.setup_for(p), sks[p].sign) for p in ids}
    for p in ids:
        srv.receive_keys(cl[p].advertise())
    srv.close_stage()
    for p in ids:
        srv.receive_shares(p, cl[p].share_keys(srv.keys_for(p), vks))
    srv.close_stage()
    return srv, cl


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3])
def test_secure_sum_equals_plaintext_sum_under_dropout(stage: str, rate: float) -> None:
    n, d = 20, 500
    rng = np.random.default_rng(int(rate * 10) + STAGES.index(stage))
    dropped = {f"p{i:03d}" for i in rng.choice(n, int(rate * n), replace=False)}
    # degree 16, threshold 9: with 6 of 20 gone every secret keeps >= 10 share holders
    total, survivors, x, srv = _run(n, d, {stage: dropped}, seed=3, degree=16)
    assert set(srv.thresholds.values()) == {9}
    want = sum(x[p] for p in survivors)
    if stage == "unmask":  # they uploaded: their vectors are in the sum
        assert set(survivors) >= dropped
    else:
        assert not set(survivors) & dropped
    assert len(survivors) == n - (0 if stage == "unmask" else len(dropped))
    # fixed-point error: at most one step per summand
    assert np.max(np.abs(total - want)) <= len(survivors) / srv.scale


def test_dropouts_at_every_stage_together() -> None:
    drops = {"advertise_keys": {"p001"}, "share_keys": {"p004"}, "masked_input": {"p007"}}
    drops["unmask"] = {"p010", "p011"}
    total, survivors, x, srv = _run(16, 300, drops, seed=5, degree=12)  # t = 7
    assert set(survivors).isdisjoint({"p001", "p004", "p007"})
    assert np.max(np.abs(total - sum(x[p] for p in survivors))) <= 16 / srv.scale


def test_too_few_shares_at_unmask_aborts() -> None:
    n = 10
    everyone_but_two = {f"p{i:03d}" for i in range(2, n)}
    with pytest.raises(SecAggAborted, match="needed"):
        _run(n, 50, {"unmask": everyone_but_two})


def test_too_few_survivors_abort_at_the_stage_they_drop() -> None:
    ids = [f"p{i}" for i in range(4)]
    sks, vks = _identities(ids)
    srv = SecAggServer(0, ids, vks, length=8, bound=1.0, min_survivors=3)
    for p in ids[:2]:
        srv.receive_keys(SecAggClient(p, srv.setup_for(p), sks[p].sign).advertise())
    with pytest.raises(SecAggAborted, match="2 participants completed advertise_keys, 3 needed"):
        srv.close_stage()
    with pytest.raises(SecAggAborted, match="cannot be aggregated securely"):
        SecAggServer(0, ["a"], {}, length=8, bound=1.0)


def test_a_masked_upload_looks_uniform_and_the_unmasked_one_does_not() -> None:
    d = 65536
    srv, cl = _keyed(["a", "b", "c"], d)
    cl["a"].receive_shares(srv.inbox("a"))
    x = np.full(d, 0.25)  # a very structured input
    masked = cl["a"].mask(x)
    plain = fixedpoint.encode(x, srv.scale, np.random.default_rng(0), 1.0)
    for words, uniform in ((masked, True), (plain, False)):
        counts = np.bincount((words >> 24).astype(np.int64), minlength=256)  # top byte
        p = stats.chisquare(counts).pvalue
        assert (p > 1e-4) == uniform, p


def test_shamir_every_threshold_subset_reconstructs_and_fewer_do_not() -> None:
    secret = bytes(range(16))
    k, n = 3, 6
    shares = shamir.split(secret, k, n)
    for subset in itertools.combinations(shares, k):
        assert shamir.combine(list(subset), k) == secret
    for subset in itertools.combinations(shares, k - 1):
        with pytest.raises(shamir.ShamirError, match="2 distinct shares, 3 needed"):
            shamir.combine(list(subset), k)
        # and interpolating through too few points gives another value (or none at all)
        try:
            assert shamir.combine(list(subset), k - 1) != secret
        except shamir.ShamirError as e:
            assert "inconsistent" in e.problem


def test_forged_or_misplaced_messages_are_refused() -> None:
    ids = ["a", "b", "c", "d"]
    sks, vks = _identities(ids)
    srv = SecAggServer(0, ids, vks, length=8, bound=1.0)
    cl = {p: SecAggClient(p, srv.setup_for(p), sks[p].sign) for p in ids}
    forged = replace(cl["a"].advertise(), mask_key=bytes(32))
    with pytest.raises(SecAggError, match="not signed by its identity"):
        srv.receive_keys(forged)
    impostor = SecAggClient("a", srv.setup_for("a"), sks["b"].sign)  # b signs as a
    with pytest.raises(SecAggError, match="not signed"):
        srv.receive_keys(impostor.advertise())
    for p in ["a", "b", "c"]:  # d drops at stage 1
        srv.receive_keys(cl[p].advertise())
    with pytest.raises(SecAggError, match="advertised twice"):
        srv.receive_keys(cl["a"].advertise())
    with pytest.raises(SecAggError, match="while round 1 is in advertise_keys"):
        srv.receive_shares("a", {})
    srv.close_stage()
    with pytest.raises(SecAggError, match="'d' is not part of the share_keys stage"):
        srv.receive_shares("d", {})
    with pytest.raises(SecAggError, match="expected one for each"):
        srv.receive_shares("a", {"b": bytes(62)})
    for p in ["a", "b", "c"]:
        srv.receive_shares(p, cl[p].share_keys(srv.keys_for(p), vks))
    srv.close_stage()
    with pytest.raises(SecAggError, match="wrong shape"):
        srv.check_masked("a", np.zeros(7, np.uint32))
    for p in ["a", "b", "c"]:
        cl[p].receive_shares(srv.inbox(p))
        srv.receive_masked(p, cl[p].mask(np.zeros(8)))
    srv.close_stage()
    # a request naming someone both survivor and dropped would reveal both secrets
    with pytest.raises(SecAggError, match="both"):
        cl["a"].unmask(UnmaskRequest(0, ("a", "b", "c"), ("b",)))
    req = srv.unmask_request()
    srv.receive_unmask("a", cl["a"].unmask(req))
    with pytest.raises(SecAggError, match="already answered"):
        cl["a"].unmask(req)
    with pytest.raises(SecAggError, match="twice"):
        srv.receive_unmask("a", {})


def test_a_tampered_share_is_caught_as_inconsistent() -> None:
    ids = [f"p{i}" for i in range(5)]
    srv, cl = _keyed(ids, 8)
    for p in ids:
        cl[p].receive_shares(srv.inbox(p))
        srv.receive_masked(p, cl[p].mask(np.zeros(8)))
    srv.close_stage()
    req = srv.unmask_request()
    for p in ids:
        shares = cl[p].unmask(req)
        liar = p in ("p0", "p1")  # 2 of each secret's 4 holders lie; 3 shares are needed
        srv.receive_unmask(p, {k: bytes(17) for k in shares} if liar else shares)
    with pytest.raises(SecAggAborted, match="inconsistent shares"):
        srv.finish()


def test_fixed_point_sums_at_the_bound_do_not_overflow_and_round_unbiased() -> None:
    n, bound = 50, 2.0
    scale = fixedpoint.scale_for(bound, n)
    rng = np.random.default_rng(0)
    for sign in (1.0, -1.0):
        words = [fixedpoint.encode(np.full(4, sign * bound), scale, rng, bound) for _ in range(n)]
        total = np.zeros(4, np.uint32)
        for w in words:
            total += w
        np.testing.assert_allclose(fixedpoint.decode(total, scale), sign * bound * n, rtol=1e-6)
    x = np.full(20000, 0.3 / scale)  # a third of a step: rounds to 0 or 1 step
    mean = fixedpoint.decode(fixedpoint.encode(x, scale, rng, bound), scale).mean()
    assert abs(mean * scale - 0.3) < 0.02


def test_the_graph_is_regular_symmetric_and_logarithmic() -> None:
    ids = [f"p{i:03d}" for i in range(100)]
    g = graph.neighbours(ids, None, seed=1)
    degrees = {len(v) for v in g.values()}
    assert degrees == {graph.default_degree(100)} and graph.default_degree(100) == 21
    assert all(u in g[v] for u in ids for v in g[u])
    small = graph.neighbours(["a", "b", "c"], None, seed=1)
    assert small == {"a": ("b", "c"), "b": ("a", "c"), "c": ("a", "b")}


def test_unusable_keys_bad_ciphertexts_and_weak_thresholds_are_refused() -> None:
    ids = ["a", "b", "c"]
    sks, vks = _identities(ids)
    srv = SecAggServer(0, ids, vks, length=8, bound=1.0)
    weak = replace(srv.setup_for("a"), threshold=1, neighbours=("b", "c", "d", "e"))
    with pytest.raises(SecAggError, match="both secrets"):
        SecAggClient("a", weak, sks["a"].sign)
    # a low-order X25519 point would make every neighbour's key agreement fail
    bad = SecAggClient("a", srv.setup_for("a"), sks["a"].sign)
    unsigned = replace(bad.advertise(), cipher_key=bytes(32), signature=b"")
    forged = replace(unsigned, signature=sks["a"].sign(unsigned.signed_bytes(0)))
    with pytest.raises(SecAggError, match="unusable X25519 key"):
        srv.receive_keys(forged)
    cl = {p: SecAggClient(p, srv.setup_for(p), sks[p].sign) for p in ids}
    for p in ids:
        srv.receive_keys(cl[p].advertise())
    srv.close_stage()
    good = cl["a"].share_keys(srv.keys_for("a"), vks)
    with pytest.raises(SecAggError, match="not 62 bytes"):
        srv.receive_shares("a", {k: v + b"x" for k, v in good.items()})
    with pytest.raises(SecAggError, match="malformed"):
        wire.task_from_json({"round": 0, "participant": "a", "version": "v", "secagg": {}})
    with pytest.raises(SecAggError, match="malformed"):
        wire.stage_input_from_json("unmask", {"round": "x", "survivors": [], "dropped": []})


def test_a_bad_share_is_skipped_when_enough_good_ones_remain() -> None:
    total, survivors, x, srv = _run(8, 40, {}, seed=2, degree=7)  # t = 4 of 7 holders
    assert np.max(np.abs(total - sum(x[p] for p in survivors))) <= 8 / srv.scale
    first = next(iter(srv.responses))
    srv.responses[first] = {k: bytes(17) for k in srv.responses[first]}  # one liar
    again = decode_sum(srv.finish(), srv.scale)
    assert np.max(np.abs(again - total)) == 0.0


def test_bucketed_rounds_reveal_each_bucket_sum_and_nothing_finer() -> None:
    n, d = 9, 40
    drops = {"masked_input": {"p004"}}
    total, survivors, x, srv = _run(n, d, drops, seed=3, bucket=2)
    sizes = sorted(len(b) for b in srv.buckets)
    assert sizes == [2, 2, 2, 3]  # floor(9 / 2) buckets, none of one member
    assert all(set(srv.graph[p]) == set(b) - {p} for b in srv.buckets for p in b)
    lone = next(b for b in srv.buckets if "p004" in b)
    revealed = srv.finish_buckets()
    for alive, words in revealed:
        assert len(alive) >= 2
        expect = sum(x[p] for p in alive)
        assert np.allclose(decode_sum(words, srv.scale), expect, atol=1e-6)
    if len(lone) == 2:  # its partner is alone: its input is not revealed, nor counted
        partner = next(p for p in lone if p != "p004")
        assert partner not in survivors
        assert all(partner not in alive for alive, _ in revealed)
    assert np.allclose(total, sum(x[p] for p in survivors), atol=1e-6)


def test_secure_buckets_refuse_a_size_that_would_reveal_one_input() -> None:
    with pytest.raises(SecAggAborted, match="buckets of 1"):
        secure_buckets(["a", "b", "c"], 1, 0)
    with pytest.raises(SecAggAborted, match="cannot form secure buckets of 4"):
        secure_buckets(["a", "b", "c"], 4, 0)
    _, vks = _identities(["a", "b", "c"])
    with pytest.raises(SecAggError, match="partition the cohort"):
        SecAggServer(0, ["a", "b", "c"], vks, length=2, bound=1.0, buckets=[["a", "b"], ["c"]])
