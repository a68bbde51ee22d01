"""The evaluation gate: a round's candidate version is committed only if its validation
loss has not regressed beyond a tolerance against the current version's.

    gate = Gate(evaluate, tolerance=0.02)       # evaluate(tensors) -> mean loss
    verdict = gate.judge(candidate, current_id, current_tensors)
    if verdict.passed: gate.accepted(new_version_id, verdict.loss)

``evaluate`` is the only I/O, and it is injected: the simulation passes a loss over the
participants' held-out splits or an operator's validation file, the service the latter.
The reference is the current version's loss, measured once per version (a rollback or a
restart measures it again).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from zenfed.tensors import Tensors

Evaluate = Callable[[Tensors], float]


@dataclass(frozen=True)
class Verdict:
    """What the gate decided of one candidate."""

    passed: bool
    loss: float  # the candidate's
    reference: float  # the current version's
    tolerance: float

    @property
    def reason(self) -> str:
        """One line for the audit trail and the round's record."""
        change = (self.loss / self.reference - 1) * 100 if self.reference else math.inf
        verb = "passed" if self.passed else "rejected"
        return (
            f"evaluation gate {verb}: validation loss {self.loss:.4f} against the current "
            f"version's {self.reference:.4f} ({change:+.2f} %, tolerance "
            f"{self.tolerance * 100:.2f} %)"
        )


class Gate:
    """Judges candidates by ``evaluate`` against the current version's loss."""

    def __init__(self, evaluate: Evaluate, tolerance: float) -> None:
        self.evaluate = evaluate
        self.tolerance = tolerance
        self._reference: tuple[str, float] | None = None  # (version id, its loss)

    def reference(self, version: str, tensors: Tensors) -> float:
        """The loss of ``version`` (whose tensors are ``tensors``), measured once."""
        if self._reference is None or self._reference[0] != version:
            self._reference = (version, self.evaluate(tensors))
        return self._reference[1]

    def judge(self, candidate: Tensors, current: str, current_tensors: Tensors) -> Verdict:
        """Whether ``candidate`` may replace version ``current``: its loss is finite and at
        most (1 + tolerance) x the current version's."""
        ref = self.reference(current, current_tensors)
        loss = self.evaluate(candidate)
        passed = math.isfinite(loss) and loss <= ref * (1 + self.tolerance)
        return Verdict(passed, loss, ref, self.tolerance)

    def accepted(self, version: str, loss: float) -> None:
        """``version`` was committed with this loss: the next candidates' reference."""
        self._reference = (version, loss)
