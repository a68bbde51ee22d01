"""Aggregation: rules (pure functions over updates and weights, a registry), accumulators
(where a round's updates wait) and server optimizers (state in, state out)."""

from zenfed.aggregate.accumulate import Accumulator, Aggregate, KeepAll, StreamingMean
from zenfed.aggregate.registry import RULES, AggregationRule, build_rule
from zenfed.aggregate.rules import fedavg, median
from zenfed.aggregate.server_opt import SERVER_OPTIMIZERS, ServerOptState, server_step

__all__ = [
    "RULES",
    "SERVER_OPTIMIZERS",
    "Accumulator",
    "Aggregate",
    "AggregationRule",
    "KeepAll",
    "ServerOptState",
    "StreamingMean",
    "build_rule",
    "fedavg",
    "median",
    "server_step",
]
