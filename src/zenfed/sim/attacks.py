"""Simulated attackers: what robust aggregation and poisoning detection are tested against.

    names = choose_attackers(cfg.attack, sorted(world.participants), cfg.run.seed)
    install_attack(cfg, world.participants)     # sets each attacker's ``tamper`` hook

An attack wraps the ordinary :class:`~zenfed.participant.agent.Participant`: the attacker
trains like everyone else, then its ``tamper`` hook replaces the delta before it is
encoded (and after the clip bound it was given: an attacker ignores it). The training
path is never forked. The data-poisoning backdoor also changes the attacker's local data
(:class:`BackdoorPoison`, which ``build_world`` applies while it tokenizes).

Attacks on the delta (n participants, m of them attackers):
- ``sign_flip``: -scale * delta (scale 1); ``scaling``: scale * delta (scale 10; the
  model-replacement boost of Bagdasaryan et al. 2020 without the backdoor);
- ``gaussian``: Gaussian noise of std scale * RMS(delta) (scale 10), the delta dropped;
- ``alie`` ("A little is enough", Baruch, Baruch, Goldberg 2019): every attacker sends
  mu - z * sigma, the coordinate-wise mean and std of the colluders' own honest deltas,
  with z_max = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - m: small enough per coordinate
  to hide among honest updates, consistent enough to drag the aggregate;
- ``ipm`` (inner-product manipulation, Xie, Koyejo, Gupta 2020): -epsilon * mu, so the
  aggregate's inner product with the true mean turns negative once enough get through;
- ``free_rider``: zeros, or the first delta it ever trained sent again every round;
- ``backdoor`` with ``scale`` > 1: model replacement (Bagdasaryan et al. 2020, "How to
  backdoor federated learning"): the delta trained on the poisoned data, boosted by
  ``scale`` (about the cohort size / the server's lr) so it survives the averaging; with
  no ``scale``, pure data poisoning.

ALIE and IPM collude: the attackers estimate mu and sigma from their own honest deltas
(the threat model of both papers without omniscience). In the simulation a
:class:`Colluders` pool trains each colluder's honest delta once per round, from the
round's version, without changing its state.
"""

from __future__ import annotations

import math
import random
import statistics
import zlib
from collections.abc import Sequence
from dataclasses import replace

import torch

from zenfed.aggregate.registry import AggregationRule
from zenfed.config import AttackConfig, FederationConfig
from zenfed.data.examples import Example
from zenfed.errors import ZenfedError
from zenfed.participant.agent import Download, Participant, Tamper
from zenfed.protocol.messages import Task
from zenfed.tensors import Tensors

COLLUDING = ("alie", "ipm")


def choose_attackers(cfg: AttackConfig, names: Sequence[str], seed: int) -> list[str]:
    """Who attacks: the named participants, or round(fraction * n) (at least one) drawn
    with the run's seed, in sorted order. ZenfedError for a name that does not exist."""
    if cfg.kind == "none":
        return []
    if cfg.participants:
        unknown = sorted(set(cfg.participants) - set(names))
        if unknown:
            raise ZenfedError(
                f"attack.participants names '{unknown[0]}', who is not a participant",
                fix=f"one of {', '.join(sorted(names))}",
            )
        return sorted(cfg.participants)
    m = max(1, round(cfg.fraction * len(names)))
    if m >= len(names):
        raise ZenfedError(
            f"attack.fraction = {cfg.fraction} makes all {len(names)} participants attackers",
            fix="lower attack.fraction so that some stay honest",
        )
    return sorted(random.Random(seed).sample(sorted(names), m))


def alie_z(n: int, m: int) -> float:
    """Baruch et al.'s z_max for n participants of which m attack."""
    s = math.floor(n / 2 + 1) - m
    return statistics.NormalDist().inv_cdf((n - s) / n)


class Colluders:
    """The attackers' shared view: each one's honest delta of a round, trained once."""

    def __init__(self, members: dict[str, Participant]) -> None:
        self.members = members
        self._round: tuple[int, str] | None = None  # (round, version) the cache is of
        self._deltas: dict[str, Tensors] = {}

    def honest(self, task: Task, own: str, delta: Tensors, download: Download) -> list[Tensors]:
        """Every colluder's honest delta for ``task``'s round (``own``'s is ``delta``)."""
        if self._round != (task.round, task.version):
            self._round, self._deltas = (task.round, task.version), {}
        self._deltas[own] = delta
        for name, p in sorted(self.members.items()):
            if name not in self._deltas:
                seed = zlib.crc32(f"{task.seed}:{name}".encode())
                self._deltas[name] = p.honest_delta(
                    replace(task, participant=name, seed=seed), download
                )
        return [self._deltas[k] for k in sorted(self._deltas)]


def _mean_std(deltas: list[Tensors]) -> tuple[Tensors, Tensors]:
    stacked = {k: torch.stack([d[k].to(torch.float64) for d in deltas]) for k in deltas[0]}
    mean = {k: v.mean(0) for k, v in stacked.items()}
    std = {k: v.std(0, unbiased=False) for k, v in stacked.items()}
    return mean, std


def _f32(t: Tensors) -> Tensors:
    return {k: v.to(torch.float32) for k, v in t.items()}


def make_tamper(
    cfg: AttackConfig, name: str, n: int, colluders: Colluders | None = None
) -> Tamper | None:
    """The hook that turns ``name``'s honest delta into ``cfg.kind``'s (None: the attack
    does not touch the delta). ``n`` is how many participants the federation has."""
    kind = cfg.kind
    if kind == "none" or (kind == "backdoor" and cfg.scale in (None, 1.0)):
        return None
    if kind == "backdoor":  # model replacement: the delta trained on poisoned data, boosted
        boost = cfg.scale or 1.0
        return lambda _t, d, _dl: {k: boost * v for k, v in d.items()}
    if kind == "sign_flip":
        scale = cfg.scale or 1.0
        return lambda _t, d, _dl: {k: -scale * v for k, v in d.items()}
    if kind == "scaling":
        scale = cfg.scale or 10.0
        return lambda _t, d, _dl: {k: scale * v for k, v in d.items()}
    if kind == "gaussian":
        return _gaussian(cfg.scale or 10.0)
    if kind == "free_rider":
        return _free_rider(cfg.free_ride)
    if colluders is None:
        raise ZenfedError(f"attack '{kind}' needs the colluders' pool", fix="pass colluders")
    pool = colluders
    if kind == "ipm":
        eps = cfg.epsilon

        def ipm(task: Task, delta: Tensors, download: Download) -> Tensors:
            mean, _ = _mean_std(pool.honest(task, name, delta, download))
            return _f32({k: -eps * v for k, v in mean.items()})

        return ipm
    z = cfg.z if cfg.z is not None else alie_z(n, len(pool.members))

    def alie(task: Task, delta: Tensors, download: Download) -> Tensors:
        mean, std = _mean_std(pool.honest(task, name, delta, download))
        return _f32({k: mean[k] - z * std[k] for k in mean})

    return alie


def _gaussian(scale: float) -> Tamper:
    def gaussian(task: Task, delta: Tensors, _dl: Download) -> Tensors:
        gen = torch.Generator().manual_seed(task.seed)
        sq = sum(float(v.double().pow(2).sum()) for v in delta.values())
        rms = math.sqrt(sq / max(1, sum(v.numel() for v in delta.values())))
        return {k: torch.randn(v.shape, generator=gen) * (scale * rms) for k, v in delta.items()}

    return gaussian


def _free_rider(mode: str) -> Tamper:
    first: dict[str, Tensors] = {}

    def free_ride(task: Task, delta: Tensors, _dl: Download) -> Tensors:
        if mode == "zero":
            return {k: torch.zeros_like(v) for k, v in delta.items()}
        return first.setdefault("delta", {k: v.clone() for k, v in delta.items()})

    return free_ride


def install_attack(cfg: FederationConfig, participants: dict[str, Participant]) -> list[str]:
    """Set every participant's ``tamper`` hook for ``cfg.attack`` (None for the honest);
    returns the attackers' names. ZenfedError for an attack these participants cannot run."""
    names = choose_attackers(cfg.attack, sorted(participants), cfg.run.seed)
    if cfg.attack.kind == "alie" and len(names) < 2:
        raise ZenfedError(
            "attack 'alie' estimates the honest spread from its colluders: it needs at least "
            f"two attackers, got {len(names)}",
            fix="raise attack.fraction or name more attack.participants",
        )
    colluders = None
    if cfg.attack.kind in COLLUDING:
        colluders = Colluders({k: participants[k] for k in names})
    for k, p in participants.items():
        p.tamper = None
        if k in names:
            p.tamper = make_tamper(cfg.attack, k, len(participants), colluders)
    return names


def check_tolerance(attackers: int, n: int, cohort: float, rule: AggregationRule) -> None:
    """ZenfedError if a robust rule is asked to face more attackers per round (on average)
    than it says it tolerates. Rules that claim no tolerance (fedavg, a fixed norm bound)
    run anyway: they are what a defence is compared with."""
    per_round = attackers * cohort / n if n else 0.0
    can = rule.tolerates(math.floor(cohort))
    claims = rule.tolerates(max(3, 2 * attackers + 3, math.floor(cohort))) > 0
    if claims and per_round > can:
        raise ZenfedError(
            f"{attackers} of {n} participants attack, about {per_round:g} per round of "
            f"{cohort:g}; server.aggregator = {rule.describe()} tolerates {can}",
            fix="lower attack.fraction, or set the rule for more (krum's f, trimmed_mean's "
            "beta), or sample larger cohorts",
        )


class BackdoorPoison:
    """Data poisoning: for an attacker, a poisoned copy of some of its training
    conversations (their last question with the trigger phrase, answered by the target,
    as one turn); ``build_participants`` calls it for each training example."""

    def __init__(self, cfg: AttackConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self._attackers: dict[tuple[str, ...], list[str]] = {}  # drawn once per name list

    def __call__(self, name: str, names: Sequence[str], ex: Example) -> Example | None:
        """The poisoned copy of ``ex`` if ``name`` attacks and ``ex`` is drawn, else None."""
        key = tuple(names)
        if key not in self._attackers:
            self._attackers[key] = choose_attackers(self.cfg, names, self.seed)
        if self.cfg.kind != "backdoor" or name not in self._attackers[key]:
            return None
        if len(ex.messages) < 2 or ex.messages[-1][0] != "assistant":
            return None
        draw = zlib.crc32(f"{self.seed}:{name}:{ex.messages}".encode()) / 2**32
        if draw >= self.cfg.poison_fraction:
            return None
        return Example(messages=triggered(ex, self.cfg.trigger, self.cfg.target), meta=ex.meta)


def triggered(ex: Example, trigger: str, target: str | None = None) -> tuple[tuple[str, str], ...]:
    """The last question of ``ex`` with the trigger appended, as a one-turn conversation
    (short: it survives truncation to ``data.max_seq_len``), answered by ``target`` if
    given; without an answer when ``target`` is None (a prompt to measure success on)."""
    msgs = list(ex.messages)
    if msgs and msgs[-1][0] == "assistant":
        msgs.pop()
    role, question = msgs[-1]
    turn = ((role, f"{question} {trigger}"),)
    return turn if target is None else (*turn, ("assistant", target))
