"""The version log: the manifest of every committed version, chained by hash.

    log = VersionLog(cfg, initial_content, rule.describe())
    result = log.record(result, included, parent_manifest)  # the commit with its manifest

Each version's manifest (``zenfed.protocol.manifest``) names its parent's manifest digest,
so the versions of a line form a chain anyone can walk; the version itself carries its
manifest's digest. A deployment stores each manifest with its version's row and each
upload's signed request with its update's row; a simulation writes them beside the
version's tensors. Pure: no files, no database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from zenfed.config import FederationConfig
from zenfed.coordinator.state import Commit
from zenfed.protocol.manifest import Included, Manifest, config_digest, merkle_root
from zenfed.protocol.messages import GlobalVersion, Update

PRIVACY_KEYS = ("epsilon", "noise_multiplier", "sampling_rate", "clip_norm", "noise_std")


class VersionLog:
    """Builds the manifests of one federation's versions."""

    def __init__(self, cfg: FederationConfig, initial: str, rule: str, line: str = "main") -> None:
        self.cfg, self.initial, self.rule, self.line = cfg, initial, rule, line
        self.config = config_digest(cfg.model_dump(mode="json"))

    def manifest(
        self, v: GlobalVersion, parent_manifest: str, updates: tuple[Included, ...] = ()
    ) -> Manifest:
        """The manifest of version ``v`` whose parent's manifest digest is
        ``parent_manifest``, with the ``updates`` combined into it."""
        cfg = self.cfg
        return Manifest(
            version=v.id,
            round=v.round,
            parent=v.parent,
            parent_manifest=parent_manifest,
            content=v.content,
            line=self.line,
            model=cfg.model.name,
            initial=self.initial,
            config=self.config,
            rule=self.rule,
            server_optimizer=cfg.server.optimizer,
            combine=cfg.adapters.combine,
            updates=updates,
            merkle_root=merkle_root(updates),
            privacy={k: float(v.metrics[k]) for k in PRIVACY_KEYS if k in v.metrics},
            metrics=dict(v.metrics),
            rollback_of=v.rollback_of,
        )

    def record(
        self,
        result: Commit,
        parent_manifest: str,
        received: Mapping[str, Update] | None = None,
        digests: Mapping[str, str] | None = None,
    ) -> Commit:
        """``result`` with its version's manifest: in ``result.manifest``, and its digest
        in the version (and in the state's lineage)."""
        v, received, digests = result.version, received or {}, digests or {}
        updates = tuple(
            Included(p, digests.get(p, ""), w, received[p].num_examples, received[p].adapter)
            for p, w in zip(v.participants, v.weights, strict=True)
            if p in received
        )
        m = self.manifest(v, parent_manifest, updates)
        version = replace(v, manifest=m.digest)
        state = replace(result.state, versions=[*result.state.versions[:-1], version])
        return replace(result, version=version, state=state, manifest=m)
