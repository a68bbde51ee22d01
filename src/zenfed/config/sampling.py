"""The ``[sampling]`` section: which matcher draws each round's cohort, one spec per
matcher (a table tagged by ``method``, like the codec specs), with the arithmetic every
other part reads: how large a cohort is and the sampling rate the privacy accountant
composes. The matchers themselves are ``zenfed.coordinator.matching``. Re-exported by
``zenfed.config``.

    [sampling]
    method = "poisson"        # or "uniform" (the default; "fixed" is its old name), "epochs"
    fraction = 0.1
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from zenfed.config.base import _Frozen


class _Sampling(_Frozen):
    """What every matcher takes: the ``fraction`` of the pool a round draws, and the
    ``min_participants`` a service waits for before its first round (uniform cohorts are
    never smaller, nor larger than the pool)."""

    fraction: float = 1.0
    min_participants: int = 1

    @model_validator(mode="after")
    def _check_fraction(self) -> Any:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError("sampling.fraction must be in (0, 1]")
        return self


class UniformSampling(_Sampling):
    """A cohort of ``ceil(fraction * n)`` (at least ``min_participants``, at most n) drawn
    uniformly without replacement, from the run's seed and the round."""

    method: Literal["uniform"] = "uniform"

    @property
    def sampling_rate(self) -> float:
        """The share of the pool a round draws (no DP accountant composes it: DP needs
        Poisson sampling or DP-FTRL's passes)."""
        return self.fraction

    def expected_size(self, n: int) -> float:
        """The cohort of a pool of ``n``."""
        return float(min(n, max(self.min_participants, math.ceil(self.fraction * n))))


class PoissonSampling(_Sampling):
    """Each member independently with probability ``fraction``: what the DP accountant
    assumes (amplification by subsampling); the cohort's size varies and may be 0."""

    method: Literal["poisson"]

    @property
    def sampling_rate(self) -> float:
        """q, the chance a member is in a round's cohort."""
        return self.fraction

    def expected_size(self, n: int) -> float:
        """q n, the mean cohort (DP-FedAvg's fixed denominator)."""
        return self.fraction * n


class EpochsSampling(_Sampling):
    """Passes of ``ceil(1 / fraction)`` rounds; in each pass every member trains in
    exactly one round, drawn from the run's seed, the pass and its name (one that joins
    mid-pass takes part at most once in it): what DP-FTRL's tree assumes."""

    method: Literal["epochs"]

    @property
    def pass_rounds(self) -> int:
        """The rounds of one pass over the members."""
        return math.ceil(1.0 / self.fraction - 1e-9)

    @property
    def sampling_rate(self) -> float:
        """1: nobody is drawn at random, so the accountant has no amplification to use."""
        return 1.0

    def expected_size(self, n: int) -> float:
        """n over the rounds of a pass."""
        return n / self.pass_rounds


SamplingSpec = Annotated[
    UniformSampling | PoissonSampling | EpochsSampling, Field(discriminator="method")
]

SAMPLING_SPECS: dict[str, type[BaseModel]] = {
    "uniform": UniformSampling,
    "poisson": PoissonSampling,
    "epochs": EpochsSampling,
}


def tag_sampling(value: Any) -> Any:
    """A ``[sampling]`` table with its ``method`` tag: ``uniform`` when none is given,
    and ``fixed`` (the name before matchers) read as ``uniform``."""
    if isinstance(value, dict):
        method = value.get("method", "uniform")
        return {**value, "method": "uniform" if method == "fixed" else method}
    return value
