"""The stages of secure aggregation as the round port drives them: a participant's stage
messages in, what each stage needs out, and each stage closed on time.

    stages = SecAggStages(engine, journal, clock)   # held by the port
    stages.post(pid, r, "advertise_keys", keys); stages.get(pid, r, "share_keys")
    stages.tick(close, abort)        # a stage closes when all answered, or at its deadline

The only place the stages of SecAgg+ are driven (the cryptography is
``zenfed.privacy.secagg``; the round's server is ``secure.py``'s ``SecureRound``, the
masked-sum accumulator). A stage closes once everyone still in it has answered, or at its
deadline (``secagg.stage_timeout_s``; the training stage gets the round's time), and the
last one closes the round.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from zenfed.coordinator.engine import Coordinator
from zenfed.coordinator.journaling import Journal, Tick
from zenfed.coordinator.rounds import OpenRound
from zenfed.privacy.secagg import SecAggAborted, SecAggError, SecAggServer
from zenfed.protocol.messages import Task
from zenfed.protocol.port import NeighbourKeys, Shares, StageInput, StageMessage
from zenfed.protocol.secagg import STAGES, AdvertiseKeys, UnmaskRequest


class SecAggStages:
    """The secure-aggregation stage driver of one round port."""

    def __init__(self, engine: Coordinator, journal: Journal, clock: Callable[[], float]) -> None:
        self.engine, self.journal, self.clock = engine, journal, clock
        self.deadline = math.inf  # when the current stage closes anyway

    @staticmethod
    def running(r: OpenRound | None) -> bool:
        """Whether ``r`` is a secure round (its stages drive it)."""
        return r is not None and r.secure is not None

    def opened(self) -> None:
        """A round opened: its first stage's deadline starts now."""
        self.deadline = self.clock() + self.engine.cfg.secagg.stage_timeout_s

    def withholds(self, r: OpenRound | None, pid: str, task: Task) -> bool:
        """Whether ``pid`` may not take ``task`` now: in a secure round, once it advertised
        keys or after the advertising stage (its secrets live in one agent process)."""
        if task.kind != "train" or r is None or r.secure is None:
            return False
        srv = r.secure.server
        return srv.stage_name != STAGES[0] or pid in srv.keys

    def post(self, pid: str, server_round: int, stage: str, message: StageMessage) -> None:
        """``pid``'s message for ``stage`` of the open secure round."""
        srv = self._server(server_round)
        if stage == "advertise_keys" and isinstance(message, AdvertiseKeys):
            if message.participant != pid:
                raise SecAggError("keys are advertised for their sender only", fix="refused")
            srv.receive_keys(message)
        elif stage == "share_keys" and isinstance(message, Shares):
            srv.receive_shares(pid, message.shares)
        elif stage == "unmask" and isinstance(message, Shares):
            srv.receive_unmask(pid, message.shares)
        else:
            raise SecAggError(
                f"nothing of this kind is posted for stage '{stage}'",
                fix="post advertise_keys, share_keys or unmask; masked input is an upload",
            )
        self.journal.staged(pid, server_round, stage)

    def get(self, pid: str, server_round: int, stage: str) -> StageInput | None:
        """What ``pid`` needs to do ``stage`` (None while the stage has not begun)."""
        srv = self._server(server_round)
        if stage not in STAGES[1:]:
            raise SecAggError(f"nothing to fetch for stage '{stage}'", fix=f"one of {STAGES[1:]}")
        now, want = STAGES.index(srv.stage_name), STAGES.index(stage)
        if now < want:
            return None
        if now > want:
            raise SecAggError(
                f"stage {stage} of round {server_round + 1} is over", fix="the round went on"
            )
        if stage == "share_keys":
            keys = srv.keys_for(pid)
            return NeighbourKeys(keys, {v: srv.verify_keys[v] for v in keys})
        if stage == "masked_input":
            return Shares(srv.inbox(pid))
        if pid not in srv.masked:
            raise SecAggError(f"'{pid}' uploaded no masked input", fix="the round went on")
        req = srv.unmask_request()
        if pid not in req.survivors:  # its secure bucket lost every other member
            raise SecAggError(
                f"'{pid}''s secure bucket has no other survivor: its input stays masked and "
                "out of this round",
                fix="the round went on",
            )
        return UnmaskRequest(req.round, req.survivors, req.dropped)

    def _server(self, server_round: int) -> SecAggServer:
        r = self.engine.current
        if r is None or r.round != server_round or r.secure is None:
            raise SecAggError(
                f"round {server_round + 1} is not an open secure round",
                fix="fetch the current task",
            )
        return r.secure.server

    def tick(self, close: Callable[[str], Tick], abort: Callable[[str], Tick]) -> Tick:
        """Close the current stage when everyone still in it answered, or at its deadline;
        the last stage closes the round (``close``). Too few survivors: ``abort``."""
        r = self.engine.current
        assert r is not None and r.secure is not None
        srv = r.secure.server
        members, answered = srv.progress()
        if len(answered) < len(members) and self.clock() < self.deadline:
            return "idle"
        try:
            if srv.stage_name == "unmask":
                return close("secure aggregation complete")
            srv.close_stage()
        except SecAggAborted as e:
            return abort(e.problem)
        cfg = self.engine.cfg
        timeout = cfg.secagg.stage_timeout_s
        if srv.stage_name == "masked_input":  # the training stage gets the round's time
            timeout = cfg.service.round_timeout_s
        self.deadline = self.clock() + timeout
        return "stage"
