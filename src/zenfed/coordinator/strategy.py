"""The strategy: the settings of each task for a round's cohort (the matcher drew it).

    tasks = strategy.draw(server_round=3, pool=members, version=v, deadline=t)
    tasks = strategy.configure(server_round=3, cohort=members, version=v)

Each participant's training seed comes from the run's seed, the round and its name, and
each round gets one ``codec_seed`` that every task shares: codecs that must pick the same
coordinates on every participant (random-k, count sketch) draw them from it. Names, not
ids: a simulation and a deployment of the same participants (their ids differ) seed them
alike.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from zenfed.config import FederationConfig
from zenfed.coordinator.matching import Matcher
from zenfed.coordinator.roster import Member
from zenfed.coordinator.rounds import RoundAborted
from zenfed.protocol.adapter import AdapterSpec
from zenfed.protocol.messages import Task


class Strategy:
    """Who trains in a round (its matcher draws them) and with what settings."""

    def __init__(self, cfg: FederationConfig, matcher: Matcher) -> None:
        self.cfg, self.matcher = cfg, matcher

    def draw(
        self, server_round: int, pool: Sequence[Member], version: str, deadline: float
    ) -> list[Task]:
        """The tasks of a cohort drawn from ``pool``, ending at ``deadline``
        (RoundAborted if nobody was drawn)."""
        cohort = self.matcher.select(server_round, pool)
        tasks = self.configure(server_round, cohort, version)
        if not tasks:
            raise RoundAborted(
                f"round {server_round + 1}: no participant was drawn (Poisson sampling, or "
                "nobody's turn in this pass)",
                fix="the round is skipped (raise sampling.fraction to make this rarer)",
            )
        return [replace(t, deadline=deadline) for t in tasks]

    def configure(self, server_round: int, cohort: Sequence[Member], version: str) -> list[Task]:
        """The training tasks of ``server_round`` (0-based) from ``version`` for
        ``cohort`` (in its order)."""
        run = self.cfg.run
        codec_seed = int(np.random.default_rng([run.seed, server_round, 1]).integers(2**62))
        return [
            self.task(
                server_round, m.id, version, self.seed(server_round, m.name), codec_seed, m.name
            )
            for m in cohort
        ]

    def seed(self, server_round: int, name: str) -> int:
        """The training seed of participant ``name`` in ``server_round``: its own, whoever
        else is sampled, so a participant trains alike under a flat coordinator and under a
        regional one (whose cohort is a part of the flat one)."""
        key = zlib.crc32(name.encode())
        return int(
            np.random.default_rng([self.cfg.run.seed, server_round, 3, key]).integers(2**31 - 1)
        )

    def spec_for(self, name: str) -> AdapterSpec | None:
        """The adapter shape ``[adapters] assign`` gives participant ``name`` (None: the
        whole adapter)."""
        a = self.cfg.adapters.assign.get(name)
        return None if a is None else AdapterSpec(a.r, a.layers, a.personal)

    def task(
        self, server_round: int, pid: str, version: str, seed: int, codec_seed: int, name: str
    ) -> Task:
        """One training task of ``server_round`` for ``pid`` (named ``name``) from
        ``version``."""
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
            adapter=self.spec_for(name),
        )

    def buffered_task(self, server_round: int, pid: str, name: str, version: str) -> Task:
        """The task of buffered aggregation handed to ``pid`` (named ``name``) while
        buffer ``server_round`` is open: seeded by the run's seed, the buffer and the name
        (a participant gets at most one task per buffer)."""
        key = zlib.crc32(name.encode())
        rng = np.random.default_rng([self.cfg.run.seed, server_round, 2, key])
        seed, codec_seed = int(rng.integers(2**31 - 1)), int(rng.integers(2**62))
        return self.task(server_round, pid, version, seed, codec_seed, name)
