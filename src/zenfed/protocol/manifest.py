"""What went into a version, in a form anyone can check: the version manifest.

    m = Manifest(version=v.id, parent=v.parent, parent_manifest=prev.digest, ...)
    m.digest                        # sha256 of its canonical bytes: what the next one names
    check_chain([root, m1, m2])     # every link and hash, or ZenfedError naming the break

A manifest names its version (id, round, content hash), its parent and the parent's
manifest hash (so manifests chain like commits), the model line, the federation's base
model and config hashes, the aggregation rule, server optimizer and shape combiner used,
every update combined into it (participant, payload sha256, weight, examples, adapter
spec) with the Merkle root over them, the privacy spent and the round's metrics. Its
canonical form is JSON with sorted keys and no spaces; its digest is the sha256 of that.
Signing manifests and verifying the chain from a service are the trust issue's
(``zenfed verify``); nothing they need is thrown away.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from zenfed.errors import ZenfedError

KIND = "zenfed-manifest/1"


@dataclass(frozen=True)
class Included:
    """One update combined into a version."""

    participant: str
    payload_sha256: str
    weight: float
    num_examples: int
    adapter: str = ""  # its adapter spec's id ("": the whole adapter)

    def leaf(self) -> bytes:
        """Its Merkle leaf: sha256 over its fields, domain-separated."""
        text = f"zenfed-leaf/1\n{self.participant}\n{self.payload_sha256}\n{self.adapter}"
        return hashlib.sha256(text.encode()).digest()


@dataclass(frozen=True)
class Manifest:
    """One committed version's record (see the module)."""

    version: str
    round: int
    parent: str | None
    parent_manifest: str  # the parent's manifest digest ("" for the root)
    content: str
    line: str = "main"
    model: str = ""  # the base model's name
    initial: str = ""  # the content hash of the federation's initial adapter
    config: str = ""  # sha256 of the federation's config (canonical JSON)
    rule: str = ""
    server_optimizer: str = ""
    combine: str = ""
    updates: tuple[Included, ...] = ()
    merkle_root: str = ""
    privacy: Mapping[str, float] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    rollback_of: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what a store keeps and a verifier reads)."""
        return {"kind": KIND, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """The inverse of :meth:`to_dict` (ZenfedError if it is not a manifest)."""
        if d.get("kind") != KIND:
            raise ZenfedError(f"not a {KIND} record", fix="read a zenfed version manifest")
        fields = {k: v for k, v in d.items() if k != "kind"}
        fields["updates"] = tuple(Included(**u) for u in fields.get("updates", ()))
        return cls(**fields)

    def canonical(self) -> bytes:
        """The bytes its digest is taken over."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        """sha256 of the canonical bytes, hex."""
        return hashlib.sha256(self.canonical()).hexdigest()


def merkle_root(updates: Sequence[Included]) -> str:
    """The Merkle root (sha256, odd nodes carried up) over the updates' leaves in
    participant order; "" for none."""
    level = [u.leaf() for u in sorted(updates, key=lambda u: (u.participant, u.adapter))]
    if not level:
        return ""
    while len(level) > 1:
        pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
        level = [hashlib.sha256(b"".join(p)).digest() if len(p) == 2 else p[0] for p in pairs]
    return level[0].hex()


def config_digest(raw: Mapping[str, Any]) -> str:
    """sha256 of a config's plain data as canonical JSON."""
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_chain(manifests: Sequence[Manifest]) -> None:
    """ZenfedError naming the first manifest whose parent link or Merkle root is wrong
    (oldest first; the first may have any parent)."""
    for prev, m in itertools.pairwise(manifests):
        if m.parent != prev.version or m.parent_manifest != prev.digest:
            raise ZenfedError(
                f"manifest of version {m.version[:12]} does not name its parent "
                f"{prev.version[:12]}'s manifest",
                fix="the version log was altered: restore it from a backup",
            )
    for m in manifests:
        if m.merkle_root != merkle_root(m.updates):
            raise ZenfedError(
                f"manifest of version {m.version[:12]}: its Merkle root does not match its updates",
                fix="the version log was altered: restore it from a backup",
            )
