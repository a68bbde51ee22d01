"""The coordinator: the round engine and its parts, the one port every transport drives,
and the deployment's persistent coordinator (transport-agnostic: no HTTP here)."""

from zenfed.coordinator.engine import Coordinator, RoundAborted
from zenfed.coordinator.matching import Matcher, build_matcher, sample_participants
from zenfed.coordinator.port import CoordinatorPort
from zenfed.coordinator.roster import Member, Roster
from zenfed.coordinator.state import Commit, CoordinatorState
from zenfed.coordinator.strategy import Strategy
from zenfed.coordinator.validate import UpdateRejected

__all__ = [
    "Commit",
    "Coordinator",
    "CoordinatorPort",
    "CoordinatorState",
    "Matcher",
    "Member",
    "Roster",
    "RoundAborted",
    "Strategy",
    "UpdateRejected",
    "build_matcher",
    "sample_participants",
]
