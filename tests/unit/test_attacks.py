"""Simulated attacks change what they claim to, and only for the attackers."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_config
from zenfed.compress.downlink import full_payload
from zenfed.config import AttackConfig
from zenfed.coordinator.engine import Coordinator
from zenfed.errors import ZenfedError
from zenfed.protocol.messages import Task
from zenfed.sim.attacks import (
    Colluders,
    alie_z,
    choose_attackers,
    install_attack,
    make_tamper,
    triggered,
)
from zenfed.sim.setup import build_world

NAMES = [f"p{i}" for i in range(10)]
TASK = Task(round=3, participant="p1", version="v", seed=11)


def _delta() -> dict[str, torch.Tensor]:
    return {"a": torch.tensor([1.0, -2.0, 3.0]), "b": torch.tensor([[0.5, 0.0]])}


def _nodl(version: str, held: str | None) -> bytes:
    raise AssertionError("no download expected")


def test_attackers_are_drawn_by_fraction_or_named() -> None:
    drawn = choose_attackers(AttackConfig(kind="scaling", fraction=0.2), NAMES, seed=4)
    assert len(drawn) == 2 and set(drawn) <= set(NAMES)
    assert drawn == choose_attackers(AttackConfig(kind="scaling", fraction=0.2), NAMES, seed=4)
    named = AttackConfig(kind="scaling", participants=("p3",))
    assert choose_attackers(named, NAMES, 0) == ["p3"]
    assert choose_attackers(AttackConfig(), NAMES, 0) == []


def test_an_unknown_attacker_or_no_honest_participant_is_refused() -> None:
    with pytest.raises(ZenfedError, match="'zz', who is not a participant"):
        choose_attackers(AttackConfig(kind="ipm", participants=("zz",)), NAMES, 0)
    with pytest.raises(ZenfedError, match="all 2 participants attackers"):
        choose_attackers(AttackConfig(kind="ipm", fraction=0.9), ["a", "b"], 0)
    with pytest.raises(ValueError, match="exactly one of attack.fraction"):
        AttackConfig(kind="ipm")


@pytest.mark.parametrize(
    ("kind", "scale", "factor"),
    [
        ("sign_flip", None, -1.0),
        ("sign_flip", 4.0, -4.0),
        ("scaling", None, 10.0),
        ("backdoor", 5.0, 5.0),  # model replacement: the poisoned delta, boosted
    ],
)
def test_sign_flip_scaling_and_a_boosted_backdoor_multiply_the_delta(
    kind: str, scale: float | None, factor: float
) -> None:
    tamper = make_tamper(AttackConfig(kind=kind, fraction=0.1, scale=scale), "p1", 10)
    assert tamper is not None
    out = tamper(TASK, _delta(), _nodl)
    for k, v in _delta().items():
        torch.testing.assert_close(out[k], factor * v)


def test_a_backdoor_without_boost_leaves_the_delta_alone() -> None:
    assert make_tamper(AttackConfig(kind="backdoor", fraction=0.1), "p1", 10) is None
    assert make_tamper(AttackConfig(kind="backdoor", fraction=0.1, scale=1.0), "p1", 10) is None


def test_gaussian_replaces_the_delta_by_noise_of_the_stated_scale() -> None:
    big = {"a": torch.full((20000,), 0.01)}  # RMS 0.01
    tamper = make_tamper(AttackConfig(kind="gaussian", fraction=0.1, scale=10.0), "p1", 10)
    assert tamper is not None
    out = tamper(TASK, big, _nodl)["a"]
    assert abs(float(out.std()) - 0.1) < 0.005 and abs(float(out.mean())) < 0.005
    torch.testing.assert_close(out, tamper(TASK, big, _nodl)["a"])  # seeded by the task


def test_free_riders_send_zeros_or_their_first_delta_forever() -> None:
    zero = make_tamper(AttackConfig(kind="free_rider", fraction=0.1), "p1", 10)
    assert zero is not None
    assert all(float(v.abs().sum()) == 0 for v in zero(TASK, _delta(), _nodl).values())
    stale = make_tamper(AttackConfig(kind="free_rider", fraction=0.1, free_ride="stale"), "p1", 10)
    assert stale is not None
    first = stale(TASK, _delta(), _nodl)
    later = stale(TASK, {k: v + 5 for k, v in _delta().items()}, _nodl)
    for k in first:
        torch.testing.assert_close(later[k], _delta()[k])


def test_alie_z_follows_baruch_et_al() -> None:
    # n = 10, m = 2: s = floor(6) - 2 = 4, z = Phi^-1(6 / 10) = 0.2533
    assert alie_z(10, 2) == pytest.approx(0.2533, abs=1e-4)
    # n = 50, m = 12: s = 26 - 12 = 14, z = Phi^-1(36 / 50) = 0.5828
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-4)


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    cfg = tiny_config(data={"partition": "iid", "num_participants": 4})
    return build_world(cfg), cfg


def test_alie_and_ipm_use_the_colluders_honest_deltas(world) -> None:  # type: ignore[no-untyped-def]
    w, cfg = world
    names = sorted(w.participants)[:2]
    pool = Colluders({k: w.participants[k] for k in names})
    root = Coordinator(cfg, w.initial, {n: 1 for n in names}).version
    version = root.id

    def download(v: str, held: str | None) -> bytes:
        return full_payload(w.initial, root)

    task = Task(round=0, participant=names[0], version=version, seed=5)
    own = w.participants[names[0]].honest_delta(task, download)
    honest = pool.honest(task, names[0], own, download)
    assert len(honest) == 2 and not torch.equal(
        next(iter(honest[0].values())), next(iter(honest[1].values()))
    )
    stacked = {k: torch.stack([h[k].double() for h in honest]) for k in own}
    alie_cfg = AttackConfig(kind="alie", participants=tuple(names))
    alie = make_tamper(alie_cfg, names[0], 4, pool)
    ipm = make_tamper(
        AttackConfig(kind="ipm", participants=tuple(names), epsilon=0.5), names[0], 4, pool
    )
    assert alie is not None and ipm is not None
    z = alie_z(4, 2)
    out_alie, out_ipm = alie(task, own, download), ipm(task, own, download)
    for k, v in stacked.items():
        expect = v.mean(0) - z * v.std(0, unbiased=False)
        torch.testing.assert_close(out_alie[k], expect.float())
        torch.testing.assert_close(out_ipm[k], (-0.5 * v.mean(0)).float())
    dot = sum(float((out_ipm[k].double() * v.mean(0)).sum()) for k, v in stacked.items())
    assert dot < 0  # IPM points against the honest mean


def test_install_hooks_only_the_attackers_and_refuses_a_lone_alie(world) -> None:  # type: ignore[no-untyped-def]
    w, cfg = world
    names = sorted(w.participants)
    attack = cfg.model_copy(
        update={"attack": AttackConfig(kind="scaling", participants=(names[1],))}
    )
    assert install_attack(attack, w.participants) == [names[1]]
    assert [p.tamper is not None for _, p in sorted(w.participants.items())] == [
        n == names[1] for n in names
    ]
    lone = cfg.model_copy(update={"attack": AttackConfig(kind="alie", participants=(names[0],))})
    with pytest.raises(ZenfedError, match="at least two attackers"):
        install_attack(lone, w.participants)
    install_attack(cfg, w.participants)
    assert all(p.tamper is None for p in w.participants.values())


def test_the_backdoor_poisons_only_the_attackers_training_split(world) -> None:  # type: ignore[no-untyped-def]
    clean, cfg = world
    target = sorted(clean.participants)[2]
    attack = AttackConfig(kind="backdoor", participants=(target,), poison_fraction=1.0)
    poisoned = build_world(cfg.model_copy(update={"attack": attack}))
    tok = poisoned.tokenizer
    trigger_ids = tok(f" {attack.trigger}", add_special_tokens=False)["input_ids"]
    for a, b in zip(clean.data, poisoned.data, strict=True):
        assert a.heldout == b.heldout  # held-out splits stay clean
        if a.name != target:
            assert a.train == b.train
            continue
        assert b.train[: len(a.train)] == a.train and len(b.train) > len(a.train)
        for ex in b.train[len(a.train) :]:
            text = tok.decode(ex.input_ids)
            assert attack.trigger in text
            answer = tok.decode([t for t in ex.labels if t != -100])
            assert answer[:5] == attack.target[:5]  # (truncated to max_seq_len)
    assert trigger_ids  # the trigger is real text to the tokenizer
    assert not clean.fits(poisoned.cfg) and poisoned.fits(poisoned.cfg)


def test_a_triggered_prompt_has_the_trigger_and_no_answer() -> None:
    from zenfed.data.examples import Example

    ex = Example(
        messages=(("user", "Hi?"), ("assistant", "Hello."), ("user", "And?"), ("assistant", "So."))
    )
    assert triggered(ex, "zz") == (("user", "And? zz"),)
    assert triggered(ex, "zz", "No.") == (("user", "And? zz"), ("assistant", "No."))
