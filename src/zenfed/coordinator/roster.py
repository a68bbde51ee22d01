"""Who takes part in a federation: its members as frozen records, and one writer.

    roster = Roster([Member("3f2a...", "clinic-7", examples=120, key=public_key)])
    roster.enroll(member); roster.ready(pid); roster.revoke(pid)   # the port's calls only
    roster.pool()            # active members that asked for work, in name order
    roster.examples(pid)     # what it declared: the bound on its updates' weight

A member is what it declared at enrollment (examples, capacity, data profile, its
Ed25519 key) and where it stands: ``active`` or ``revoked``, and ``ready`` once it has
asked for a task (a deployment samples only those, so an agent that enrolled and never
came back does not hold every round up until its deadline; a simulation's members are
ready from the start). The round port owns the roster and is the only writer
(``CoordinatorPort.enroll`` / ``ready`` / ``revoke``); the engine and the matchers read
it. Quarantine is not membership: it is the verdict of poisoning detection, kept in the
engine's state with the reputations (it survives a restart with the model it protects).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from zenfed.config import LinesConfig
from zenfed.errors import ZenfedError

Status = Literal["active", "revoked"]


@dataclass(frozen=True)
class Member:
    """One enrolled participant, as it declared itself."""

    id: str
    name: str
    examples: int  # training examples declared at enrollment: bounds its updates' weight
    key: bytes = b""  # raw Ed25519 public key: verifies its requests and its SecAgg keys
    capacity: Mapping[str, Any] = field(default_factory=dict)  # memory, device, throughput
    profile: Mapping[str, Any] = field(default_factory=dict)  # examples, tokens, domain, ...
    status: Status = "active"
    ready: bool = True  # has asked for a task at least once


def by_name(members: Iterable[Member]) -> list[Member]:
    """``members`` in the order matchers draw from: by name, then id."""
    return sorted(members, key=lambda m: (m.name, m.id))


class Roster:
    """The members of one federation by id (frozen records, replaced on change)."""

    def __init__(self, members: Iterable[Member] = ()) -> None:
        self._members: dict[str, Member] = {}
        for m in members:
            self.enroll(m)

    @classmethod
    def of_examples(
        cls, examples: Mapping[str, int], keys: Mapping[str, bytes] | None = None
    ) -> Roster:
        """Members named by their ids, ready, with these example counts (and keys): a
        simulation's participants, or a test's."""
        keys = keys or {}
        return cls(Member(p, p, n, keys.get(p, b"")) for p, n in examples.items())

    # ---- reading --------------------------------------------------------------------------

    def __contains__(self, pid: object) -> bool:
        return pid in self._members

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[Member]:
        return iter(list(self._members.values()))

    def get(self, pid: str) -> Member | None:
        """The member ``pid`` (revoked ones too), or None."""
        return self._members.get(pid)

    def active(self) -> list[Member]:
        """Every member not revoked."""
        return [m for m in self._members.values() if m.status == "active"]

    def pool(self, lines: LinesConfig | None = None, line: str = "") -> list[Member]:
        """Active members that asked for work, in enrollment order: who cohorts are drawn
        from (before quarantine; a matcher orders them by name, so that a simulation and a
        deployment of the same participants, whose ids differ, draw alike); with several
        ``lines``, those of ``line`` only."""
        ok = [m for m in self._members.values() if m.status == "active" and m.ready]
        if lines is None or not lines.several:
            return ok
        return [m for m in ok if lines.line_of(m.name) == line]

    def examples(self, pid: str) -> int:
        """What ``pid`` declared (0 if unknown): kept after it is revoked, because an update
        it sent before is still weighed by it."""
        m = self._members.get(pid)
        return m.examples if m is not None else 0

    def name(self, pid: str) -> str:
        """``pid``'s name (the id itself if unknown)."""
        m = self._members.get(pid)
        return m.name if m is not None else pid

    def key(self, pid: str) -> bytes | None:
        """``pid``'s public key while it is active (None if unknown or revoked)."""
        m = self._members.get(pid)
        return m.key if m is not None and m.status == "active" else None

    def keys(self, pids: Iterable[str]) -> dict[str, bytes]:
        """The public keys of ``pids`` (what secure aggregation verifies their keys by)."""
        return {p: self._members[p].key for p in pids if p in self._members}

    # ---- the port's writes ------------------------------------------------------------------

    def enroll(self, member: Member) -> None:
        """Add ``member`` (ZenfedError if its id is taken)."""
        if member.id in self._members:
            raise ZenfedError(f"participant {member.id[:12]} is enrolled already", fix="")
        self._members[member.id] = member

    def ready(self, pid: str) -> bool:
        """``pid`` asked for work: it is sampled from now on. Whether that changed it."""
        m = self._members.get(pid)
        if m is None or m.ready or m.status != "active":
            return False
        self._members[pid] = replace(m, ready=True)
        return True

    def revoke(self, pid: str) -> None:
        """``pid`` is refused from now on (its record stays: it bounds what it sent)."""
        m = self._members.get(pid)
        if m is not None:
            self._members[pid] = replace(m, status="revoked")
