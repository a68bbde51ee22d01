"""In-memory transport: the simulation's wire. Every participant runs its one loop
(``zenfed.participant.loop``) against the coordinator's port through direct calls.

    transport = InMemoryTransport(port, participants, drop=...)
    moved = transport.settle(on_done=lambda pid: ...)   # every loop until all wait

No process and no thread hop. What crosses is what would cross a network, bytes: the
version a participant downloads (in full, or as the broadcasts since the one it holds)
and its encoded update; the coordinator counts both. ``settle`` advances each
participant's loop in turn (in the order of their ids) until every one is idle or waiting
for a stage; the runner then ticks the coordinator and, when nothing is due, moves its
virtual clock to the next deadline. A participant that fails a task (say, a NaN loss) is
recorded in ``failures`` and is not handed that task again in its round.

``drop(stage, participant)`` injects dropouts: a participant it names stops at that stage
of the round (before taking a training task, or before a secure-aggregation stage).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from zenfed.coordinator.port import CoordinatorPort
from zenfed.errors import ZenfedError
from zenfed.participant.agent import Participant
from zenfed.participant.loop import Done, Event, Failed, run_participant
from zenfed.protocol.messages import EvalReport, Task, Update
from zenfed.protocol.port import StageInput, StageMessage
from zenfed.protocol.secagg import STAGES

Drop = Callable[[str, str], bool]


class Dropped(ZenfedError):
    """An injected dropout."""


class InMemoryPort:
    """One participant's view of the coordinator's port (a ``ParticipantPort``)."""

    def __init__(self, port: CoordinatorPort, pid: str, drop: Drop, failures: dict[str, str]):
        self.port, self.pid, self.drop, self.failures = port, pid, drop, failures
        self.gone: int | None = None  # the round it dropped out of before taking its task
        self.just_dropped = False

    def task(self) -> Task | None:
        """The participant's task (None if it drops out before taking it)."""
        t = self.port.task(self.pid)
        if t is None or t.kind != "train":
            return t
        if self.gone == t.round:
            return None
        first = STAGES[0] if t.secagg is not None else "masked_input"
        if self.drop(first, self.pid):
            where = f" at {first}" if t.secagg is not None else ""
            self.failures[self.pid] = f"dropped out{where} (injected)"
            self.gone, self.just_dropped = t.round, True
            return None
        return t

    def download(self, version: str, held: str | None) -> bytes:
        """Bytes of the version, counted by the coordinator."""
        return self.port.download(self.pid, version, held)

    def stage_get(self, server_round: int, stage: str) -> StageInput | None:
        """What the stage needs (Dropped if the participant drops out here)."""
        if self.drop(stage, self.pid):
            raise Dropped(f"dropped out at {stage} (injected)", fix="")
        return self.port.stage_get(self.pid, server_round, stage)

    def stage_post(self, server_round: int, stage: str, message: StageMessage) -> None:
        """A stage message, delivered."""
        self.port.stage_post(self.pid, server_round, stage, message)

    def upload(self, update: Update) -> str:
        """An update, delivered."""
        return self.port.upload(update)

    def report(self, report: EvalReport) -> None:
        """An evaluation report, delivered."""
        self.port.report(report)


class InMemoryTransport:
    """Every participant's loop against one coordinator port, advanced in turn."""

    def __init__(
        self,
        port: CoordinatorPort,
        participants: dict[str, Participant],
        drop: Drop | None = None,
    ) -> None:
        self.port = port
        self.failures: dict[str, str] = {}
        never: Drop = lambda stage, pid: False  # noqa: E731
        self.ports = {
            pid: InMemoryPort(port, pid, drop or never, self.failures) for pid in participants
        }
        self.loops: dict[str, Iterator[Event]] = {
            pid: run_participant(self.ports[pid], p) for pid, p in participants.items()
        }

    def settle(self, on_done: Callable[[str], None] | None = None) -> bool:
        """Advance every loop until each is idle or waiting; whether any task ended."""
        moved = False
        while True:
            progress = False
            for pid in sorted(self.loops):
                event = next(self.loops[pid], None)
                if isinstance(event, Failed):
                    self.failures[pid] = str(event.error)
                if isinstance(event, Done | Failed) or self.ports[pid].just_dropped:
                    self.ports[pid].just_dropped = False
                    progress = True
                    if on_done is not None:
                        on_done(pid)
            if not progress:
                return moved
            moved = True
