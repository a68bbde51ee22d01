"""In-memory transport: the simulation's wire. Tasks and updates are passed by reference.

    transport = InMemoryTransport(coordinator, participants)
    failures = transport.run(tasks, on_done=lambda pid: ...)

No process and no thread hop: the participant is called directly. What crosses is what
would cross a network, bytes: the version it downloads (in full, or as the broadcasts
since the one it holds) and its encoded update; the coordinator counts both. A
participant that raises a ZenfedError (say, a NaN loss) is recorded as a failure for the
round; the round goes on without it.

A round with secure aggregation runs its four stages here in order (advertise keys,
share keys, train and upload masked, unmask), each a method call on both sides and each
closed once every live participant answered. ``drop(stage, participant)`` injects
dropouts: a participant it names stops answering from that stage on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from zenfed.coordinator.engine import Coordinator
from zenfed.errors import ZenfedError
from zenfed.participant.agent import Participant
from zenfed.privacy.secagg import STAGES
from zenfed.protocol.messages import Task


class InMemoryTransport:
    """Deliver tasks to in-process participants and their results to the coordinator."""

    def __init__(
        self,
        coordinator: Coordinator,
        participants: dict[str, Participant],
        drop: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.participants = participants
        self.drop = drop or (lambda stage, pid: False)

    def run(
        self, tasks: Sequence[Task], on_done: Callable[[str], None] | None = None
    ) -> dict[str, str]:
        """Run every task; returns {participant: error} for those that failed."""
        if tasks and tasks[0].secagg is not None:
            return self._run_secure(tasks, on_done)
        failures: dict[str, str] = {}
        for task in tasks:
            p = self.participants[task.participant]

            def download(version: str, held: str | None, pid: str = task.participant) -> bytes:
                return self.coordinator.download(version, held, pid)

            try:
                if task.kind == "train" and self.drop("masked_input", task.participant):
                    failures[task.participant] = "dropped out (injected)"
                elif task.kind == "train":
                    self.coordinator.submit(p.train(task, download))
                else:
                    self.coordinator.submit_evaluation(p.evaluate(task, download))
            except ZenfedError as e:
                failures[task.participant] = str(e)
            if on_done is not None:
                on_done(task.participant)
        return failures

    def _run_secure(
        self, tasks: Sequence[Task], on_done: Callable[[str], None] | None
    ) -> dict[str, str]:
        """The four stages of SecAgg+ for a training round (the coordinator closes each)."""
        coord, server = self.coordinator, self.coordinator.secagg
        failures: dict[str, str] = {}
        live = {t.participant: t for t in tasks}

        def step(stage: str, act: Callable[[Task, Participant], None]) -> None:
            for pid, task in list(live.items()):
                if self.drop(stage, pid):
                    failures[pid] = f"dropped out at {stage} (injected)"
                    del live[pid]
                    continue
                try:
                    act(task, self.participants[pid])
                except ZenfedError as e:
                    failures[pid] = f"{stage}: {e}"
                    del live[pid]

        def advertise(task: Task, p: Participant) -> None:
            server.receive_keys(p.secagg_advertise(task))

        def share(task: Task, p: Participant) -> None:
            keys = server.keys_for(task.participant)
            vks = {v: server.verify_keys[v] for v in keys if v in server.verify_keys}
            server.receive_shares(task.participant, p.secagg_share(keys, vks))

        def train(task: Task, p: Participant) -> None:
            p.secagg_receive(server.inbox(task.participant))

            def download(version: str, held: str | None) -> bytes:
                return coord.download(version, held, task.participant)

            coord.submit(p.train(task, download))

        def unmask(task: Task, p: Participant) -> None:
            server.receive_unmask(task.participant, p.secagg_unmask(request))

        for stage, act in zip(STAGES[:3], (advertise, share, train), strict=True):
            step(stage, act)
            server.close_stage()  # SecAggAborted below the survivors needed
        request = server.unmask_request()
        live = {pid: t for pid, t in live.items() if pid in request.survivors}
        step("unmask", unmask)
        for t in tasks:
            if on_done is not None:
                on_done(t.participant)
        return failures
