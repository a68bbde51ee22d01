"""The coordinator's round engine (transport-agnostic)."""

from zenfed.coordinator.engine import Coordinator, CoordinatorState, UpdateRejected
from zenfed.coordinator.strategy import Strategy, sample_participants

__all__ = ["Coordinator", "CoordinatorState", "Strategy", "UpdateRejected", "sample_participants"]
