"""Federated evaluation: every participant scores a version on its held-out split and the
coordinator combines the loss sums.

    ev = FederatedEvaluation(server_round, version, participants)   # the tasks: ev.tasks
    ev.report(report)                                   # one participant's sums
    ev.summary()   # eval_loss (example-weighted), union_loss (token-weighted)

``union_loss`` is exactly the loss on the union of all held-out splits; ``eval_loss`` is
the example-weighted mean of the participants' own losses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from zenfed.errors import ZenfedError
from zenfed.protocol.messages import EvalReport, Task


class FederatedEvaluation:
    """One evaluation of one version by every listed participant."""

    def __init__(self, server_round: int, version: str, participants: Iterable[str]) -> None:
        self.version = version
        self.tasks = {
            p: Task(round=server_round, participant=p, version=version, kind="evaluate")
            for p in sorted(participants)
        }
        self.reports: dict[str, EvalReport] = {}
        self.bytes_down = 0

    def pending(self, participant: str) -> Task | None:
        """``participant``'s evaluation task, unless it has reported."""
        return None if participant in self.reports else self.tasks.get(participant)

    @property
    def done(self) -> bool:
        """Whether every participant reported."""
        return len(self.reports) == len(self.tasks)

    def report(self, r: EvalReport) -> None:
        """Record one participant's held-out sums (ZenfedError if not asked for)."""
        if r.version != self.version or r.participant not in self.tasks:
            raise ZenfedError(
                "evaluation report for an unknown version or participant",
                fix="evaluate the current global version",
            )
        self.reports[r.participant] = r

    def summary(self) -> dict[str, float]:
        """eval_loss, union_loss, eval_participants, eval_bytes_down ({} without reports)."""
        reps = [r for r in self.reports.values() if r.num_tokens]
        if not reps:
            return {}
        examples = sum(r.num_examples for r in reps)
        eval_loss = (
            sum(r.loss_sum / r.num_tokens * r.num_examples for r in reps) / examples
            if examples
            else math.nan
        )
        return {
            "eval_loss": eval_loss,
            "union_loss": sum(r.loss_sum for r in reps) / sum(r.num_tokens for r in reps),
            "eval_participants": float(len(reps)),
            "eval_bytes_down": float(self.bytes_down),
        }
