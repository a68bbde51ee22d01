"""Rounds as parts: the open round the engine holds, the policies that run rounds, and
the pure steps at a round's ends.

    policy = round_policy(cfg, accounted)   # SyncRounds | BufferedRounds | OverRegions
    tasks, handed_out = policy.open(server_round, now, draw)

The engine knows one lifecycle: open, check, accept, decide, aggregate, commit. What
differs between ways of running rounds (who gets a task when, when a round closes, how
an arrival is weighed, what carries over to the next round) is its ``RoundPolicy``:
``sync.py`` (a cohort, a quorum, a deadline), ``buffered.py`` (FedBuff: a buffer of k
arrivals, staleness weights), ``regions.py`` (a root whose members are regions). To add
one: a module here implementing ``RoundPolicy`` and its line in ``round_policy``.
"""

from __future__ import annotations

from zenfed.config import FederationConfig
from zenfed.coordinator.rounds.base import OpenRound as OpenRound
from zenfed.coordinator.rounds.base import RoundAborted as RoundAborted
from zenfed.coordinator.rounds.base import RoundPolicy as RoundPolicy
from zenfed.coordinator.rounds.base import Spill as Spill
from zenfed.coordinator.rounds.buffered import BufferedRounds
from zenfed.coordinator.rounds.combine import accumulator_for as accumulator_for
from zenfed.coordinator.rounds.combine import combine as combine
from zenfed.coordinator.rounds.regions import OverRegions
from zenfed.coordinator.rounds.sync import SyncRounds
from zenfed.coordinator.rounds.trigger import Decision as Decision
from zenfed.coordinator.rounds.trigger import RoundProgress as RoundProgress


def round_policy(cfg: FederationConfig, accounted: bool) -> RoundPolicy:
    """The policy ``cfg`` runs its rounds by (``accounted``: releases are noised and
    accounted, which a root over regions checks its regions' weights against)."""
    if cfg.buffered.enabled:
        return BufferedRounds(cfg)
    if cfg.regions.enabled:
        return OverRegions(SyncRounds(cfg), cfg.regions.fraction, accounted)
    return SyncRounds(cfg)
