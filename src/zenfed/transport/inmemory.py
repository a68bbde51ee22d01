"""In-memory transport: the simulation's wire. Tasks and updates are passed by reference.

    transport = InMemoryTransport(coordinator, participants)
    failures = transport.run(tasks, on_done=lambda pid: ...)

No process and no thread hop: the participant is called directly. What crosses is what
would cross a network, bytes: the version it downloads (in full, or as the broadcasts
since the one it holds) and its encoded update; the coordinator counts both. A
participant that raises a ZenfedError (say, a NaN loss) is recorded as a failure for the
round; the round goes on without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from zenfed.coordinator.engine import Coordinator
from zenfed.errors import ZenfedError
from zenfed.participant.agent import Participant
from zenfed.protocol.messages import Task


class InMemoryTransport:
    """Deliver tasks to in-process participants and their results to the coordinator."""

    def __init__(self, coordinator: Coordinator, participants: dict[str, Participant]) -> None:
        self.coordinator = coordinator
        self.participants = participants

    def run(
        self, tasks: Sequence[Task], on_done: Callable[[str], None] | None = None
    ) -> dict[str, str]:
        """Run every task; returns {participant: error} for those that failed."""
        failures: dict[str, str] = {}
        for task in tasks:
            p = self.participants[task.participant]

            def download(version: str, held: str | None, pid: str = task.participant) -> bytes:
                return self.coordinator.download(version, held, pid)

            try:
                if task.kind == "train":
                    self.coordinator.submit(p.train(task, download))
                else:
                    self.coordinator.submit_evaluation(p.evaluate(task, download))
            except ZenfedError as e:
                failures[task.participant] = str(e)
            if on_done is not None:
                on_done(task.participant)
        return failures
