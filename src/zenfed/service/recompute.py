"""A store check: recompute every version of a deployment from what its row says, and read
its version log back.

    checks = recompute_versions(cfg, db, blobs)
    bad = [c for c in checks if c.status == "mismatch"]
    problems = check_manifests(db)      # the manifests' digests, chain and updates

A version's row names exactly the updates combined into it and the weight each had
(``Version.participants``, ``Version.weights``); the updates' payloads are in the blob
store. For each version of a synchronous plaintext round this decodes those payloads as
the round did (its codec seed, its tasks' clip bound), combines them by the federation's
rule with the row's weights, takes the server optimizer's step from the parent (carrying
the optimizer's state along the lineage from the root) and compares the result with the
version's stored tensors. What cannot be recomputed says why: noise (differential
privacy), masked sums (secure aggregation), staleness weights (buffered rounds), a
version adopted from a root or a rollback, a downlink codec, rows written before weights
were recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sqlalchemy import select

from zenfed.aggregate import ServerOptState, build_rule
from zenfed.aggregate.server_opt import server_step
from zenfed.compress import Pipeline
from zenfed.compress.downlink import receive
from zenfed.config import FederationConfig
from zenfed.errors import ZenfedError
from zenfed.privacy import dp
from zenfed.protocol.manifest import Manifest, check_chain
from zenfed.protocol.messages import Task
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Database, Round, Update, Version
from zenfed.tensors import Tensors

TOLERANCE = 1e-5  # float64 sums in another order, stored as float32


@dataclass(frozen=True)
class VersionCheck:
    """The outcome for one version: ``ok`` (within ``TOLERANCE``), ``mismatch`` (with the
    largest difference) or ``skipped`` (with the reason it cannot be recomputed)."""

    version: str
    round: int
    status: str
    max_error: float = 0.0
    reason: str = ""


def recompute_versions(cfg: FederationConfig, db: Database, blobs: BlobStore) -> list[VersionCheck]:
    """Every committed version of the store (of every model line), oldest first,
    recomputed from its row."""
    with db.transaction() as s:
        versions = s.scalars(select(Version).order_by(Version.created_at, Version.round)).all()
        rounds = {r.result_version: r for r in s.scalars(select(Round)) if r.result_version}
        ups = {(u.round_id, u.participant_id): u.payload_sha256 for u in s.scalars(select(Update))}
    roots = [v for v in versions if v.parent is None]  # one per model line
    if not roots:
        return []
    params = {v.id: _tensors(blobs, v) for v in versions}
    shapes = {k: tuple(t.shape) for k, t in params[roots[0].id].items()}
    codec, rule = Pipeline(cfg.compress, shapes), build_rule(cfg.server.aggregator)
    why_not = _not_recomputable(cfg)
    opt: dict[str, ServerOptState] = {root.id: ServerOptState() for root in roots}
    out = []
    for v in versions:
        if v.parent is None:
            continue
        row = rounds.get(v.id)
        reason = why_not or _row_problem(v, row, opt)
        if reason:
            out.append(VersionCheck(v.id, v.round, "skipped", reason=reason))
            continue
        assert row is not None and v.parent is not None and v.weights is not None
        tasks = {t["participant"]: Task.from_dict(t) for t in row.tasks}
        updates = []
        for pid in v.participants:
            payload = blobs.get(ups[(row.id, pid)])
            update = codec.unpack(payload, shared_seed=row.codec_seed)
            clip = tasks[pid].clip_norm
            updates.append(dp.clip_l2(update, clip)[0] if clip is not None else update)
        combined = rule.combine(updates, [float(w) for w in v.weights], seed=row.codec_seed)
        new, opt[v.id] = server_step(cfg.server, params[v.parent], combined, opt[v.parent])
        error = max(float((new[k] - params[v.id][k]).abs().max()) for k in new)
        status = "ok" if error <= TOLERANCE else "mismatch"
        out.append(VersionCheck(v.id, v.round, status, error))
    return out


def _not_recomputable(cfg: FederationConfig) -> str:
    """Why no version of this federation can be recomputed from its row ("" if they can)."""
    if cfg.privacy.enabled:
        return "differential privacy: the noise added to the sum is not stored"
    if cfg.secagg.enabled:
        return "secure aggregation: only the masked sum existed"
    if cfg.buffered.enabled:
        return "buffered aggregation: stale updates were scaled by their staleness"
    if cfg.compress.downlink:
        return "a downlink codec: the stored version is the published one, not the parameters"
    if cfg.privacy.adaptive_clipping:
        return "adaptive clipping: the clip bound of each round is in its ledger"
    return ""


def _row_problem(v: Version, row: Round | None, opt: dict[str, ServerOptState]) -> str:
    """Why this version cannot be recomputed ("" if it can)."""
    if row is None:
        return "no round made it (a rollback, or a version adopted from the root)"
    if v.weights is None:
        return "its row was written before versions recorded their weights"
    if v.parent not in opt:
        return "its parent could not be recomputed (the optimizer state is unknown)"
    return ""


def _tensors(blobs: BlobStore, v: Version) -> Tensors:
    """A version's tensors, as stored (float32)."""
    return {
        k: t.to(torch.float32)
        for k, t in receive(blobs.get(v.blob_sha256), None, None, v.id).items()
    }


def check_manifests(db: Database) -> list[str]:
    """The version log of a store, read back: each stored manifest's digest, the chain of
    parent links, the Merkle roots, and that each manifest names exactly what its version's
    row and the round's stored updates say. The problems found (none: an empty list)."""
    with db.transaction() as s:
        rows = s.scalars(select(Version).order_by(Version.created_at, Version.round)).all()
        rounds = {r.result_version: r.id for r in s.scalars(select(Round)) if r.result_version}
        ups = {(u.round_id, u.participant_id): u.payload_sha256 for u in s.scalars(select(Update))}
    problems: list[str] = []
    chains: dict[str, list[Manifest]] = {}  # each model line's own chain
    for row in rows:
        if row.manifest is None:
            continue
        m = Manifest.from_dict(row.manifest)
        if m.digest != row.manifest_sha256 or m.version != row.id:
            problems.append(f"version {row.id[:12]}: its manifest does not hash to its digest")
        if (list(row.participants), list(row.weights or [])) != (
            [u.participant for u in m.updates],
            [u.weight for u in m.updates],
        ):
            problems.append(f"version {row.id[:12]}: its manifest names other updates than its row")
        rid = rounds.get(row.id)
        for u in m.updates:
            if rid is not None and ups.get((rid, u.participant)) != u.payload_sha256:
                problems.append(
                    f"version {row.id[:12]}: {u.participant[:12]}'s payload hash differs from "
                    "the stored update's"
                )
        chains.setdefault(row.line, []).append(m)
    for chain in chains.values():
        try:
            check_chain(chain)
        except ZenfedError as e:
            problems.append(e.problem)
    return problems
