"""The ``[lines]`` section: several model lines in one federation, each trained by its
own members. Re-exported by ``zenfed.config``.

    [lines]
    names = ["clinical", "legal"]          # the first is where the unnamed go
    assign = { firm-9 = "legal", firm-12 = "legal" }

A line has its own versions, server-optimizer state, privacy ledger and publisher, and
its cohorts are drawn from its members only: lines share the roster and nothing else
(a participant belongs to one line). With one line (the default, ``main``) nothing
changes. Every line but ``main`` starts from a root version of its own id, so version ids
name their line; a line's versions are those of a federation of its members alone.
"""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from zenfed.config.base import _Frozen

DEFAULT_LINE = "main"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class LinesConfig(_Frozen):
    """The model lines (see the module)."""

    names: tuple[str, ...] = (DEFAULT_LINE,)
    assign: dict[str, str] = Field(default_factory=dict)  # participant name -> line

    @model_validator(mode="after")
    def _check(self) -> LinesConfig:
        if not self.names:
            raise ValueError("lines.names must name at least one line")
        bad = [n for n in self.names if not _NAME.match(n)]
        if bad:
            raise ValueError(
                f"lines.names: '{bad[0]}' is not a line name (lower-case letters, digits, "
                "'-' and '_', at most 64, starting with a letter or digit)"
            )
        if len(set(self.names)) != len(self.names):
            raise ValueError("lines.names lists a line twice")
        unknown = {who: line for who, line in self.assign.items() if line not in self.names}
        if unknown:
            who, line = next(iter(sorted(unknown.items())))
            raise ValueError(
                f"lines.assign puts '{who}' on line '{line}', which is not in lines.names "
                f"({', '.join(self.names)}): add it there or fix the name"
            )
        return self

    def line_of(self, participant: str) -> str:
        """The line the participant named ``participant`` trains (the first line unless
        assigned)."""
        return self.assign.get(participant, self.names[0])

    @property
    def several(self) -> bool:
        """Whether this federation runs more than one line."""
        return len(self.names) > 1
