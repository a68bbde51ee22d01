"""Passes over the members: each trains in exactly one round of every pass.

    Epochs(spec, seed=0).select(7, pool)    # those whose turn round 7 is

A pass has ``ceil(1 / fraction)`` rounds; a member's round in a pass comes from the run's
seed, the pass and its name alone, so whoever else joins or leaves, it trains at most once
a pass (one that joins mid-pass may miss it): what DP-FTRL's tree assumes.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zenfed.config import EpochsSampling
from zenfed.coordinator.roster import Member, by_name


@dataclass(frozen=True)
class Epochs:
    """``[sampling] method = "epochs"``."""

    spec: EpochsSampling
    seed: int

    def turn(self, server_round: int, name: str) -> bool:
        """Whether ``server_round`` is member ``name``'s round of its pass."""
        e = self.spec.pass_rounds
        key = zlib.crc32(name.encode())
        mine = np.random.default_rng([self.seed, server_round // e, 4, key]).integers(e)
        return int(mine) == server_round % e

    def select(self, server_round: int, pool: Sequence[Member]) -> list[Member]:
        """The members of ``pool`` (in name order) whose turn ``server_round`` is."""
        return [m for m in by_name(pool) if self.turn(server_round, m.name)]


def build(spec: EpochsSampling, seed: int, secret: bool) -> Epochs:
    """The epochs matcher of ``spec`` (its draw is a schedule, not a secret)."""
    return Epochs(spec, seed)
