"""The coordinator: the round engine and its parts, the one port every transport drives,
and the deployment's persistent coordinator (transport-agnostic: no HTTP here)."""

from zenfed.coordinator.engine import Coordinator, RoundAborted
from zenfed.coordinator.port import CoordinatorPort
from zenfed.coordinator.state import Commit, CoordinatorState
from zenfed.coordinator.strategy import Strategy, sample_participants
from zenfed.coordinator.validate import UpdateRejected

__all__ = [
    "Commit",
    "Coordinator",
    "CoordinatorPort",
    "CoordinatorState",
    "RoundAborted",
    "Strategy",
    "UpdateRejected",
    "sample_participants",
]
