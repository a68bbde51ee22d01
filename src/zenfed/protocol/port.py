"""The coordinator as a participant sees it: the messages of a round and nothing else.

    task = port.task()                        # None: nothing to do now
    payload = port.download(task.version, held)
    port.stage_post(r, "advertise_keys", keys); got = port.stage_get(r, "share_keys")
    status = port.upload(update)              # "accepted" | "duplicate"
    port.report(eval_report)

One participant's loop (``zenfed.participant.loop``) speaks only this. The in-memory
transport implements it with direct calls into the coordinator (the simulation); the
HTTP client implements it with signed requests (``zenfed join``). Stage messages are the
plain data of ``zenfed.protocol.secagg``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from zenfed.errors import ZenfedError
from zenfed.protocol.messages import EvalReport, Task, Update
from zenfed.protocol.secagg import AdvertiseKeys, UnmaskRequest


class FederationFinished(ZenfedError):
    """The coordinator has run every round: nothing more to do."""


@dataclass(frozen=True)
class NeighbourKeys:
    """Stage 2 input: the neighbours' advertised keys and their Ed25519 identity keys."""

    keys: dict[str, AdvertiseKeys]
    identities: dict[str, bytes]


@dataclass(frozen=True)
class Shares:
    """Encrypted shares by participant: what a participant sends in stage 2 (to each
    neighbour), receives before stage 3 (its inbox) and sends in stage 4 (to unmask)."""

    shares: dict[str, bytes]


StageInput = NeighbourKeys | Shares | UnmaskRequest
StageMessage = AdvertiseKeys | Shares


class ParticipantPort(Protocol):
    """What one participant can ask of and tell the coordinator."""

    def task(self) -> Task | None:
        """This participant's task now (None: none; FederationFinished: never again)."""
        ...

    def download(self, version: str, held: str | None) -> bytes:
        """Version ``version`` as bytes: in full, or as the broadcasts since ``held``."""
        ...

    def stage_get(self, server_round: int, stage: str) -> StageInput | None:
        """What secure-aggregation ``stage`` needs, once it has begun (None before)."""
        ...

    def stage_post(self, server_round: int, stage: str, message: StageMessage) -> None:
        """This participant's message for ``stage``."""
        ...

    def upload(self, update: Update) -> str:
        """Send a training result: "accepted", or "duplicate" for a retried one."""
        ...

    def report(self, report: EvalReport) -> None:
        """Send an evaluation result."""
        ...
