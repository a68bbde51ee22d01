"""Accumulators: where a round's accepted updates go until it closes.

    acc = StreamingMean()                       # or KeepAll(build_rule(spec), seed=...)
    acc.add("clinic", tensors, weight=120.0)
    agg = acc.result()                          # Aggregate(total, weight, count, below)
    mean = agg.mean()

``StreamingMean`` keeps a float64 running sum (memory O(model) however many arrive);
``KeepAll`` keeps every update (or a way to load it back: ``spill`` turns tensors into a
loader, which a deployment points at its blob store) for rules that need each one. Both
cap any one update's share of the round's weight at ``max_share`` (``shares.py``); the
streaming mean keeps the few heaviest updates aside to take their excess back out. The
result is an ``Aggregate``: the weighted sum, its total weight, the count, the sum of
the centred clip bits adaptive clipping reports, and the weight each participant's update
had in it. A privacy policy noises the sum and
may replace the weight by a fixed denominator before the mean is taken; the masked sum of
secure aggregation (``zenfed.coordinator.secure``) gives an Aggregate too.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from zenfed.aggregate.registry import AggregationRule
from zenfed.aggregate.shares import cap_shares, most_capped
from zenfed.errors import ZenfedError
from zenfed.tensors import Tensors

Loader = Callable[[], Tensors]


@dataclass(frozen=True)
class Aggregate:
    """A round's combined updates before the server step.

    ``total`` is the weighted sum (in the space the updates travelled in: ``decode``,
    if set, maps it to the adapter's tensors, linearly); the mean is total / weight.
    """

    total: Tensors
    weight: float
    count: int
    below: float = 0.0  # sum over updates of ([norm <= clip] - 1/2)
    decode: Callable[[Tensors], Tensors] | None = field(default=None, compare=False)
    # Whose updates went in, each with the weight it had (capped): what a version records.
    weights: Mapping[str, float] = field(default_factory=dict, compare=False)

    def mean(self) -> Tensors:
        """The aggregate update: decode(total) / weight, float32."""
        total = self.decode(self.total) if self.decode is not None else self.total
        return {k: (v.to(torch.float64) / self.weight).to(torch.float32) for k, v in total.items()}

    @classmethod
    def of_rule(
        cls,
        result: Tensors,
        weight: float,
        count: int,
        below: float,
        weights: Mapping[str, float] | None = None,
    ) -> Aggregate:
        """A rule's result as an aggregate whose mean is that result (total weight
        ``weight``, from ``count`` updates, ``weights`` each participant's)."""
        total = {k: v.to(torch.float64) * weight for k, v in result.items()}
        return cls(total, weight, count, below, weights=dict(weights or {}))

    def with_total(self, total: Tensors, weight: float | None = None) -> Aggregate:
        """The same aggregate with another sum (noised) and, optionally, weight."""
        return replace(self, total=total, weight=self.weight if weight is None else weight)


class Accumulator(Protocol):
    """Where accepted updates go."""

    def add(self, participant: str, tensors: Tensors, weight: float, below: float = 0.0) -> None:
        """Fold in one accepted update with its aggregation weight."""
        ...

    def result(self) -> Aggregate:
        """What the round's updates combine to (ZenfedError if none arrived)."""
        ...


class StreamingMean:
    """A running weighted sum in float64: the aggregate of FedAvg, O(model) memory.

    With a cap on shares (``max_share`` < 1) it also keeps aside the updates of the few
    heaviest participants (fewer than 1 / max_share: one at the default 0.5), the only
    ones the cap can bind, and takes their excess weight back out of the sum at the end.
    """

    def __init__(self, max_share: float = 1.0) -> None:
        self._sum: Tensors = {}
        self.weight = 0.0
        self.count = 0
        self.below = 0.0
        self.max_share = max_share
        self.weights: dict[str, float] = {}
        self._heavy: dict[str, Tensors] = {}  # the heaviest updates, as added

    def add(self, participant: str, tensors: Tensors, weight: float, below: float = 0.0) -> None:
        """Add ``weight * tensors``; the first update fixes names and shapes."""
        _positive(weight)
        if not self._sum:
            self._sum = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in tensors.items()}
        for k, v in tensors.items():
            self._sum[k].add_(v, alpha=weight)  # accumulated in float64, without a copy
        self.weight += weight
        self.count += 1
        self.below += below
        self.weights[participant] = weight
        self._keep_if_heavy(participant, tensors)

    def _keep_if_heavy(self, participant: str, tensors: Tensors) -> None:
        """Keep ``participant``'s update aside if it is among the heaviest so far (the
        earlier among equals: any capped update weighs more than every uncapped one)."""
        keep, weight = most_capped(self.max_share), self.weights[participant]
        if not keep:
            return
        if len(self._heavy) >= keep:
            lightest = min(self._heavy, key=lambda p: self.weights[p])
            if weight <= self.weights[lightest]:
                return
            del self._heavy[lightest]
        self._heavy[participant] = {k: v.clone() for k, v in tensors.items()}

    def result(self) -> Aggregate:
        """The weighted sum so far, with every weight capped at ``max_share``."""
        _nonempty(self.count)
        capped = cap_shares(self.weights, self.max_share)
        total = dict(self._sum)
        for p, w in capped.items():
            excess = self.weights[p] - w
            if excess > 0:  # only the heaviest are capped, and they are kept
                kept = self._heavy[p]
                total = {k: v - excess * kept[k].to(torch.float64) for k, v in total.items()}
        weight = float(sum(capped.values()))
        return Aggregate(total, weight, self.count, self.below, weights=capped)


class KeepAll:
    """Every update of the round, for a rule that needs each one (median, Krum, ...).

    ``spill(participant, tensors)`` may return a loader instead of keeping the tensors in
    memory (a deployment reads them back from its blob store when the round closes).
    """

    def __init__(
        self,
        rule: AggregationRule,
        spill: Callable[[str, Tensors], Loader] | None = None,
        seed: int = 0,
        max_share: float = 1.0,
    ) -> None:
        self.rule = rule
        self.seed = seed  # the round's: how a bucketed rule draws its buckets
        self.max_share = max_share
        self.spill = spill or (lambda _pid, t: lambda: t)
        self._kept: list[tuple[str, Loader, float]] = []
        self.below = 0.0

    def add(self, participant: str, tensors: Tensors, weight: float, below: float = 0.0) -> None:
        """Keep the update (or its loader)."""
        _positive(weight)
        self._kept.append((participant, self.spill(participant, tensors), weight))
        self.below += below

    def __len__(self) -> int:
        return len(self._kept)

    def updates(self) -> dict[str, Tensors]:
        """Every kept update by participant (loaded back if spilled)."""
        return {pid: load() for pid, load, _ in self._kept}

    def result(self, without: Collection[str] = ()) -> Aggregate:
        """The rule over every kept update (but those of ``without``: poisoning detection
        leaves flagged ones out), their weights capped at ``max_share``, as an aggregate
        whose mean is the rule's result (in participant order, so the result does not
        depend on arrival order)."""
        kept = sorted((k for k in self._kept if k[0] not in without), key=lambda x: x[0])
        _nonempty(len(kept))
        capped = cap_shares({p: w for p, _, w in kept}, self.max_share)
        weights = [capped[p] for p, _, _ in kept]
        combined = self.rule.combine([load() for _, load, _ in kept], weights, self.seed)
        return Aggregate.of_rule(combined, float(sum(weights)), len(kept), self.below, capped)


def _positive(weight: float) -> None:
    if not weight > 0:
        raise ZenfedError(
            f"update weight must be positive, got {weight}", fix="report num_examples > 0"
        )


def _nonempty(count: int) -> None:
    if not count:
        raise ZenfedError("no updates to aggregate", fix="wait for at least one update")
