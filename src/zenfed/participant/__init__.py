"""The participant agent (transport-agnostic)."""

from zenfed.participant.agent import Participant, ParticipantState, Runtime

__all__ = ["Participant", "ParticipantState", "Runtime"]
