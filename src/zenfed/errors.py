"""One error type for every problem a user can fix: it names the problem and the fix.

    raise ZenfedError("data file 'x.jsonl' does not exist", fix="check data.path")

The CLI prints it on one line and exits 2; nothing half-written is left behind because
every writer in zenfed writes to a temporary name and renames on success.
"""

from __future__ import annotations


class ZenfedError(Exception):
    """A user-fixable error: ``problem`` says what is wrong, ``fix`` what to do about it."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class NonFiniteLossError(ZenfedError):
    """Training produced a NaN or infinite loss; the update is discarded, nothing applied."""
