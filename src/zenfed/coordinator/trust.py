"""The operator's ways back, as pure steps on the coordinator's state: republishing an
earlier version (rollback) and reinstating a quarantined participant; and building the
evaluation gate and the poisoning screen a config asks for.

    result = rollback(engine.state, "3f2a9c1d", tensors_of_that_version)
    engine.commit(result)                         # a new version, lineage says rollback

A rollback is a new version (the lineage never rewinds): its tensors are exactly those of
the earlier version, its parent the current one, ``rollback_of`` names the version it
republishes. It takes the next round number, resets the server optimizer's moments (they
were built on the trajectory being undone) and drops the downlink's broadcasts (everyone
downloads it in full). The privacy ledger, reputations and quarantine are kept.
"""

from __future__ import annotations

from dataclasses import replace

from zenfed.aggregate import ServerOptState
from zenfed.config import FederationConfig
from zenfed.coordinator.gate import Evaluate, Gate
from zenfed.coordinator.screening import Screen
from zenfed.coordinator.state import Commit, CoordinatorState
from zenfed.errors import ZenfedError
from zenfed.protocol.messages import GlobalVersion, version_id
from zenfed.tensors import Tensors, tensors_hash


class UnknownVersion(ZenfedError):
    """A rollback named a version that is not in the federation's lineage."""


def find_version(state: CoordinatorState, ref: str) -> GlobalVersion:
    """The version of the lineage whose id is ``ref`` or starts with it (8+ hex digits)."""
    ref = ref.strip().lower()
    hits = [v for v in state.versions if v.id == ref or (len(ref) >= 8 and v.id.startswith(ref))]
    if len(hits) != 1:
        what = "is ambiguous" if hits else "is not in this federation's lineage"
        raise UnknownVersion(
            f"version '{ref[:64]}' {what}",
            fix="give a version id (or its first 12 hex digits) from zenfed status / versions",
        )
    return hits[0]


def rollback(state: CoordinatorState, to: str, tensors: Tensors) -> Commit:
    """A commit that republishes version ``to`` (whose tensors are ``tensors``)."""
    target, current = find_version(state, to), state.version
    if target.id == current.id:
        raise ZenfedError(
            f"version {target.id[:12]} is already the current version", fix="nothing to do"
        )
    content = tensors_hash(tensors)
    if content != target.content:
        raise ZenfedError(
            f"the tensors given for version {target.id[:12]} do not match its content hash",
            fix="load that version's stored tensors",
        )
    r = state.round
    version = GlobalVersion(
        id=version_id(current.id, r, content),
        round=r,
        parent=current.id,
        participants=(),
        num_examples=0,
        metrics={},
        content=content,
        rollback_of=target.id,
        line=current.line,
    )
    new = CoordinatorState(
        r + 1,
        dict(tensors),
        ServerOptState(),
        [*state.versions, version],
        None,
        [],
        state.privacy,
        dict(state.reputation),
        dict(state.quarantined),
    )
    return Commit(version, new)


def reinstate(state: CoordinatorState, pid: str, label: str | None = None) -> CoordinatorState:
    """``state`` with ``pid``'s quarantine lifted and a fresh reputation (``label``: how
    the operator named it, for the error); ``state`` is not changed."""
    if pid not in state.quarantined:
        raise ZenfedError(
            f"participant '{(label or pid)[:200]}' is not quarantined",
            fix="see zenfed status for who is quarantined",
        )
    quarantined = {p: why for p, why in state.quarantined.items() if p != pid}
    return replace(state, quarantined=quarantined, reputation={**state.reputation, pid: 1.0})


def trust_parts(
    cfg: FederationConfig, evaluate: Evaluate | None
) -> tuple[Gate | None, Screen | None]:
    """The evaluation gate and the poisoning screen ``cfg`` asks for, both judging by
    ``evaluate`` (the loss on the gate's validation set; needed when either uses it)."""
    needs = cfg.gate.source != "none"
    if needs and evaluate is None:
        raise ZenfedError(
            f"gate.source = '{cfg.gate.source}' needs a validation loss to judge by",
            fix="give the coordinator its evaluator (a bug if you see this from the CLI)",
        )
    gate = Gate(evaluate, cfg.gate.tolerance) if needs and evaluate is not None else None
    screen = Screen(cfg.detect, evaluate) if cfg.detect.enabled else None
    return gate, screen
