"""Who takes part in a round: one matcher a module behind one protocol, and the registry
that ``[sampling] method`` names.

    matcher = build_matcher(cfg.sampling, seed=cfg.run.seed, secret=cfg.privacy.enabled)
    cohort = matcher.select(server_round, pool)   # pool: the roster's Members, unquarantined
    cfg.sampling.expected_size(n)                  # how large a cohort is (the mean, if random)
    cfg.sampling.sampling_rate                     # q, as the privacy accountant composes it

A matcher orders the pool by name (then id) before it draws, so a simulation and a
deployment of the same participants, whose ids differ, draw the same cohorts. The
arithmetic of sizes and rates lives with the specs (``zenfed.config.sampling``), where the
privacy policy and the planner read it too. To add a matcher: a spec in
``config/sampling.py``, a module here with ``build(spec, seed, secret)``, and its line in
``MATCHERS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from zenfed.coordinator.matching import epochs, poisson, uniform
from zenfed.coordinator.matching.uniform import sample_participants as sample_participants
from zenfed.coordinator.roster import Member
from zenfed.errors import ZenfedError


class Matcher(Protocol):
    """Draws a round's cohort from the pool."""

    def select(self, server_round: int, pool: Sequence[Member]) -> list[Member]:
        """The cohort of ``server_round`` (0-based) from ``pool``, in name order."""
        ...


MATCHERS: dict[str, Callable[[Any, int, bool], Matcher]] = {
    "uniform": uniform.build,
    "poisson": poisson.build,
    "epochs": epochs.build,
}


def build_matcher(spec: Any, seed: int, secret: bool = False) -> Matcher:
    """The matcher ``spec`` (a ``[sampling]`` spec) names; ``secret``: draw from OS
    entropy where the draw must stay unknown (Poisson sampling under DP)."""
    make = MATCHERS.get(spec.method)
    if make is None:
        raise ZenfedError(f"no matcher '{spec.method}'", fix=f"one of {sorted(MATCHERS)}")
    return make(spec, seed, secret)
