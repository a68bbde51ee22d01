"""What the coordinator must remember between rounds, and its one byte form.

    data = state.to_bytes()                       # run checkpoints and the service's store
    state = CoordinatorState.from_bytes(data)     # resume, restart

The same bytes serve the simulation's run checkpoint and the deployment's store (one blob
per committed version), so a restart rebuilds exactly what a resumed simulation does:
parameters, server-optimizer moments, the versions' lineage, the published version and
its broadcasts, the privacy ledger, and the reputations and quarantine of poisoning
detection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from zenfed.aggregate.server_opt import ServerOptState
from zenfed.compress.downlink import Broadcast, Publisher
from zenfed.privacy.dp import PrivacyLedger
from zenfed.protocol.manifest import Manifest
from zenfed.protocol.messages import GlobalVersion, Update, version_id
from zenfed.store.records import bytes_tensor, pack_record, tensor_bytes, unpack_record
from zenfed.tensors import Tensors, tensors_hash

KIND = "zenfed-coordinator-state/2"


@dataclass(frozen=True)
class CoordinatorState:
    """Everything needed to resume: the current global adapter and the server's memory.
    Frozen: the engine replaces it by its own transitions (its only writer)."""

    round: int  # the next round to run
    params: Tensors  # the server's parameters
    server_state: ServerOptState
    versions: list[GlobalVersion]
    # With a downlink codec: the published version (params as the participants hold them)
    # and the last broadcasts that lead to it. Without one, public is params itself.
    public: Tensors | None = None
    broadcasts: list[Broadcast] = field(default_factory=list)
    privacy: PrivacyLedger = field(default_factory=PrivacyLedger)
    # Poisoning detection ([detect]): each screened participant's reputation, and who is
    # quarantined (left out of cohorts) with the reason.
    reputation: dict[str, float] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)

    @property
    def published(self) -> Tensors:
        """The tensors of the current global version: what participants download."""
        return self.params if self.public is None else self.public

    @property
    def version(self) -> GlobalVersion:
        """The latest committed version."""
        return self.versions[-1]

    def to_bytes(self) -> bytes:
        """The state as one record (safetensors; see ``zenfed.store.records``)."""
        tensors = {f"params/{k}": v for k, v in self.params.items()}
        tensors |= {f"m/{k}": v for k, v in self.server_state.m.items()}
        tensors |= {f"v/{k}": v for k, v in self.server_state.v.items()}
        tensors |= {f"public/{k}": v for k, v in (self.public or {}).items()}
        tensors |= {
            f"broadcast/{i}": bytes_tensor(b.payload) for i, b in enumerate(self.broadcasts)
        }
        fields: dict[str, Any] = {
            "round": self.round,
            "step": self.server_state.step,
            "versions": [asdict(v) for v in self.versions],
            "has_public": self.public is not None,
            "broadcasts": [[b.version, b.parent, b.seed] for b in self.broadcasts],
            "privacy": {
                "rounds": self.privacy.rounds,
                "clip_norm": self.privacy.clip_norm,
                "tree": self.privacy.tree,
                "seed": self.privacy.seed,
            },
            "reputation": self.reputation,
            "quarantined": self.quarantined,
        }
        return pack_record(KIND, tensors, fields)

    @classmethod
    def from_bytes(cls, data: bytes) -> CoordinatorState:
        """The state :meth:`to_bytes` wrote."""
        tensors, f = unpack_record(data, KIND)
        parts: dict[str, Tensors] = {"params": {}, "m": {}, "v": {}, "public": {}, "broadcast": {}}
        for key, t in tensors.items():
            kind, name = key.split("/", 1)
            parts[kind][name] = t
        versions = [
            GlobalVersion(
                **{
                    **v,
                    "participants": tuple(v["participants"]),
                    "weights": tuple(float(w) for w in v.get("weights", ())),
                }
            )
            for v in f["versions"]
        ]
        broadcasts = [
            Broadcast(version, parent, int(seed), tensor_bytes(parts["broadcast"][str(i)]))
            for i, (version, parent, seed) in enumerate(f["broadcasts"])
        ]
        pf = f["privacy"]
        ledger = PrivacyLedger(
            [(float(q), float(z)) for q, z in pf["rounds"]],
            pf["clip_norm"],
            tree=[(int(p), int(leaf)) for p, leaf in pf.get("tree", [])],
            seed=int(pf.get("seed", 0)),
        )
        return cls(
            round=int(f["round"]),
            params=parts["params"],
            server_state=ServerOptState(m=parts["m"], v=parts["v"], step=int(f["step"])),
            versions=versions,
            public=parts["public"] if f["has_public"] else None,
            broadcasts=broadcasts,
            privacy=ledger,
            reputation={k: float(v) for k, v in f.get("reputation", {}).items()},
            quarantined=dict(f.get("quarantined", {})),
        )


@dataclass(frozen=True)
class Commit:
    """A round's result before it is committed: the new version and the state after it."""

    version: GlobalVersion
    state: CoordinatorState
    flags: dict[str, str] = field(default_factory=dict)  # screened updates that stood out
    quarantine: dict[str, str] = field(default_factory=dict)  # quarantined by this commit
    manifest: Manifest | None = None  # the version's record in the version log

    @property
    def published(self) -> Tensors:
        """The new version's tensors as participants download them."""
        return self.state.published


class Screened(Protocol):
    """What poisoning detection decided of a round (``screening.Assessment`` is one)."""

    @property
    def reputation(self) -> dict[str, float]:
        """Everyone's reputation after the round."""
        ...

    @property
    def flags(self) -> dict[str, str]:
        """Who stood out, and why."""
        ...

    @property
    def quarantine(self) -> dict[str, str]:
        """Who is quarantined by this round, and why."""
        ...


def round_commit(
    st: CoordinatorState,
    server_round: int,
    parent: str,
    updates: list[Update],
    weights: Mapping[str, float],
    step: tuple[Tensors, ServerOptState],
    published: tuple[Tensors | None, Broadcast | None],
    metrics: dict[str, float],
    privacy: PrivacyLedger,
    screened: Screened | None = None,
) -> Commit:
    """The version a round makes from ``parent`` and the state after it: of the round's
    ``updates``, those combined with their ``weights`` (participant -> weight; the
    others were left out), the server optimizer's ``step`` (params, moments), what is
    ``published`` (the public tensors and the broadcast of a downlink codec), the round's
    ``metrics``, the privacy ledger after its release, and its screening. Pure: ``st`` is
    not changed."""
    params, server_state = step
    public, broadcast = published
    content = tensors_hash(public if public is not None else params)
    included = sorted(weights)
    version = GlobalVersion(
        id=version_id(parent, server_round, content),
        round=server_round,
        parent=parent,
        participants=tuple(included),
        num_examples=sum(u.num_examples for u in updates if u.participant in weights),
        metrics={**metrics, **({"flagged": float(len(screened.flags))} if screened else {})},
        content=content,
        weights=tuple(float(weights[p]) for p in included),
        line=st.version.line,
    )
    state = CoordinatorState(
        server_round + 1,
        params,
        server_state,
        [*st.versions, version],
        public,
        Publisher.chain(st.broadcasts, broadcast, version),
        privacy,
        screened.reputation if screened else dict(st.reputation),
        {**st.quarantined, **(screened.quarantine if screened else {})},
    )
    if screened is None:
        return Commit(version, state)
    return Commit(version, state, screened.flags, screened.quarantine)
