"""How a round ends in a version: committed here, or forwarded to a root.

    port = CoordinatorPort(engine, journal, clock, committer=LocalCommit(gate))
    port = CoordinatorPort(engine, journal, clock, committer=ForwardUpstream(region))

``LocalCommit`` aggregates the round, lets the evaluation gate (``[gate]``) judge the
candidate, journals the version and has the engine adopt it; the federation ends after
``run.rounds`` rounds or when the privacy budget is spent. ``ForwardUpstream`` is a
regional coordinator's (``zenfed serve --upstream``): its rounds open for the root's task
and end by sending the root one update, journaled first; the root's federation decides
when it ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from zenfed.coordinator.gate import Gate
from zenfed.coordinator.journaling import Tick
from zenfed.coordinator.regional import Region
from zenfed.coordinator.rounds import RoundAborted

if TYPE_CHECKING:
    from zenfed.coordinator.port import CoordinatorPort


class Committer(Protocol):
    """Where a round's result goes, and when rounds may run."""

    def may_open(self, port: CoordinatorPort) -> bool:
        """Whether a round may open now (enough participants aside)."""
        ...

    def finished(self, port: CoordinatorPort) -> bool:
        """Whether no further round will run."""
        ...

    def close(self, port: CoordinatorPort, why: str) -> Tick:
        """End the open round (``why``: quorum, deadline, ...)."""
        ...


class LocalCommit:
    """Commit the round's version here, through the evaluation gate if there is one."""

    def __init__(self, gate: Gate | None = None) -> None:
        self.gate = gate

    def may_open(self, port: CoordinatorPort) -> bool:
        """Rounds remain and the privacy budget allows one."""
        return not self.finished(port)

    def finished(self, port: CoordinatorPort) -> bool:
        """Every round has run, or the privacy budget is spent."""
        return port.engine.state.round >= port.engine.cfg.run.rounds or bool(port.exhausted)

    def close(self, port: CoordinatorPort, why: str) -> Tick:
        """Aggregate, judge, journal, commit; a candidate the gate refuses ends the round
        without a version (the round number moves on, the release is still charged)."""
        engine = port.engine
        try:
            result = engine.aggregate_round()
        except RoundAborted as e:
            return port.abort(e.problem)
        loss = None
        if self.gate is not None:
            verdict = self.gate.judge(result.published, engine.version.id, engine.state.published)
            if not verdict.passed:
                port.last_reason = verdict.reason
                kept = engine.rejection(result)
                port.journal.rejecting(result.version.round, kept, verdict.reason)
                engine.rejected(kept)
                return "rejected"
            loss = verdict.loss
        port.journal.committing(result, why)  # fails: the round stays open
        port.last_version = engine.commit(result)
        if self.gate is not None and loss is not None:
            self.gate.accepted(port.last_version.id, loss)
        return "closed"


class ForwardUpstream:
    """A regional coordinator: the round's combined updates become one update for the
    root (``regional.py``)."""

    def __init__(self, region: Region) -> None:
        self.region = region

    def may_open(self, port: CoordinatorPort) -> bool:
        """The root's task is held, its version adopted, nothing forwarded for it yet."""
        engine = port.engine
        return self.region.may_open(engine.state.round, engine.version.id)

    def finished(self, port: CoordinatorPort) -> bool:
        """The root's federation has finished."""
        return self.region.finished

    def close(self, port: CoordinatorPort, why: str) -> Tick:
        """The round's aggregate as the root's update, journaled before the round ends (a
        crash sends the same again)."""
        engine, region = port.engine, self.region
        r, task = engine.current, region.task
        assert r is not None
        if task is None or task.round != r.round:  # restarted: until the root's task is back
            return "idle"
        try:
            agg, _ = engine.combined()
        except RoundAborted as e:
            return port.abort(e.problem)
        agg = engine.privacy.forwarded(agg, engine.state.privacy)
        update = region.update(agg, list(r.received.values()), len(engine.pool))
        port.journal.forwarding(r.round, update, why)  # fails: the round stays open
        region.results[update.round] = update
        for old in [k for k in region.results if k < update.round - 1]:  # sent long ago
            del region.results[old]
        engine.abort_round()  # its result is the root's to commit now
        return "forwarded"
