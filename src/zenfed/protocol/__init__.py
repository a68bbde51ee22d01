"""The words of the federation protocol: round messages, secure-aggregation stage
messages, the participant's port to the coordinator, and signed requests (``auth``)."""

from zenfed.protocol.messages import EvalReport, GlobalVersion, Task, Update, version_id
from zenfed.protocol.port import FederationFinished, ParticipantPort

__all__ = [
    "EvalReport",
    "FederationFinished",
    "GlobalVersion",
    "ParticipantPort",
    "Task",
    "Update",
    "version_id",
]
