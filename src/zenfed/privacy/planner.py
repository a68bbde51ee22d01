"""The privacy planner: what a federation's participant-level DP will cost and whether its
noise leaves the update visible, before anything trains (``zenfed plan``).

    p = plan(cfg, holders=100, dimensions=921_600)
    p.epsilon, p.ratio, p.holders_per_round_needed
    if p.swamped: print(swamping_warning(p))

DP-FedAvg releases, each round, the mean of the cohort's clipped updates with Gaussian
noise of stddev z * C on the sum, over the fixed denominator q * N. Per coordinate of the
``dimensions`` values the noise goes on, the released mean carries noise of stddev
z * C / (q * N). The largest mean update the clip bound allows (every update at norm C,
all pointing the same way) has norm C, so C / sqrt(d) per coordinate on average: the
best case for the signal. Their ratio,

    ratio = z * sqrt(d) / (q * N),

does not depend on C, as long as a round's update can fill the bound. It often cannot:
local training is AdamW, whose step moves each trained value by about lr (exactly lr, the
sign of the gradient, on a fresh optimizer's first step), so a round's update reaches
about lr * local_steps per coordinate, a norm of lr * local_steps * sqrt(d). A bound C
above that leaves the signal at lr * local_steps per coordinate while the noise grows
with C: the ratio is then z * C / (q * N * lr * local_steps), and a bound near the
update's reach gives the same guarantee with less noise (measured on the quality
workload: one step at lr 3e-3 moves every trained value by exactly 3e-3, norm 0.91 for an
FFA-LoRA rank-2 adapter's 92,160 values, so its C = 3 left 70 % of the bound empty). A
ratio above ``privacy.warn_noise_ratio`` means that even in the best case every round's
step is mostly noise. Keeping it below the bound takes q * N >= z * sqrt(d) / bound
holders per round (with a filled bound): more holders, fewer trained values (FFA-LoRA, a
lower rank, fewer target modules, each with C scaled to the smaller update) or less
noise (a larger epsilon, fewer rounds).

A linear codec under secure aggregation (the shared random subspace of random-k, a
sketch) noises m < d values a round, and the round's ratio z * sqrt(m) / (q * N) is
lower; it does not help over a run: a value is in a random subspace of share f = m / d
in only f of the rounds, each time with the round's noise, so its noise against its
update over the run is the whole adapter's, ``ratio`` = the round's / sqrt(f). Such a
codec only shrinks the step (measured on the benchmark's 100 holders: FFA-LoRA rank 2 in
a 10 % subspace, without any noise, reaches a centralized efficiency of 0.09).

z is the configured noise multiplier or the one calibrated to the target epsilon at rate
q over ``run.rounds``, and epsilon is dp-accounting's over exactly the releases a run
makes (``dp.epsilon``).

Under DP-FTRL (``privacy.mechanism = "tree"``) q is the share of holders per round (one
pass of ceil(1 / fraction) rounds takes each once), epsilon is the trees' and z the noise
of one tree node: a round's increment carries between one node's noise and about
log2(rounds per pass) of them, so the ratio is that of the least-noised round.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

from zenfed.compress import Pipeline
from zenfed.compress.base import Shape
from zenfed.config import FederationConfig, TrainConfig
from zenfed.errors import ZenfedError
from zenfed.privacy import dp
from zenfed.privacy.policy import PrivacyPolicy


class PrivacyWarning(UserWarning):
    """The configured differential privacy will swamp the update (a warning, not a
    refusal: the run is private, only its model may be useless)."""


@dataclass(frozen=True)
class Plan:
    """What a federation's participant-level DP costs and does to each round's update."""

    epsilon: float  # spent after run.rounds releases, at delta
    delta: float
    noise_multiplier: float  # z (after adaptive clipping's share, if any)
    sampling_rate: float  # q
    rounds: int
    holders: int  # N
    dimensions: int  # d: values the noise is added to
    bound: float  # privacy.warn_noise_ratio
    clip_norm: float = 1.0  # C (under adaptive clipping: the initial bound)
    reach: float | None = None  # what a round moves one trained value by: lr x local steps
    trained: int = 0  # the adapter's trained values the noised vector decodes into (0: d)

    @property
    def expected_cohort(self) -> float:
        """q * N: the fixed denominator."""
        return self.sampling_rate * self.holders

    @property
    def noise_per_coordinate(self) -> float:
        """Stddev of the noise on one coordinate of the released mean, per unit of C."""
        return self.noise_multiplier / self.expected_cohort

    @property
    def update_per_coordinate(self) -> float:
        """RMS per coordinate of the largest mean update, per unit of C: C / sqrt(d) if a
        round's update can reach norm C, else the reach of local training (lr x steps)."""
        best = 1.0 / math.sqrt(self.dimensions)
        return best if self.reach is None else min(best, self.reach / self.clip_norm)

    @property
    def update_norm_reach(self) -> float | None:
        """The norm a round's update reaches at most: lr x steps x sqrt(d) (None: unknown,
        as with train.local_epochs)."""
        return None if self.reach is None else self.reach * math.sqrt(self.dimensions)

    @property
    def bound_unfilled(self) -> bool:
        """Whether C is above what a round's update reaches (noise paid for nothing)."""
        reach = self.update_norm_reach
        return reach is not None and reach < self.clip_norm

    @property
    def round_ratio(self) -> float:
        """One round's noise over update per noised coordinate: z * sqrt(d) / (q * N) with
        a filled bound."""
        return self.noise_per_coordinate / self.update_per_coordinate

    @property
    def coverage(self) -> float:
        """Noised values over trained values (at most 1): below 1 under a linear codec (a
        random-k subspace, a sketch) whose vector secure aggregation sums and the noise
        goes on."""
        return min(1.0, self.dimensions / self.trained) if self.trained else 1.0

    @property
    def ratio(self) -> float:
        """Noise over update per trained value over the run: the round's ratio over
        sqrt(coverage). A random subspace of a share f of the values noises fewer values a
        round, but a value is in it in only f of the rounds, so its noise over the run
        against its update is the whole adapter's (a sketch: a value's cell carries the
        noise every round); such a codec only shrinks the step."""
        return self.round_ratio / math.sqrt(self.coverage)

    @property
    def swamped(self) -> bool:
        """Whether the noise exceeds the bound even for the best-case update."""
        return self.ratio > self.bound

    @property
    def holders_per_round_needed(self) -> float:
        """The expected cohort q * N that brings the ratio down to the bound."""
        return self.expected_cohort * self.ratio / self.bound

    @property
    def holders_needed(self) -> int:
        """The holders N that give that cohort at this sampling rate (and this z)."""
        return math.ceil(self.holders_per_round_needed / self.sampling_rate)


def plan(
    cfg: FederationConfig,
    holders: int,
    dimensions: int,
    policy: PrivacyPolicy | None = None,
    trained: int | None = None,
) -> Plan:
    """The plan of ``cfg`` over ``holders`` participants whose noise goes on ``dimensions``
    values that decode into ``trained`` adapter values (default: the same; fewer noised
    values come from a linear codec under secure aggregation) (``policy``: the run's
    own, whose noise is calibrated already; default: a new one); ZenfedError without
    participant-level DP."""
    if not cfg.privacy.enabled:
        raise ZenfedError(
            "this federation has no participant-level DP to plan",
            fix="set privacy.clip_norm and privacy.target_epsilon (or noise_multiplier)",
        )
    if holders < 1 or dimensions < 1:
        raise ZenfedError(
            f"cannot plan over {holders} holders and {dimensions} noised values",
            fix="give at least one holder (--holders)",
        )
    policy = policy or PrivacyPolicy(cfg)  # z calibrated as a run calibrates it
    z, q = policy.noise_multiplier, policy.sampling_rate
    assert z is not None and cfg.privacy.clip_norm is not None  # privacy.enabled needs both
    if policy.tree:  # DP-FTRL: each holder once a pass, a share 1 / pass of them a round
        q = 1.0 / policy.pass_rounds
    z_update = dp.update_noise_multiplier(cfg.privacy, z, q * holders)
    return Plan(
        epsilon=policy.epsilon(policy.ledger_after_run()),  # over exactly the run's releases
        delta=cfg.privacy.target_delta,
        noise_multiplier=z_update,
        sampling_rate=q,
        rounds=cfg.run.rounds,
        holders=holders,
        dimensions=dimensions,
        bound=cfg.privacy.warn_noise_ratio,
        clip_norm=cfg.privacy.clip_norm,  # the C the noise scales with
        reach=update_reach(cfg.train),
        trained=trained or dimensions,
    )


def update_reach(train: TrainConfig) -> float | None:
    """How far a round's local training moves one trained value at most: AdamW moves it
    by about lr a step, so lr x local steps (None with train.local_epochs: the steps
    depend on each holder's records)."""
    return None if train.local_steps is None else train.lr * train.local_steps


def plan_of(
    cfg: FederationConfig,
    holders: int,
    shapes: dict[str, Shape],
    policy: PrivacyPolicy | None = None,
) -> Plan:
    """The plan of ``cfg`` over ``holders`` participants and an adapter of ``shapes``."""
    return plan(cfg, holders, noised_dimensions(cfg, shapes), policy, adapter_values(shapes))


def noised_dimensions(cfg: FederationConfig, shapes: dict[str, Shape]) -> int:
    """How many values the noise goes on: the adapter's trained values, or under secure
    aggregation the (linear) codec's flat vector, where the clip bound holds."""
    if cfg.secagg.enabled:
        return Pipeline(cfg.compress, shapes).flat_length()
    return adapter_values(shapes)


def adapter_values(shapes: dict[str, Shape]) -> int:
    """How many values an adapter of ``shapes`` trains."""
    return sum(math.prod(s) for s in shapes.values())


def _less(factor: float) -> str:
    """How much less noise a bound ``factor`` times smaller gives, in words that stay
    readable near 1 (4 % rather than 1.0x)."""
    return f"{factor:.1f}x" if factor >= 1.5 else f"{1 - 1 / factor:.0%}"


def swamping_warning(p: Plan) -> str | None:
    """The warning a swamped plan deserves (None if the ratio is within the bound)."""
    if not p.swamped:
        return None
    why = ""  # what makes the ratio worse than the adapter's size alone would
    reach = p.update_norm_reach
    if p.bound_unfilled and reach is not None:
        why = (
            f" A round's update reaches a norm of only about {reach:.3g} (AdamW moves each "
            f"trained value by about train.lr a local step), below privacy.clip_norm = "
            f"{p.clip_norm:g}: a clip_norm near {reach:.3g} keeps the guarantee with "
            f"{_less(p.clip_norm / reach)} less noise."
        )
    if p.coverage < 1.0:
        why += (
            f" The codec's {p.dimensions:,} noised values of {p.trained:,} trained ones "
            f"do not lower it: a value is in a round's random subspace in {p.coverage:.0%} "
            "of the rounds (the round's own ratio is "
            f"{p.round_ratio:.1f}x), so over the run it sees the whole adapter's noise."
        )
    return (
        f"differential privacy will swamp the update: the noise per coordinate is "
        f"{p.ratio:.1f}x the largest possible mean update's (z {p.noise_multiplier:.3g}, "
        f"{p.trained:,} trained values, {p.expected_cohort:.1f} holders per round), above "
        f"privacy.warn_noise_ratio = {p.bound:g}.{why} Keeping it below takes about "
        f"{p.holders_per_round_needed:,.0f} holders per round ({p.holders_needed:,} at "
        f"sampling rate {p.sampling_rate:g}), fewer trained values (lora.freeze_a, a lower "
        "lora.r, fewer lora target modules, with clip_norm scaled to the smaller update) or "
        "a larger privacy.target_epsilon"
    )


def warn_if_swamped(
    cfg: FederationConfig, shapes: dict[str, Shape], holders: int, policy: PrivacyPolicy
) -> None:
    """Warn (PrivacyWarning) if ``cfg``'s DP over ``holders`` will swamp the update; what
    the coordinator does, with its ``policy``, before its first round."""
    if not cfg.privacy.enabled or holders < 1 or cfg.regions.enabled:
        return
    message = swamping_warning(plan_of(cfg, holders, shapes, policy))
    if message:
        warnings.warn(message, PrivacyWarning, stacklevel=2)


@dataclass(frozen=True)
class RecordPlan:
    """What record-level DP-SGD costs one holder of ``examples`` records and does to each
    of its local steps: the noise on a step's mean gradient against the largest mean
    gradient the per-example bound allows (every example at norm C, all aligned)."""

    epsilon: float  # over the most steps the run can give this holder, at delta
    delta: float
    noise_multiplier: float  # z: this holder's (calibrated to its own sampling rate)
    sampling_rate: float  # q = batch / examples
    steps: int
    examples: int
    dimensions: int
    bound: float

    @property
    def expected_batch(self) -> float:
        """q * examples: DP-SGD's fixed denominator."""
        return self.sampling_rate * self.examples

    @property
    def ratio(self) -> float:
        """Noise over gradient per coordinate of a step's mean: z * sqrt(d) / (q N)."""
        return self.noise_multiplier * math.sqrt(self.dimensions) / self.expected_batch

    @property
    def swamped(self) -> bool:
        """Whether the noise exceeds the bound even for the best-case gradient."""
        return self.ratio > self.bound


def record_plan(
    cfg: FederationConfig, examples: int, dimensions: int, batch: int | None = None
) -> RecordPlan:
    """The DP-SGD plan of one holder with ``examples`` records whose noise goes on
    ``dimensions`` values (``batch``: another expected batch than train.batch_size); its
    multiplier is the configured one or, with record_target_epsilon, the one the holder
    calibrates; ZenfedError without record-level DP."""
    pc, train = cfg.privacy, cfg.train
    if pc.record_clip_norm is None:
        raise ZenfedError(
            "this federation has no record-level DP to plan",
            fix="set privacy.record_clip_norm and privacy.record_target_epsilon",
        )
    if examples < 1 or dimensions < 1:
        raise ZenfedError(
            f"cannot plan DP-SGD over {examples} records and {dimensions} noised values",
            fix="give a holder's number of training examples (--examples)",
        )
    b = batch or train.batch_size
    q = min(1.0, b / examples)  # DP-SGD's Poisson rate, as the participant's trainer has it
    steps = cfg.run.rounds * train.steps_per_round(examples, b)
    z = pc.record_noise_multiplier
    if pc.record_target_epsilon is not None:
        z = record_multiplier(pc.record_target_epsilon, pc.target_delta, q, steps)
    assert z is not None
    return RecordPlan(
        epsilon=dp.epsilon([(q, z)] * steps, pc.target_delta),
        delta=pc.target_delta,
        noise_multiplier=z,
        sampling_rate=q,
        steps=steps,
        examples=examples,
        dimensions=dimensions,
        bound=pc.warn_noise_ratio,
    )


@functools.lru_cache(maxsize=256)
def record_multiplier(target: float, delta: float, q: float, steps: int) -> float:
    """The DP-SGD multiplier whose ``steps`` steps at sampling rate q spend ``target``
    (ZenfedError if no multiplier up to 1000 does)."""
    try:
        return dp.calibrate_noise(target, delta, q, steps)
    except ZenfedError as e:
        raise ZenfedError(
            f"record-level epsilon {target:g} at delta {delta:g} over {steps} DP-SGD steps "
            f"at sampling rate {q:.4g} is out of reach for noise multipliers up to 1000",
            fix="raise privacy.record_target_epsilon, or take fewer local steps "
            "(run.rounds, train.local_steps) or a smaller train.batch_size",
        ) from e


def record_batch_needed(cfg: FederationConfig, examples: int, dimensions: int) -> int | None:
    """The smallest expected batch that brings a holder's DP-SGD ratio within the bound
    (a larger batch raises the sampling rate and so the multiplier a target epsilon
    needs; the ratio still falls with the batch), or None if even every record a step
    does not."""

    def within(b: int) -> bool:
        try:
            return not record_plan(cfg, examples, dimensions, batch=b).swamped
        except ZenfedError:  # no multiplier reaches the target at this rate: no good either
            return False

    lo, hi = 1, max(1, min(cfg.train.batch_size, examples))
    while not within(hi):  # double the batch until it is within (or all records are not)
        if hi == examples:
            return None
        lo, hi = hi + 1, min(2 * hi, examples)
    while lo < hi:  # within(hi) holds
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if within(mid) else (mid + 1, hi)
    return lo


def record_swamping_warning(
    p: RecordPlan, needed: int | None = None, searched: bool = False
) -> str | None:
    """The warning a swamped DP-SGD plan deserves (None within the bound); ``needed``:
    record_batch_needed's answer, if ``searched``."""
    if not p.swamped:
        return None
    more = ""
    if searched:
        more = (
            f"; an expected batch of {needed:,} of its records would keep it below"
            if needed is not None
            else "; no batch of its records keeps it below"
        )
    return (
        f"record-level DP-SGD will swamp the gradient: the noise per coordinate of a "
        f"step's mean is {p.ratio:.1f}x the largest possible mean gradient's (z "
        f"{p.noise_multiplier:.3g}, {p.dimensions:,} noised values, expected batch "
        f"{p.expected_batch:.1f} of {p.examples:,} records), above privacy.warn_noise_ratio "
        f"= {p.bound:g}{more}; fewer noised values (lora.freeze_a, a lower lora.r) or a "
        "larger privacy.record_target_epsilon help"
    )
