"""In-memory transport: the simulation's wire. Every participant runs its one loop
(``zenfed.participant.loop``) against the coordinator's port through direct calls.

    transport = InMemoryTransport(port, participants, drop=...)
    moved = transport.settle(on_done=lambda pid: ...)   # every loop until all wait

No process and no thread hop. What crosses is what would cross a network, bytes: the
version a participant downloads (in full, or as the broadcasts since the one it holds)
and its encoded update; the coordinator counts both. ``settle`` advances each
participant's loop in turn (in the order of their ids, or shuffled with ``shuffle``)
until every one is idle or waiting for a stage; the runner then ticks the coordinator
and, when nothing is due, moves its virtual clock to the next deadline. A participant
that fails a task (say, a NaN loss) is recorded in ``failures`` and is not handed that
task again in its round.

``drop(stage, participant)`` injects dropouts: a participant it names stops at that stage
of the round (before taking a training task, or before a secure-aggregation stage).

With simulated ``devices`` (``zenfed.transport.devices``) work takes time on the runner's
``clock``: a participant takes a training task only while it is online, and its update
travels until the time its task began plus its device's duration; until it is delivered
(``deliver``, as the clock passes it) the participant is busy. The loop hears
"in_flight" for such an upload; a refusal at delivery (a round that closed without it, a
stale buffered update) lands in ``failures``. ``next_event`` is when the next update
arrives or a participant comes online.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from zenfed.coordinator.port import CoordinatorPort
from zenfed.errors import ZenfedError
from zenfed.participant.loop import Done, Event, Failed, Worker, run_participant
from zenfed.protocol.messages import EvalReport, Task, Update
from zenfed.protocol.port import StageInput, StageMessage
from zenfed.protocol.secagg import STAGES
from zenfed.transport.devices import Devices

Drop = Callable[[str, str], bool]
# A heap of (arrival, sender, update): a participant has one update travelling at most,
# so equal arrivals order by sender and updates are never compared.
Travelling = list[tuple[float, str, Update]]


class Dropped(ZenfedError):
    """An injected dropout."""


class InMemoryPort:
    """One participant's view of the coordinator's port (a ``ParticipantPort``)."""

    def __init__(
        self,
        port: CoordinatorPort,
        pid: str,
        drop: Drop,
        failures: dict[str, str],
        timing: tuple[Devices, Callable[[], float], Travelling] | None = None,
    ):
        self.port, self.pid, self.drop, self.failures = port, pid, drop, failures
        self.gone: int | None = None  # the round it dropped out of before taking its task
        self.just_dropped = False
        self.timing = timing  # simulated devices: (devices, clock, the updates in flight)
        self.began: tuple[Task, float] | None = None  # its training task and when it began
        self.busy = False  # its update is still travelling

    def task(self) -> Task | None:
        """The participant's task (None if it drops out before taking it, or, with
        simulated devices, while it is offline or its last update is travelling)."""
        if self.timing is not None and self.busy:
            return self._evaluation_only()
        if self.timing is not None and not self.timing[0].online(self.pid, self.timing[1]()):
            return self._evaluation_only()
        t = self.port.task(self.pid)
        if t is None or t.kind != "train":
            return t
        if self.timing is not None and (self.began is None or self.began[0] != t):
            self.began = (t, self.timing[1]())
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

    def _evaluation_only(self) -> Task | None:
        t = self.port.task(self.pid)  # an evaluation measures the model: it takes no time
        return t if t is not None and t.kind == "evaluate" else None

    def upload(self, update: Update) -> str:
        """An update, delivered now, or with simulated devices sent on its way."""
        if self.timing is None or self.began is None:
            return self.port.upload(update)
        devices, _, flight = self.timing
        arrival = self.began[1] + devices.duration(self.pid, update.steps)
        heapq.heappush(flight, (arrival, self.pid, update))
        self.busy, self.began = True, None
        return "in_flight"

    def report(self, report: EvalReport) -> None:
        """An evaluation report, delivered."""
        self.port.report(report)


class InMemoryTransport:
    """Every participant's loop against one coordinator port, advanced in turn."""

    def __init__(
        self,
        port: CoordinatorPort,
        participants: Mapping[str, Worker],
        drop: Drop | None = None,
        devices: Devices | None = None,
        clock: Callable[[], float] | None = None,
        shuffle: int | None = None,
    ) -> None:
        self.port = port
        self.failures: dict[str, str] = {}
        never: Drop = lambda stage, pid: False  # noqa: E731
        self.devices = devices
        self.flight: Travelling = []
        if devices is not None and clock is None:
            raise ZenfedError("simulated devices need the simulation's clock", fix="pass clock")
        self.clock = clock or (lambda: 0.0)
        # With a seed, each pass visits the loops in a fresh random order, so who asks
        # first for free work is random (buffered aggregation), not the first id.
        self.order = np.random.default_rng(shuffle) if shuffle is not None else None
        timing = (devices, self.clock, self.flight) if devices is not None else None
        self.ports = {
            pid: InMemoryPort(port, pid, drop or never, self.failures, timing)
            for pid in participants
        }
        self.loops: dict[str, Iterator[Event]] = {
            pid: run_participant(self.ports[pid], p) for pid, p in participants.items()
        }

    def settle(self, on_done: Callable[[str], None] | None = None) -> bool:
        """Deliver the updates due, then advance every loop until each is idle or waiting,
        or until an upload closed a buffer (buffered aggregation: the runner records each
        version before the loops go on); whether any task ended."""
        moved = self.deliver()
        while self.port.closed_by_upload is None:
            progress = False
            for pid in self._order():
                if self.port.closed_by_upload is not None:
                    return True
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
        return True

    def _order(self) -> list[str]:
        pids = sorted(self.loops)
        return pids if self.order is None else [pids[i] for i in self.order.permutation(len(pids))]

    def deliver(self) -> bool:
        """Hand the coordinator every travelling update due by now, in arrival order;
        whether any was due."""
        now, due = self.clock(), False
        while self.flight and self.flight[0][0] <= now and self.port.closed_by_upload is None:
            _, _, update = heapq.heappop(self.flight)
            self.ports[update.participant].busy, due = False, True
            try:
                self.port.upload(update)
            except ZenfedError as e:  # UpdateRejected among them
                self.failures[update.participant] = f"update arrived too late: {e}"
        return due

    def next_event(self) -> float:
        """When the next update arrives or an offline participant comes online (inf with
        no devices or nothing ahead)."""
        if self.devices is None:
            return float("inf")
        now, devices = self.clock(), self.devices
        soon = [self.flight[0][0]] if self.flight else []
        soon += [
            devices.next_online(pid, now)
            for pid, port in self.ports.items()
            if not port.busy and not devices.online(pid, now)
        ]
        return min(soon, default=float("inf"))
