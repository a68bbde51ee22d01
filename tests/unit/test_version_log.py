"""The version log: manifests chained by hash, their Merkle roots, and a deployment's store
keeping every manifest and every upload's signed request."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from tests.unit.test_persistent import Clock, _cfg, _fed, _join, _upload
from tests.unit.test_persistent import store as store
from zenfed.coordinator import Coordinator
from zenfed.errors import ZenfedError
from zenfed.protocol import Update
from zenfed.protocol.auth import check_proof
from zenfed.protocol.manifest import Included, Manifest, check_chain, merkle_root
from zenfed.service.recompute import check_manifests
from zenfed.store.db import Update as UpdateRow
from zenfed.store.db import Version

INITIAL = {"a": torch.zeros(2, 3), "b": torch.ones(4)}


def test_a_manifest_changes_its_digest_with_any_field_and_the_merkle_root_with_any_update() -> None:
    ups = (Included("p1", "aa" * 32, 10.0, 10), Included("p2", "bb" * 32, 20.0, 20))
    m = Manifest(
        "v" * 64, 0, "r" * 64, "d" * 64, "c" * 64, updates=ups, merkle_root=merkle_root(ups)
    )
    assert Manifest.from_dict(m.to_dict()) == m and len(m.digest) == 64
    assert replace(m, round=1).digest != m.digest
    assert merkle_root(ups) == merkle_root(ups[::-1])  # order-free: by participant
    forged = (ups[0], replace(ups[1], payload_sha256="cc" * 32))
    assert merkle_root(forged) != m.merkle_root
    with pytest.raises(ZenfedError, match="Merkle root does not match"):
        check_chain([replace(m, updates=forged)])


def test_each_version_of_the_engine_names_its_parents_manifest() -> None:
    cfg = _cfg()
    c = Coordinator(cfg, INITIAL, {"p1": 30, "p2": 10})
    chain = [c.last_manifest]
    for r in range(2):
        tasks = c.open_round()
        codec = c.codec
        for t in tasks:
            tensors = {k: torch.full_like(v, float(r + 1)) for k, v in INITIAL.items()}
            payload = codec.to_bytes(codec.encode(tensors, shared_seed=t.codec_seed))
            c.submit(Update(t.round, t.participant, t.version, payload, 10, 8, 100, 1.0, 2.0, 1))
        v = c.close_round()
        assert c.last_manifest is not None and v.manifest == c.last_manifest.digest
        chain.append(c.last_manifest)
    assert all(m is not None for m in chain)
    check_chain([m for m in chain if m is not None])
    last = chain[-1]
    assert last is not None and [u.participant for u in last.updates] == ["p1", "p2"]
    assert last.rule.startswith("fedavg") and last.parent_manifest == chain[1].digest  # type: ignore[union-attr]
    with pytest.raises(ZenfedError, match="does not name its parent"):
        check_chain([chain[0], chain[2]])  # type: ignore[list-item]


@pytest.mark.usefixtures("store")
def test_the_store_keeps_every_manifest_and_each_uploads_signed_request(tmp_path: Path) -> None:
    from zenfed.protocol.auth import request_proof, sign_request

    clock = Clock()
    fed = _fed(tmp_path, clock)
    a, me_a = _join(fed, "a")
    b, _ = _join(fed, "b")
    fed.tick()
    for pid, value in ((a, 1.0), (b, 2.0)):
        u = _upload(fed, pid, value)
        headers = sign_request(me_a, "PUT", "/v1/x", u.payload) if pid == a else {}
        fed.port.upload(replace(u, proof=request_proof("PUT", "/v1/x", headers)))
    fed.tick()
    assert fed.engine.version.round == 0
    assert check_manifests(fed.db) == []
    with fed.db.transaction() as s:
        row = s.scalars(select(UpdateRow).where(UpdateRow.participant_id == a)).one()
        assert check_proof(me_a.public_key, row.signature, row.payload_sha256)
        assert not check_proof(me_a.public_key, row.signature, "0" * 64)
        version = s.scalars(select(Version).where(Version.round == 0)).one()
        assert version.manifest_sha256 == fed.engine.version.manifest
        forged = dict(version.manifest)
        forged["updates"] = forged["updates"][:1]  # a manifest that drops an update
        version.manifest = forged
    problems = check_manifests(fed.db)
    assert any("does not hash to its digest" in p for p in problems)
    assert any("other updates than its row" in p for p in problems)
