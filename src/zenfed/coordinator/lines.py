"""Several model lines behind one port surface: each line is its own engine and port
(its versions, state, publisher, server optimizer, privacy ledger, secure stages), and
every message goes to its sender's line.

    ports = LinePorts({"clinical": port_a, "legal": port_b}, cfg.lines.line_of)
    ports.task(pid)          # pid's line's port answers
    ports.upload_many(ups)   # each update counted by its sender's line, answers in order
    ports.tick()             # every line ticks; what each did

The lines share one roster (who is enrolled, revoked, ready); a member's line comes from
its name (``[lines] assign``). Nothing else crosses between lines, so a line's versions
are those of a federation of its members alone. With one line this is that line's port.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from zenfed.coordinator.port import CoordinatorPort, Tick, UploadResult
from zenfed.coordinator.roster import Member, Roster
from zenfed.coordinator.validate import UpdateRejected
from zenfed.errors import ZenfedError
from zenfed.protocol.messages import EvalReport, Task, Update
from zenfed.protocol.port import StageInput, StageMessage


class UnknownLine(ZenfedError):
    """A line name this federation does not have."""


class LinePorts:
    """The port surface of a coordinator with one or more model lines (see the module)."""

    def __init__(self, ports: Mapping[str, CoordinatorPort], line_of: Callable[[str], str]):
        if not ports:
            raise ZenfedError("a coordinator needs at least one line", fix="name one")
        rosters = {id(p.roster) for p in ports.values()}
        if len(rosters) != 1:
            raise ZenfedError("the lines of one coordinator share one roster", fix="pass one")
        self.ports, self.line_of = dict(ports), line_of
        self.first = next(iter(self.ports))

    # ---- which line ------------------------------------------------------------------------

    def line(self, name: str) -> CoordinatorPort:
        """The port of the line ``name`` (UnknownLine if there is none)."""
        if name not in self.ports:
            raise UnknownLine(
                f"no model line '{name}' in this federation",
                fix=f"one of: {', '.join(self.ports)}",
            )
        return self.ports[name]

    def line_name(self, pid: str) -> str:
        """The line ``pid`` trains (the first line for someone not enrolled, whose messages
        its port refuses as it would anyway)."""
        member = self.roster.get(pid)
        return self.first if member is None else self.line_of(member.name)

    def of(self, pid: str) -> CoordinatorPort:
        """The port of ``pid``'s line."""
        return self.ports[self.line_name(pid)]

    # ---- membership: the shared roster ---------------------------------------------------

    @property
    def roster(self) -> Roster:
        """Who takes part, in every line."""
        return self.ports[self.first].roster

    def enroll(self, member: Member) -> None:
        """Add ``member`` to the roster (its line comes from its name)."""
        self.ports[self.first].enroll(member)

    def ready(self, pid: str) -> bool:
        """``pid`` asked for work (see ``CoordinatorPort.ready``)."""
        return self.roster.ready(pid)

    def revoke(self, pid: str) -> None:
        """``pid`` is refused from now on, in its line's open round too."""
        self.of(pid).revoke(pid)

    # ---- participant messages, to the sender's line ---------------------------------------

    def task(self, pid: str) -> Task | None:
        """``pid``'s task now, from its line (FederationFinished once its line is done)."""
        return self.of(pid).task(pid)

    def download(self, pid: str, version: str, held: str | None) -> bytes:
        """A version of ``pid``'s line (``CoordinatorPort.download``)."""
        return self.of(pid).download(pid, version, held)

    def served(self, pid: str, nbytes: int) -> None:
        """Count bytes a transport served ``pid`` itself, in its line."""
        self.of(pid).served(pid, nbytes)

    def diff_since(self, held: str | None, version: str, full_size: int) -> bytes | None:
        """The broadcasts to ``version`` from the line whose current version it is."""
        for port in self.ports.values():
            if port.engine.version.id == version:
                return port.diff_since(held, version, full_size)
        return None

    def stage_post(self, pid: str, server_round: int, stage: str, message: StageMessage) -> None:
        """``pid``'s secure-aggregation message, to its line's stages."""
        self.of(pid).stage_post(pid, server_round, stage, message)

    def stage_get(self, pid: str, server_round: int, stage: str) -> StageInput | None:
        """What ``pid`` needs for a stage of its line's secure round."""
        return self.of(pid).stage_get(pid, server_round, stage)

    def admit(self, pid: str, server_round: int) -> None:
        """UpdateRejected unless ``pid`` may upload to ``server_round`` of its line now."""
        self.of(pid).admit(pid, server_round)

    def upload(self, update: Update) -> Literal["accepted", "duplicate"]:
        """``CoordinatorPort.upload`` on the sender's line."""
        result = self.upload_many([update])[0]
        if isinstance(result, UpdateRejected):
            raise result
        return result

    def upload_many(self, updates: Sequence[Update]) -> list[UploadResult]:
        """Each line's updates through its port's ``upload_many`` (one journal write per
        line); the answers in the order of ``updates``."""
        by_line: dict[str, list[int]] = {}
        for i, u in enumerate(updates):
            by_line.setdefault(self.line_name(u.participant), []).append(i)
        results: list[UploadResult | None] = [None] * len(updates)
        for name, at in by_line.items():
            answers = self.ports[name].upload_many([updates[i] for i in at])
            for i, answer in zip(at, answers, strict=True):
                results[i] = answer
        return [r for r in results if r is not None]

    def report(self, report: EvalReport) -> None:
        """An evaluation result, to its sender's line."""
        self.of(report.participant).report(report)

    # ---- time ------------------------------------------------------------------------------

    def tick(self) -> dict[str, Tick]:
        """Every line's tick: what each did."""
        return {name: port.tick() for name, port in self.ports.items()}

    def finished(self) -> bool:
        """Whether every line has run all its rounds."""
        return all(p.finished() for p in self.ports.values())

    def next_deadline(self) -> float:
        """The soonest timed event of any line (inf with none)."""
        return min((p.next_deadline() for p in self.ports.values()), default=math.inf)
