"""The example types every loader produces and the trainer consumes.

An :class:`Example` is one conversation (chat ``messages``) or one plain text, with
metadata (category, language, source) that partitioners can split on. A
:class:`TokenizedExample` is what training sees: token ids and labels (-100 where no loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field

IGNORE_INDEX = -100  # label value that the causal LM loss skips


@dataclass(frozen=True)
class Example:
    """One conversation (``messages``: role/content dicts) or one plain ``text``."""

    messages: tuple[tuple[str, str], ...] = ()  # (role, content) pairs
    text: str | None = None
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids and labels of equal length; labels are IGNORE_INDEX where no loss is taken."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def num_loss_tokens(self) -> int:
        """How many positions contribute to the loss (after the causal shift)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


@dataclass(frozen=True)
class ParticipantData:
    """One participant's private data: a training split and a held-out split."""

    name: str
    train: tuple[TokenizedExample, ...]
    heldout: tuple[TokenizedExample, ...]
    meta: dict[str, str] = field(default_factory=dict)
