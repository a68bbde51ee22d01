"""The two pure steps at a round's ends: the accumulator it opens with and what its
updates combine to (screened by poisoning detection)."""

from __future__ import annotations

from collections.abc import Mapping

from zenfed.aggregate import Accumulator, Aggregate, KeepAll, StreamingMean
from zenfed.aggregate.heterogeneous import COMBINERS
from zenfed.aggregate.registry import AggregationRule
from zenfed.coordinator.rounds.base import OpenRound, RoundAborted, Spill
from zenfed.coordinator.screening import Assessment, Screen
from zenfed.coordinator.state import CoordinatorState
from zenfed.errors import ZenfedError
from zenfed.protocol.adapter import Shape


def accumulator_for(
    rule: AggregationRule,
    screen: Screen | None,
    spill: Spill | None,
    seed: int,
    max_share: float = 1.0,
) -> Accumulator:
    """What a plaintext round folds its updates into: a streaming mean when the rule is
    one and nothing screens, else every update kept (``spill`` says where; ``seed`` is the
    round's, for a rule that draws); no update's share of the weight above ``max_share``."""
    if rule.streaming and screen is None:  # screening needs every update
        return StreamingMean(max_share)
    return KeepAll(rule, spill, seed=seed, max_share=max_share)


def combine(
    r: OpenRound,
    rule: AggregationRule,
    screen: Screen | None,
    state: CoordinatorState,
    global_shapes: Mapping[str, Shape] | None = None,
    combiner: str = "zero_pad",
) -> tuple[Aggregate, Assessment | None]:
    """The round's updates combined and screened ([detect]), before privacy and the
    server step; changes nothing. Updates of several adapter shapes are combined per
    shape, then across shapes by ``combiner`` into ``global_shapes``. ZenfedError if
    nothing arrived, RoundAborted if too few did (or remain once the flagged are left out)
    for the aggregation rule."""
    if not r.received:
        raise ZenfedError(
            f"round {r.round} received no updates; the global version stays",
            fix="check the participants' errors",
        )
    if r.by_spec:
        assert global_shapes is not None
        parts = {sid: (spec, _result(r.accumulator_of(sid), rule)) for sid, spec in r.specs.items()}
        return COMBINERS[combiner](parts, global_shapes), None
    combined = _result(r.accumulator, rule)
    assessment = screen.assess_round(r.accumulator, combined, state) if screen else None
    if assessment and assessment.flags and isinstance(r.accumulator, KeepAll):
        combined = _without(r.accumulator, rule, set(assessment.flags))
    return combined, assessment


def _result(acc: Accumulator, rule: AggregationRule) -> Aggregate:
    """What ``acc`` combines to (RoundAborted if it kept too few for the rule)."""
    if isinstance(acc, KeepAll) and not rule.streaming:
        try:
            rule.check_count(len(acc))
        except ZenfedError as e:
            raise RoundAborted(e.problem, fix="the round is skipped") from e
    return acc.result()


def _without(acc: KeepAll, rule: AggregationRule, flagged: set[str]) -> Aggregate:
    """The round's result with the flagged updates left out (RoundAborted if too few
    remain for the rule, or none at all)."""
    left = len(acc) - len(flagged)
    try:
        rule.check_count(left)
        return acc.result(without=flagged)
    except ZenfedError as e:
        raise RoundAborted(
            f"{len(flagged)} flagged updates left out, {left} remain: {e.problem}",
            fix="the round is skipped",
        ) from e
