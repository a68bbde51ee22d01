"""Participant-level differential privacy for FedAvg (DP-FedAvg), and its accounting.

    clipped, norm = clip_l2(delta, clip_norm)                  # every update: norm <= C
    eps = epsilon(ledger, delta=1e-6, accountant="rdp")        # Google's dp-accounting
    z = calibrate_noise(target_epsilon=3, delta=1e-6, q=0.1, rounds=60)

DP-FedAvg (McMahan et al. 2018): each round samples participants independently with
probability q (Poisson sampling, what the accountant assumes), clips every update to L2
norm C, adds Gaussian noise of standard deviation z*C to the sum and divides by the
expected cohort size q*N (the fixed-denominator estimator: the divisor carries no
information about who took part). Adjacent datasets differ by one participant's whole
data (add or remove), so the sum's sensitivity is C.

Adaptive clipping (Andrew et al. 2021): each participant also contributes the bit
[norm <= C], centred (bit - 1/2, so one participant moves the sum by at most 1/2); the
noised mean of the centred bits plus 1/2 estimates the fraction of updates under C, and
C <- C * exp(-eta * (b - gamma)) tracks the gamma-quantile of update norms. The bits' sum
gets Gaussian noise of standard deviation sigma_b, and the update noise is set so the
two releases together cost what one Gaussian of multiplier z costs:
z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2).

Every committed round adds one ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` to the
ledger; epsilon for the target delta comes from dp-accounting's RDP or PLD accountant
over the composition of all of them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import dp_accounting
import torch
from dp_accounting import pld, rdp

from zenfed.config import PrivacyConfig
from zenfed.errors import ZenfedError
from zenfed.tensors import Tensors

# The RDP accountant logs every fractional order it drops as numerically unstable (the
# epsilon is then taken over the remaining orders): not something a user can act on.
logging.getLogger("absl").setLevel(logging.ERROR)


class PrivacyBudgetExceeded(ZenfedError):
    """Running another round would spend more than the federation's epsilon budget."""


def l2_norm(tensors: Tensors) -> float:
    """The L2 norm of all tensors together (as one flat vector)."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def clip_l2(tensors: Tensors, clip_norm: float) -> tuple[Tensors, float]:
    """Scale ``tensors`` so their joint L2 norm is at most ``clip_norm``; (clipped, norm)."""
    norm = l2_norm(tensors)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: t * scale for k, t in tensors.items()}, norm


@dataclass
class PrivacyLedger:
    """The noise of every committed round: what the accountant composes.

    ``rounds`` holds (sampling rate, noise multiplier) per round whose result was released.
    """

    rounds: list[tuple[float, float]] = field(default_factory=list)
    clip_norm: float | None = None  # the current (possibly adapted) clipping bound
    # DP-FTRL (privacy.mechanism = "tree"): the (pass, leaf) of each release, and the
    # secret seed of the trees' noise (one tree per pass).
    tree: list[tuple[int, int]] = field(default_factory=list)
    seed: int = 0

    def spent(self, delta: float, accountant: str = "rdp") -> float:
        """Epsilon spent so far at ``delta``."""
        if self.tree:
            from zenfed.privacy.tree import epsilon as tree_epsilon

            return tree_epsilon(self.rounds[0][1], tree_sizes(self.tree), delta)
        return epsilon(self.rounds, delta, accountant)


def tree_sizes(leaves: list[tuple[int, int]]) -> list[int]:
    """The leaves of each pass's tree (its last leaf released), from (pass, leaf) pairs."""
    sizes: dict[int, int] = {}
    for p, leaf in leaves:
        sizes[p] = max(sizes.get(p, 0), leaf)
    return [sizes[p] for p in sorted(sizes)]


def _event(rounds: list[tuple[float, float]]) -> dp_accounting.DpEvent:
    events: list[dp_accounting.DpEvent] = []
    for (q, z), n in _runs(rounds):
        step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
        events.append(dp_accounting.SelfComposedDpEvent(step, n))
    return dp_accounting.ComposedDpEvent(events)


def _runs(rounds: list[tuple[float, float]]) -> list[tuple[tuple[float, float], int]]:
    """Consecutive equal (q, z) pairs collapsed to counts (the accountants compose faster)."""
    out: list[tuple[tuple[float, float], int]] = []
    for r in rounds:
        if out and out[-1][0] == r:
            out[-1] = (r, out[-1][1] + 1)
        else:
            out.append((r, 1))
    return out


def make_accountant(kind: str) -> dp_accounting.PrivacyAccountant:
    """A fresh dp-accounting accountant: ``rdp`` (Renyi DP) or ``pld`` (privacy loss
    distributions, tighter)."""
    if kind == "rdp":
        return rdp.RdpAccountant()
    if kind == "pld":
        return pld.PLDAccountant()
    raise ZenfedError(f"unknown accountant {kind!r}", fix="one of rdp, pld")


def epsilon(rounds: list[tuple[float, float]], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` after the Poisson-sampled Gaussian rounds ``[(q, z), ...]``."""
    if not rounds:
        return 0.0
    acc = make_accountant(accountant)
    acc.compose(_event(rounds))
    return float(acc.get_epsilon(delta))


def calibrate_noise(
    target_epsilon: float, delta: float, q: float, rounds: int, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier z whose ``rounds`` rounds at rate q cost at most
    ``target_epsilon`` at ``delta`` (dp-accounting's calibration, by bisection)."""
    if target_epsilon <= 0 or not 0 < delta < 1 or rounds < 1:
        raise ZenfedError(
            f"cannot calibrate to epsilon {target_epsilon}, delta {delta} over {rounds} rounds",
            fix="give a positive privacy.target_epsilon, a delta in (0, 1) and run.rounds >= 1",
        )
    try:
        z = dp_accounting.calibrate_dp_mechanism(
            lambda: make_accountant(accountant),
            lambda z: _event([(q, z)] * rounds),
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.ExplicitBracketInterval(1e-3, 1e3),
        )
    except Exception as e:  # the bracket does not contain the target
        raise ZenfedError(
            f"epsilon {target_epsilon} at delta {delta} over {rounds} rounds of sampling "
            f"rate {q} is out of reach for noise multipliers up to 1000 ({e})",
            fix="raise privacy.target_epsilon or lower run.rounds or sampling.fraction",
        ) from e
    return float(z)


def update_noise_multiplier(cfg: PrivacyConfig, z: float, expected_cohort: float) -> float:
    """The multiplier of the update sum's noise once adaptive clipping takes its share.

    Andrew et al. 2021, eq. (3): the clip-count release (noise ``clip_count_stddev``,
    sensitivity 1/2 after centring) and the update release (multiplier z_delta) compose to
    one Gaussian of multiplier z when z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2).
    """
    if not cfg.adaptive_clipping:
        return z
    sigma_b = count_stddev(cfg, expected_cohort, z)
    inner = z**-2 - (2 * sigma_b) ** -2
    if inner <= 0:
        raise ZenfedError(
            f"privacy.clip_count_stddev {sigma_b:g} is too small for noise multiplier {z:g}: "
            "the clip-count release alone would spend the whole budget",
            fix=f"raise privacy.clip_count_stddev above {1 / (2 * z):g}",
        )
    return inner**-0.5


def count_stddev(cfg: PrivacyConfig, expected_cohort: float, z: float) -> float:
    """sigma_b of the clip count: configured, or max(expected cohort / 20 (Andrew et
    al.'s choice for large cohorts), z) so the count takes at most a quarter of the
    budget's precision (z_delta <= 1.16 z) in small federations."""
    return cfg.clip_count_stddev or max(expected_cohort / 20.0, z)


def next_clip_norm(cfg: PrivacyConfig, clip: float, below_fraction: float) -> float:
    """The geometric update C * exp(-eta * (b - gamma)) of adaptive clipping."""
    return clip * math.exp(-cfg.clip_lr * (below_fraction - cfg.target_quantile))


def gaussian_like(tensors: Tensors, std: float, generator: torch.Generator) -> Tensors:
    """Independent N(0, std^2) noise shaped like ``tensors`` (float32)."""
    return {
        k: torch.randn(t.shape, generator=generator, dtype=torch.float32) * std
        for k, t in tensors.items()
    }
