"""Poisson sampling: each member independently with probability q = ``fraction``.

    Poisson(spec, seed=0, secret=True).select(3, pool)

What the DP accountant assumes (amplification by subsampling). Under DP the draw must stay
secret: the run's seed is public, so it comes from OS entropy (a resumed run draws anew);
without DP it is seeded by the run's seed and the round. A round may draw nobody.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zenfed.config import PoissonSampling
from zenfed.coordinator.roster import Member, by_name
from zenfed.errors import ZenfedError


@dataclass(frozen=True)
class Poisson:
    """``[sampling] method = "poisson"``."""

    spec: PoissonSampling
    seed: int
    secret: bool  # draw from OS entropy (DP), not the public seed

    def select(self, server_round: int, pool: Sequence[Member]) -> list[Member]:
        """Each member of ``pool`` (in name order) with probability ``spec.fraction``."""
        if not pool:
            raise ZenfedError("no participants are enrolled", fix="enroll one")
        ordered = by_name(pool)
        seed = secrets.randbits(128) if self.secret else [self.seed, server_round]
        drawn = np.random.default_rng(seed).random(len(ordered)) < self.spec.fraction
        return [m for m, d in zip(ordered, drawn, strict=True) if d]


def build(spec: PoissonSampling, seed: int, secret: bool) -> Poisson:
    """The Poisson matcher of ``spec``."""
    return Poisson(spec, seed, secret)
