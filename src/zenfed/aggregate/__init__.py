"""Aggregators (pure functions over updates and weights) and server optimizers."""

from zenfed.aggregate.fedavg import WeightedMean, fedavg
from zenfed.aggregate.server_opt import SERVER_OPTIMIZERS, ServerOptState, server_step

__all__ = ["SERVER_OPTIMIZERS", "ServerOptState", "WeightedMean", "fedavg", "server_step"]
