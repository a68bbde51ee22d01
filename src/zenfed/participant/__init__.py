"""The participant: the agent (train and evaluate on private data), its state, and its one
loop over a port to the coordinator (transport-agnostic)."""

from zenfed.participant.agent import Participant, Runtime
from zenfed.participant.loop import run_participant
from zenfed.participant.state import ParticipantState

__all__ = ["Participant", "ParticipantState", "Runtime", "run_participant"]
