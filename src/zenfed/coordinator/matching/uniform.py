"""Uniform sampling without replacement: a cohort of fixed size per round.

    Uniform(spec, seed=0).select(3, pool)   # ceil(fraction * n) members, >= min_participants

Drawn by a generator seeded with the run's seed and the round, over the pool in name order,
so a resumed run draws the same cohorts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zenfed.config import UniformSampling
from zenfed.coordinator.roster import Member, by_name
from zenfed.errors import ZenfedError


def sample_participants(
    participants: Sequence[str], fraction: float, minimum: int, rng: np.random.Generator
) -> list[str]:
    """A random cohort of ``max(minimum, ceil(fraction * n))`` of ``participants`` (at most
    n), in their order."""
    n = len(participants)
    if n == 0:
        raise ZenfedError("no participants are enrolled", fix="enroll at least one participant")
    size = UniformSampling(fraction=fraction, min_participants=minimum).expected_size(n)
    chosen = rng.choice(n, size=int(size), replace=False)
    return [participants[i] for i in sorted(chosen.tolist())]


@dataclass(frozen=True)
class Uniform:
    """``[sampling] method = "uniform"``."""

    spec: UniformSampling
    seed: int

    def select(self, server_round: int, pool: Sequence[Member]) -> list[Member]:
        """``spec.expected_size(n)`` members of ``pool`` (ordered by name), drawn from the
        run's seed and the round."""
        ordered = by_name(pool)
        rng = np.random.default_rng([self.seed, server_round])
        sp = self.spec
        ids = sample_participants([m.id for m in ordered], sp.fraction, sp.min_participants, rng)
        chosen = set(ids)
        return [m for m in ordered if m.id in chosen]


def build(spec: UniformSampling, seed: int, secret: bool) -> Uniform:
    """The uniform matcher of ``spec`` (its draw is public: DP refuses it)."""
    return Uniform(spec, seed)
