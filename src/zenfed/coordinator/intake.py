"""How updates enter a round: in the clear, or masked by secure aggregation.

    intake = intake_for(cfg, codecs, rule, privacy, policy, screen, spill)   # codecs(spec)
    tasks, accumulator, secure = intake.open(tasks, seed, keys)   # at the round's start
    tensors = intake.check(r, update, task)      # decoded and checked (or the masked words)
    intake.accept(r, update, tensors, task)      # into the round's accumulator

In the clear (``PlainIntake``) an update is decoded by the codec pipeline, checked finite,
clipped and weighed by the privacy policy, weighed by the round policy (staleness), and
folded into a streaming mean or kept for a robust rule. Masked (``MaskedIntake``,
``[secagg]``) the round's accumulator is its SecAgg+ server (``secure.py``): tasks carry
their setups, an upload is a vector of masked words, and only the survivors' sum is ever
unmasked, each update already weighted by its participant before masking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from zenfed.aggregate import Accumulator
from zenfed.aggregate.registry import AggregationRule
from zenfed.compress import CodecError, Pipeline
from zenfed.config import FederationConfig
from zenfed.coordinator.rounds import OpenRound, RoundPolicy, Spill, accumulator_for
from zenfed.coordinator.screening import Screen
from zenfed.coordinator.secure import SecureRound
from zenfed.coordinator.validate import UpdateRejected, check_finite
from zenfed.privacy.policy import PrivacyPolicy
from zenfed.protocol.adapter import AdapterSpec
from zenfed.protocol.messages import Task, Update
from zenfed.tensors import Tensors

Opened = tuple[list[Task], Accumulator, SecureRound | None]


class PlainIntake:
    """Updates in the clear: decoded, clipped, weighed, then accumulated."""

    secure = False

    def __init__(
        self,
        cfg: FederationConfig,
        codecs: Callable[[AdapterSpec], Pipeline],
        rule: AggregationRule,
        privacy: PrivacyPolicy,
        policy: RoundPolicy,
        screen: Screen | None,
        spill: Spill | None,
    ) -> None:
        self.cfg, self.codecs, self.rule = cfg, codecs, rule
        self.privacy, self.policy, self.screen, self.spill = privacy, policy, screen, spill

    def open(self, tasks: list[Task], seed: int, keys: Mapping[str, bytes]) -> Opened:
        """The tasks as they are, and a streaming mean or a keep-every-update accumulator."""
        return tasks, self._accumulator(seed), None

    def _accumulator(self, seed: int) -> Accumulator:
        cap = self.cfg.weight_cap
        return accumulator_for(self.rule, self.screen, self.spill, seed, cap)

    def restore(self, tasks: list[Task], seed: int, keys: Mapping[str, bytes]) -> Opened:
        """A stored round's accumulator, empty (its updates are replayed into it)."""
        return self.open(tasks, seed, keys)

    def check(self, r: OpenRound, update: Update, task: Task) -> Tensors:
        """The payload decoded for its task's adapter shape and against the round's codec
        seed, every value finite."""
        spec = task.spec
        if update.adapter != spec.id:
            raise UpdateRejected(
                f"update from '{update.participant}' is for adapter spec "
                f"'{update.adapter[:100]}', its task's is '{spec.id}'",
                fix="train the adapter shape the task gives",
                reason="payload",
            )
        try:
            tensors = self.codecs(spec).unpack(update.payload, shared_seed=task.codec_seed)
        except CodecError as e:
            raise UpdateRejected(
                f"update from '{update.participant}': {e.problem}", fix=e.fix, reason="payload"
            ) from e
        check_finite(update.participant, tensors)
        return tensors

    def accept(self, r: OpenRound, update: Update, tensors: Tensors, task: Task) -> None:
        """Clipped and weighed by the privacy policy, weighed for staleness, accumulated."""
        tensors, weight, below = self.privacy.prepare(task, tensors, update.num_examples)
        tensors = self.policy.weigh(r, update.participant, tensors)
        spec = task.spec
        if spec.id and spec.id not in r.by_spec:  # a shape's first update this round
            r.by_spec[spec.id] = self._accumulator(r.codec_seed)
        r.specs[spec.id] = spec
        r.accumulator_of(spec.id).add(update.participant, tensors, weight, below)


class MaskedIntake:
    """Updates masked by SecAgg+: the round's accumulator is its secure-aggregation
    server, which only ever reveals the survivors' sum."""

    secure = True

    def __init__(self, cfg: FederationConfig, codec: Pipeline, rule: AggregationRule) -> None:
        SecureRound.check_setup(codec, rule)  # a linear codec, a rule a sum can compute
        self.cfg, self.codec, self.rule = cfg, codec, rule

    def open(self, tasks: list[Task], seed: int, keys: Mapping[str, bytes]) -> Opened:
        """Each task with its participant's SecAgg+ setup, and the round's server."""
        tasks, server = SecureRound.attach(
            tasks, self.cfg.secagg, dict(keys), self.codec, self.rule
        )
        return tasks, server, server

    def restore(self, tasks: list[Task], seed: int, keys: Mapping[str, bytes]) -> Opened:
        """The stored round's server from the setups its tasks carry."""
        server = SecureRound(tasks, self.cfg.secagg, dict(keys), self.codec, self.rule)
        return tasks, server, server

    def check(self, r: OpenRound, update: Update, task: Task) -> Tensors:
        """The masked words, checked against the round's server."""
        assert r.secure is not None
        return r.secure.check(update)

    def accept(self, r: OpenRound, update: Update, tensors: Tensors, task: Task) -> None:
        """Into the masked sum (its weight was applied before masking)."""
        assert r.secure is not None
        r.secure.add(update.participant, tensors, task.weight)


Intake = PlainIntake | MaskedIntake


def intake_for(
    cfg: FederationConfig,
    codecs: Callable[[AdapterSpec], Pipeline],
    rule: AggregationRule,
    privacy: PrivacyPolicy,
    policy: RoundPolicy,
    screen: Screen | None,
    spill: Spill | None,
) -> Intake:
    """Masked under ``[secagg]``, in the clear otherwise."""
    if cfg.secagg.enabled:
        return MaskedIntake(cfg, codecs(AdapterSpec()), rule)
    return PlainIntake(cfg, codecs, rule, privacy, policy, screen, spill)
