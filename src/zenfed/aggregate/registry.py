"""The rules ``[server] aggregator`` names, with their parameters and stated assumptions.

    rule = build_rule(AggregatorSpec(rule="krum", f=1, m=3))
    update = rule.combine(updates, weights, seed=round_seed)
    rule.tolerates(10)        # how many of 10 updates may be arbitrary: 1

A rule marked ``streaming`` is a weighted mean: the coordinator folds updates into a
running sum as they arrive (memory O(model)), and secure aggregation, which reveals only
the sum, computes it. Any other rule needs every update of the round: the coordinator
keeps them (spilled to the blob store in a deployment). Under secure aggregation such a
rule runs only with ``bucket``: each bucket's sum is one secure sum, and the rule combines
the bucket means (Karimireddy, He, Jaggi 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from zenfed.aggregate import robust
from zenfed.aggregate.rules import fedavg, median
from zenfed.config import RULE_PARAMS, AggregatorSpec
from zenfed.errors import ZenfedError
from zenfed.tensors import Tensors


@dataclass(frozen=True)
class RuleInfo:
    """A registered rule: its function, whether it streams, what it assumes."""

    fn: Callable[..., Tensors]
    streaming: bool
    assumption: str


RULES: dict[str, RuleInfo] = {
    "fedavg": RuleInfo(fedavg, True, "every participant is honest"),
    "median": RuleInfo(median, False, "fewer than half of the updates are bad"),
    "trimmed_mean": RuleInfo(robust.trimmed_mean, False, "at most floor(beta * n) updates are bad"),
    "krum": RuleInfo(robust.krum, False, "at most f updates are bad, with n > 2f + 2"),
    "geometric_median": RuleInfo(
        robust.geometric_median, False, "less than half of the weight is bad"
    ),
    "norm_bound": RuleInfo(
        robust.norm_bound,
        False,
        "bad updates need a large norm to hurt (each one's pull is bounded; it out-votes no one)",
    ),
    "centered_clipping": RuleInfo(
        robust.centered_clipping, False, "a minority of the updates are bad"
    ),
}
if set(RULES) != set(RULE_PARAMS):  # the config's table of parameters names the same rules
    raise RuntimeError("zenfed.config.RULE_PARAMS and the aggregation registry disagree")


@dataclass(frozen=True)
class AggregationRule:
    """A rule with its parameters bound, optionally applied over buckets of ``bucket``."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    bucket: int | None = None

    @property
    def streaming(self) -> bool:
        """Whether a running weighted sum computes it (no bucketing, a mean)."""
        return RULES[self.name].streaming and self.bucket is None

    def describe(self) -> str:
        """E.g. ``krum(f=1, m=3) over buckets of 2``."""
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        over = f" over buckets of {self.bucket}" if self.bucket else ""
        return f"{self.name}({args}){over}"

    def combine(
        self, updates: Sequence[Tensors], weights: Sequence[float], seed: int = 0
    ) -> Tensors:
        """The rule's result over ``updates`` (over their bucket means, bucketed by
        ``seed``). ZenfedError if there are too few updates for the rule's setting."""
        if self.bucket:
            updates, weights = robust.bucket(updates, weights, s=self.bucket, seed=seed)
        return RULES[self.name].fn(updates, weights, **self.params)

    def combine_buckets(self, means: Sequence[Tensors], weights: Sequence[float]) -> Tensors:
        """The rule over bucket means already formed (secure aggregation's bucket sums)."""
        return RULES[self.name].fn(means, weights, **self.params)

    def tolerates(self, n: int) -> int:
        """How many of n participants may send arbitrary updates (one bad update spoils
        at most its bucket)."""
        groups = math.ceil(n / self.bucket) if self.bucket else n
        return robust.tolerated(self.name, groups, self.params) if groups else 0

    def minimum(self) -> int:
        """The fewest updates (buckets, if bucketed) the rule can combine."""
        return 2 * int(self.params["f"]) + 3 if self.name == "krum" else 1

    def check_count(self, n: int) -> None:
        """ZenfedError unless ``n`` updates are enough for the rule as configured."""
        self.check_groups(math.ceil(n / self.bucket) if self.bucket else n, n)

    def check_groups(self, groups: int, n: int) -> None:
        """ZenfedError unless ``groups`` (buckets of the ``n`` updates, if bucketed; else
        the updates themselves) are enough for the rule."""
        if groups < self.minimum():
            what = f"{groups} buckets of {n} updates" if self.bucket else f"{n} updates"
            raise ZenfedError(
                f"server.aggregator = {self.describe()} needs at least {self.minimum()} "
                f"{'buckets' if self.bucket else 'updates'} a round, got {what}",
                fix="sample larger cohorts (sampling.fraction, sampling.min_participants) "
                "or choose a setting it can meet",
            )


def build_rule(spec: AggregatorSpec) -> AggregationRule:
    """The rule ``spec`` names, its parameters checked by a trial on tiny updates (so an
    impossible value fails at start-up, with the rule's own message)."""
    rule = AggregationRule(spec.rule, spec.params, spec.bucket)
    n = max(3, rule.minimum(), int(spec.m or 1) + int(spec.f or 0))
    trial = [{"x": torch.tensor([float(i)])} for i in range(n)]
    try:
        rule.combine_buckets(trial, [1.0] * len(trial))
    except ZenfedError as e:
        raise ZenfedError(f"server.aggregator = {rule.describe()}: {e.problem}", fix=e.fix) from e
    return rule
