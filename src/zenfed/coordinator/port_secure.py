"""The stages of secure aggregation as the round port drives them: a participant's
stage messages in, what each stage needs out, and the stage that closes on time.

A part of ``CoordinatorPort`` (port.py), which provides the engine, the journal, the
clock, the stage deadline and how a round closes or aborts.
"""

from __future__ import annotations

from collections.abc import Callable

from zenfed.coordinator.engine import Coordinator
from zenfed.coordinator.journaling import Journal, Tick
from zenfed.privacy.secagg import SecAggAborted, SecAggError, SecAggServer
from zenfed.protocol.port import NeighbourKeys, Shares, StageInput, StageMessage
from zenfed.protocol.secagg import STAGES, AdvertiseKeys, UnmaskRequest


class SecureStages:
    """The secure-aggregation half of the round port."""

    engine: Coordinator
    journal: Journal
    clock: Callable[[], float]
    stage_deadline: float  # when the current stage closes anyway

    def _close(self, why: str) -> Tick:
        raise NotImplementedError  # the port's

    def _abort(self, reason: str) -> Tick:
        raise NotImplementedError  # the port's

    def stage_post(self, pid: str, server_round: int, stage: str, message: StageMessage) -> None:
        """``pid``'s message for ``stage`` of the open secure round."""
        srv = self._secure_round(server_round)
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

    def stage_get(self, pid: str, server_round: int, stage: str) -> StageInput | None:
        """What ``pid`` needs to do ``stage`` (None while the stage has not begun)."""
        srv = self._secure_round(server_round)
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

    def _secure_round(self, server_round: int) -> SecAggServer:
        r = self.engine.current
        if r is None or r.round != server_round or r.secure is None:
            raise SecAggError(
                f"round {server_round + 1} is not an open secure round",
                fix="fetch the current task",
            )
        return r.secure.server

    def _tick_secure(self, srv: SecAggServer) -> Tick:
        """Close the current stage when everyone still in it answered, or at its deadline;
        the last stage closes the round. Too few survivors abort the round."""
        members, answered = srv.progress()
        if len(answered) < len(members) and self.clock() < self.stage_deadline:
            return "idle"
        try:
            if srv.stage_name == "unmask":
                return self._close("secure aggregation complete")
            srv.close_stage()
        except SecAggAborted as e:
            return self._abort(e.problem)
        cfg = self.engine.cfg
        timeout = cfg.secagg.stage_timeout_s
        if srv.stage_name == "masked_input":  # the training stage gets the round's time
            timeout = cfg.service.round_timeout_s
        self.stage_deadline = self.clock() + timeout
        return "stage"
