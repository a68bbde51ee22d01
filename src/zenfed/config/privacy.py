"""The ``[privacy]`` and ``[secagg]`` sections: differential privacy (participant and
record level) and secure aggregation. Re-exported by ``zenfed.config``."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from zenfed.config.base import _Frozen


class PrivacyConfig(_Frozen):
    """Participant-level differential privacy (DP-FedAvg) and its accountant.

    Set ``clip_norm`` and one of ``noise_multiplier`` or ``target_epsilon`` (the noise is
    then calibrated to reach it after ``run.rounds``). ``target_epsilon`` is also the
    budget: a round that would exceed it is not run. ``noise = "distributed"`` has each
    participant add its share of the noise under secure aggregation, so no party sees the
    un-noised sum; ``"central"`` has the coordinator add it.

    ``mechanism``: ``"gaussian"`` (DP-FedAvg: independent noise every round, Poisson
    sampling amplifies it) or ``"tree"`` (DP-FTRL, Kairouz et al. 2021: tree-aggregated
    noise on the prefix sums of each pass of ``sampling.method = "epochs"``, no sampling;
    every participant takes part once per pass, as in a cross-silo federation).
    """

    clip_norm: float | None = None  # participant-level L2 bound C (also without noise)
    noise_multiplier: float | None = None  # z: the sum's noise has stddev z * C
    target_epsilon: float | None = None
    target_delta: float = 1e-6
    accountant: Literal["rdp", "pld"] = "rdp"
    noise: Literal["central", "distributed"] = "central"
    mechanism: Literal["gaussian", "tree"] = "gaussian"
    adaptive_clipping: bool = False  # Andrew et al. 2021: C tracks a quantile of norms
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clip_count_stddev: float | None = None  # None: max(expected cohort / 20, z)
    # Warn (zenfed plan, and the coordinator before round 1) when the noise per coordinate
    # exceeds this multiple of the largest possible mean update's (privacy.planner).
    warn_noise_ratio: float = 1.0
    # Every noise draw (central, distributed, the clip count, DP-SGD) from a
    # cryptographically secure stream, hardened against floating-point attacks
    # (zenfed.noise); default: NumPy's / PyTorch's generators seeded by OS entropy.
    secure_noise: bool = False
    # Record-level DP-SGD in every participant's local training (per-example clipping to
    # record_clip_norm, Gaussian noise of multiplier record_noise_multiplier, Poisson-
    # sampled batches); each participant accounts the epsilon of its own records. Or
    # record_target_epsilon: each participant calibrates its own multiplier so that the
    # most local steps the run can give it (every round) spend at most that epsilon (at
    # target_delta) on its records, and refuses to train past it.
    record_clip_norm: float | None = None
    record_noise_multiplier: float | None = None
    record_target_epsilon: float | None = None

    @property
    def enabled(self) -> bool:
        """Whether updates get noise (and epsilon is accounted)."""
        return self.noise_multiplier is not None or self.target_epsilon is not None

    @model_validator(mode="after")
    def _check(self) -> PrivacyConfig:
        if self.enabled and self.clip_norm is None:
            raise ValueError("differential privacy needs privacy.clip_norm (the bound C)")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError("privacy.clip_norm must be positive")
        if self.noise_multiplier is not None and self.noise_multiplier <= 0:
            raise ValueError("privacy.noise_multiplier must be positive")
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise ValueError("privacy.target_epsilon must be positive")
        if self.warn_noise_ratio <= 0:
            raise ValueError("privacy.warn_noise_ratio must be positive")
        if not 0.0 < self.target_delta < 1.0:
            raise ValueError("privacy.target_delta must be in (0, 1)")
        if not 0.0 < self.target_quantile < 1.0 or self.clip_lr <= 0:
            raise ValueError("privacy.target_quantile must be in (0, 1), clip_lr positive")
        noise = (self.record_noise_multiplier, self.record_target_epsilon)
        if (self.record_clip_norm is None) != (noise == (None, None)) or None not in noise:
            raise ValueError(
                "record-level DP-SGD needs privacy.record_clip_norm and one of "
                "privacy.record_noise_multiplier or privacy.record_target_epsilon"
            )
        if any(x is not None and x <= 0 for x in (self.record_clip_norm, *noise)):
            raise ValueError(
                "privacy.record_clip_norm, record_noise_multiplier and record_target_epsilon "
                "must be > 0"
            )
        return self


class SecAggConfig(_Frozen):
    """Secure aggregation (SecAgg+, Bell et al. 2020): the coordinator learns only the sum.

    Each participant masks with ``degree`` neighbours of a random regular graph (None:
    3 ceil(log2 n), at least 2), secret-shares its mask secrets among them with threshold
    ``floor(threshold * degree) + 1``, and the round aborts below ``min_survivors`` uploads.
    Values are clipped to ``clip_norm`` (or privacy.clip_norm) and summed as fixed-point
    integers modulo 2^32.
    """

    enabled: bool = False
    degree: int | None = None
    threshold: float = 0.5
    min_survivors: int = 2
    clip_norm: float | None = None
    stage_timeout_s: float = 60.0  # networked: a key-exchange or unmask stage closes then

    @model_validator(mode="after")
    def _check(self) -> SecAggConfig:
        if not 0.5 <= self.threshold < 1.0:
            raise ValueError(
                "secagg.threshold must be in [0.5, 1): below one half a curious coordinator "
                "could collect both secrets of a participant"
            )
        if self.degree is not None and self.degree < 1:
            raise ValueError("secagg.degree must be at least 1")
        if self.min_survivors < 1:
            raise ValueError("secagg.min_survivors must be at least 1")
        return self
