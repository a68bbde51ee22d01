"""The participant's loop, written once: take a task, answer the secure-aggregation stages,
train (or evaluate), send the result; until the federation has finished.

    for event in run_participant(port, participant):   # zenfed join: a blocking port
        print(event)
    loops = {p: run_participant(port_of(p), p) for p in ...}   # the simulation: one each,
    ...                                                        # advanced in turn

The loop is a generator over a ``ParticipantPort`` (``zenfed.protocol.port``). It yields
an event whenever it cannot go on without the coordinator (``Idle``: no task now;
``Waiting``: a stage has not begun) and after each task (``Done``, ``Failed``). Over HTTP
the port's calls long-poll, so the caller just keeps iterating; in the simulation the
in-memory transport advances every participant's loop until all of them wait, then lets
the coordinator's clock move. A task that fails (a refused upload, a stage that is over,
a NaN loss) is reported as ``Failed`` and not taken again; a retried round is a new task
(its deadline differs).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from zenfed.errors import ZenfedError
from zenfed.participant.agent import Download
from zenfed.protocol.messages import EvalReport, Task, Update
from zenfed.protocol.port import FederationFinished, NeighbourKeys, ParticipantPort, Shares
from zenfed.protocol.secagg import AdvertiseKeys, UnmaskRequest


@dataclass(frozen=True)
class Idle:
    """No task for this participant now."""


@dataclass(frozen=True)
class Waiting:
    """A secure-aggregation stage this participant needs has not begun."""

    round: int
    stage: str


@dataclass(frozen=True)
class Done:
    """A task carried out: ``status`` is the coordinator's answer to its result;
    ``warning`` says what went wrong after it (a secure round's unmask stage)."""

    task: Task
    status: str
    loss: float
    warning: str = ""


@dataclass(frozen=True)
class Failed:
    """A task that could not be carried out (not retried in its round)."""

    task: Task
    error: ZenfedError


Event = Idle | Waiting | Done | Failed


class Worker(Protocol):
    """What the loop asks of a participant: ``Participant``, or a stand-in for one that
    works elsewhere (``sim.ray_backend.RemoteParticipant``, on a Ray actor)."""

    def train(self, task: Task, download: Download) -> Update:
        """Train for ``task``; the update."""
        ...

    def evaluate(self, task: Task, download: Download) -> EvalReport:
        """Evaluate ``task``'s version; the report."""
        ...

    def secagg_advertise(self, task: Task) -> AdvertiseKeys:
        """Secure aggregation: this participant's public keys."""
        ...

    def secagg_share(
        self, keys: dict[str, AdvertiseKeys], verify_keys: dict[str, bytes]
    ) -> dict[str, bytes]:
        """Secure aggregation: the shares for its neighbours."""
        ...

    def secagg_receive(self, inbox: dict[str, bytes]) -> None:
        """Secure aggregation: the neighbours' shares."""
        ...

    def secagg_unmask(self, request: UnmaskRequest) -> dict[str, bytes]:
        """Secure aggregation: what unmasks the survivors' sum."""
        ...


W = TypeVar("W", bound=Worker)
IDLE = Idle()


def run_participant(
    port: ParticipantPort,
    participant: W,
    on_result: Callable[[W], None] | None = None,
) -> Iterator[Event]:
    """Work for the coordinator behind ``port`` until it says the federation has finished.

    ``on_result`` runs as soon as a training result is accepted (``zenfed join`` saves the
    participant's state there, so a restart loses nothing it had). A task that failed is
    not taken again (a retried round is a new task: it has another deadline)."""
    failed: set[tuple[str, int, float]] = set()
    while True:
        try:
            task = port.task()
        except FederationFinished:
            return
        if task is None or (task.kind, task.round, task.deadline) in failed:
            yield IDLE
            continue
        try:
            done = yield from run_task(port, participant, task, on_result)
        except ZenfedError as e:
            failed.add((task.kind, task.round, task.deadline))
            yield Failed(task, e)
            continue
        yield done


def run_task(
    port: ParticipantPort,
    p: W,
    task: Task,
    on_result: Callable[[W], None] | None = None,
) -> Generator[Event, None, Done]:
    """One task through ``port``: evaluate; or train and upload, inside the stages of
    secure aggregation when the task carries a setup."""
    if task.kind == "evaluate":
        report = p.evaluate(task, port.download)
        port.report(report)
        return Done(task, "reported", report.loss_sum / max(1, report.num_tokens))
    r = task.round
    if task.secagg is not None:
        port.stage_post(r, "advertise_keys", p.secagg_advertise(task))
        keys = yield from _stage(port, r, "share_keys", NeighbourKeys)
        port.stage_post(r, "share_keys", Shares(p.secagg_share(keys.keys, keys.identities)))
        inbox = yield from _stage(port, r, "masked_input", Shares)
        p.secagg_receive(inbox.shares)
    update = p.train(task, port.download)
    status = port.upload(update)
    if on_result is not None:  # accepted (or a retry of an accepted one): keep the state
        on_result(p)
    if task.secagg is None:
        return Done(task, status, update.train_loss)
    try:  # the upload stands whatever happens here; the round may go on without us
        request = yield from _stage(port, r, "unmask", UnmaskRequest)
        port.stage_post(r, "unmask", Shares(p.secagg_unmask(request)))
    except ZenfedError as e:
        return Done(task, status, update.train_loss, warning=f"unmask stage: {e}")
    return Done(task, status, update.train_loss)


T = TypeVar("T", NeighbourKeys, Shares, UnmaskRequest)


def _stage(
    port: ParticipantPort, server_round: int, stage: str, kind: type[T]
) -> Generator[Event, None, T]:
    """What ``stage`` needs, once it has begun (yielding Waiting until then)."""
    while (got := port.stage_get(server_round, stage)) is None:
        yield Waiting(server_round, stage)
    if not isinstance(got, kind):
        raise ZenfedError(f"stage {stage} answered with a {type(got).__name__}", fix="refused")
    return got


def drive(loop: Iterator[Event], log: Callable[[Event], None] = lambda e: None) -> int:
    """Run a participant's loop over a blocking port to its end; the number of its
    results the coordinator holds ("accepted", or "duplicate": a retry of an upload it
    had already stored, e.g. when the response was lost to a coordinator crash)."""
    accepted = 0
    for event in loop:
        log(event)
        accepted += isinstance(event, Done) and event.status in ("accepted", "duplicate")
    return accepted
