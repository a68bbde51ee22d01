"""The strategy: which participants train in a round and with what settings.

    tasks = strategy.configure(server_round=3, members={"id-a": "a", "id-b": "b"}, version=v)

Client sampling takes ``ceil(fraction * n)`` participants, never fewer than
``min_participants`` (nor more than there are), or, with ``sampling.method = "poisson"``,
each participant independently with probability ``fraction`` (the cohort may be empty),
or, with ``"epochs"``, each participant in one round of each pass of ceil(1 / fraction);
drawn by a generator seeded with the run's seed and the round, over the participants in
the order of their names, so a resumed run samples the same cohorts and a simulation and
a deployment of the same participants (their ids differ, their names do not) sample and
seed them alike. Each round also gets one
``codec_seed`` that every task shares: codecs that must pick the same coordinates on every
participant (random-k, count sketch) draw them from it.
"""

from __future__ import annotations

import math
import secrets
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from zenfed.config import FederationConfig
from zenfed.errors import ZenfedError
from zenfed.protocol.messages import Task


def fixed_cohort_size(n: int, fraction: float, minimum: int) -> int:
    """``max(minimum, ceil(fraction * n))``, at most n: the cohort of fixed sampling."""
    return min(n, max(minimum, math.ceil(fraction * n)))


def sample_participants(
    participants: Sequence[str], fraction: float, minimum: int, rng: np.random.Generator
) -> list[str]:
    """A random cohort of ``max(minimum, ceil(fraction * n))`` participants (at most n)."""
    n = len(participants)
    if n == 0:
        raise ZenfedError("no participants are enrolled", fix="enroll at least one participant")
    chosen = rng.choice(n, size=fixed_cohort_size(n, fraction, minimum), replace=False)
    return [participants[i] for i in sorted(chosen.tolist())]


class Strategy:
    """Round configuration for synchronous FedAvg-family training."""

    def __init__(self, cfg: FederationConfig) -> None:
        self.cfg = cfg

    def cohort_size(self, n: int) -> float:
        """How many of ``n`` participants a round samples (the mean, under Poisson)."""
        sc = self.cfg.sampling
        if sc.method == "poisson":
            return sc.fraction * n
        if sc.method == "epochs":
            return n / sc.pass_rounds
        return float(fixed_cohort_size(n, sc.fraction, sc.min_participants))

    def configure(self, server_round: int, members: Mapping[str, str], version: str) -> list[Task]:
        """The training tasks of ``server_round`` (0-based) starting from ``version``, for
        a cohort drawn from ``members`` (id -> name)."""
        run = self.cfg.run
        participants = sorted(members, key=lambda p: (members[p], p))
        rng = np.random.default_rng([run.seed, server_round])
        sc = self.cfg.sampling
        if sc.method == "poisson":
            if not participants:
                raise ZenfedError("no participants are enrolled", fix="enroll one")
            # Under DP the sample must be secret (amplification by subsampling): the run's
            # seed is public, so the draw uses OS entropy (a resumed run samples anew).
            draw = np.random.default_rng(secrets.randbits(128)) if self.cfg.privacy.enabled else rng
            chosen = draw.random(len(participants)) < sc.fraction
            cohort = [p for p, c in zip(participants, chosen, strict=True) if c]
        elif sc.method == "epochs":
            cohort = [p for p in participants if self.turn(server_round, members[p])]
        else:
            cohort = sample_participants(participants, sc.fraction, sc.min_participants, rng)
        codec_seed = int(np.random.default_rng([run.seed, server_round, 1]).integers(2**62))
        return [
            self.task(server_round, pid, version, self.seed(server_round, members[pid]), codec_seed)
            for pid in cohort
        ]

    def turn(self, server_round: int, name: str) -> bool:
        """``sampling.method = "epochs"``: whether ``server_round`` is participant
        ``name``'s round of its pass (one per pass, from the run's seed, the pass and the
        name alone, so whoever else joins or leaves it trains at most once a pass)."""
        e = self.cfg.sampling.pass_rounds
        key = zlib.crc32(name.encode())
        mine = np.random.default_rng([self.cfg.run.seed, server_round // e, 4, key]).integers(e)
        return int(mine) == server_round % e

    def seed(self, server_round: int, name: str) -> int:
        """The training seed of participant ``name`` in ``server_round``: its own, whoever
        else is sampled, so a participant trains alike under a flat coordinator and under a
        regional one (whose cohort is a part of the flat one)."""
        key = zlib.crc32(name.encode())
        return int(
            np.random.default_rng([self.cfg.run.seed, server_round, 3, key]).integers(2**31 - 1)
        )

    def task(self, server_round: int, pid: str, version: str, seed: int, codec_seed: int) -> Task:
        """One training task of ``server_round`` for ``pid`` from ``version``."""
        run, train = self.cfg.run, self.cfg.train
        steps = train.local_steps or 0  # epoch-based training has no global step schedule
        return Task(
            round=server_round,
            participant=pid,
            version=version,
            seed=seed,
            lr=train.lr,
            step_offset=server_round * steps,
            total_steps=run.rounds * steps,
            codec_seed=codec_seed,
            record_clip_norm=self.cfg.privacy.record_clip_norm,
            record_noise_multiplier=self.cfg.privacy.record_noise_multiplier or 0.0,
            record_target_epsilon=self.cfg.privacy.record_target_epsilon,
            record_rounds=run.rounds,
            secure_noise=self.cfg.privacy.secure_noise,
            privacy_delta=self.cfg.privacy.target_delta,
        )

    def buffered_task(self, server_round: int, pid: str, name: str, version: str) -> Task:
        """The task of buffered aggregation handed to ``pid`` (named ``name``) while
        buffer ``server_round`` is open: seeded by the run's seed, the buffer and the name
        (a participant gets at most one task per buffer)."""
        key = zlib.crc32(name.encode())
        rng = np.random.default_rng([self.cfg.run.seed, server_round, 2, key])
        seed, codec_seed = int(rng.integers(2**31 - 1)), int(rng.integers(2**62))
        return self.task(server_round, pid, version, seed, codec_seed)
