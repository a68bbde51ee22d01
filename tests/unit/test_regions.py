"""Regional coordinators in process (their HTTP side is tests/integration/test_regions.py):
a root over two regions commits what a flat coordinator over all their participants
commits, and a region that crashes after closing its round sends the same update again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.unit.test_persistent import INITIAL, Clock, _cfg, _join, _upload
from zenfed.compress import Pipeline
from zenfed.config import FederationConfig
from zenfed.coordinator.persistent import PersistentCoordinator
from zenfed.coordinator.regional import Region
from zenfed.protocol.auth import Identity
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Database

VALUES = {"ai": (1.0, 30), "emotion": (5.0, 10), "food": (-2.0, 20), "history": (3.0, 40)}
REGIONS = {"eu": ("ai", "emotion"), "us": ("food", "history")}


def _coordinator(
    tmp: Path, name: str, clock: Clock, cfg: FederationConfig, region: Region | None = None
) -> PersistentCoordinator:
    db = Database(f"sqlite:///{tmp / name / 'fed.db'}")
    (tmp / name).mkdir(exist_ok=True)
    return PersistentCoordinator(
        cfg, INITIAL, db, BlobStore(tmp / name / "blobs"), clock, region=region
    )


def _region(tmp: Path, name: str, clock: Clock, me: Identity) -> PersistentCoordinator:
    shapes = {k: tuple(v.shape) for k, v in INITIAL.items()}
    region = Region(me.id, Pipeline(_cfg().compress, shapes))
    return _coordinator(tmp, name, clock, _cfg(), region)


def _flat(tmp: Path, clock: Clock, rounds: int) -> dict[str, torch.Tensor]:
    flat = _coordinator(tmp, "flat", clock, _cfg())
    pids = {name: _join(flat, name, n)[0] for name, (_, n) in VALUES.items()}
    for _ in range(rounds):
        flat.tick()
        for name, (value, n) in VALUES.items():
            assert flat.port.upload(_upload(flat, pids[name], value, n)) == "accepted"
        assert flat.tick() is not None
    return flat.engine.state.params


def _root_round(
    root: PersistentCoordinator,
    regions: dict[str, tuple[PersistentCoordinator, str, dict[str, str]]],
) -> None:
    root.tick()
    for fed, root_pid, pids in regions.values():
        task = root.next_task(root_pid)
        assert task is not None
        payload = root.blobs.get(root.version_blob(task.version))
        fed.take_root_task(task, payload)
        assert fed.tick() is None and fed.engine.open_round_info is not None  # opened
        assert fed.next_task(next(iter(pids.values()))).version == task.version  # type: ignore[union-attr]
        for name, pid in pids.items():
            value, n = VALUES[name]
            assert fed.port.upload(_upload(fed, pid, value, n)) == "accepted"
        fed.tick()
        assert fed.last_tick == "forwarded" and fed.engine.open_round_info is None
        update = fed.region.results[task.round]  # type: ignore[union-attr]
        assert update.num_examples == sum(VALUES[n][1] for n in pids)
        assert root.port.upload(update) == "accepted"
    assert root.tick() is not None


def test_a_root_over_two_regions_commits_the_flat_result(tmp_path: Path) -> None:
    clock = Clock()
    root = _coordinator(tmp_path, "root", clock, _cfg())
    regions = {}
    for region_name, members in REGIONS.items():
        me = Identity(Ed25519PrivateKey.generate())
        fed = _region(tmp_path, region_name, clock, me)
        pids = {name: _join(fed, name, VALUES[name][1])[0] for name in members}
        examples = sum(VALUES[n][1] for n in members)
        root_pid = root.enroll(
            root.invite(region_name),
            region_name,
            me.public_key,
            {"memory_gb": 8},
            {"examples": examples},
        )
        assert root_pid == me.id and root.next_task(root_pid) is None
        regions[region_name] = (fed, root_pid, pids)
    for _ in range(2):
        _root_round(root, regions)
    flat = _flat(tmp_path, clock, rounds=2)
    for k in flat:  # the same weighted mean, up to floating-point rounding
        torch.testing.assert_close(root.engine.state.params[k], flat[k], rtol=1e-6, atol=1e-6)
    assert root.engine.state.round == 2
    # each region's participants downloaded the root's version, bytes as the root has them
    for fed, _, _ in regions.values():
        assert fed.engine.version.id == root.engine.state.versions[-2].id


def _one_region(
    tmp: Path,
) -> tuple[Clock, Identity, PersistentCoordinator, PersistentCoordinator, dict[str, str], str]:
    """A root with the region "eu" (two participants) and one participant of its own,
    its first round open: (clock, eu's identity, root, eu, eu's pids, the root's own)."""
    clock = Clock()
    me = Identity(Ed25519PrivateKey.generate())
    root = _coordinator(tmp, "root", clock, _cfg())
    fed = _region(tmp, "eu", clock, me)
    pids = {name: _join(fed, name, VALUES[name][1])[0] for name in REGIONS["eu"]}
    root.enroll(root.invite("eu"), "eu", me.public_key, {"memory_gb": 8}, {"examples": 40})
    root.next_task(me.id)
    other = _join(root, "lab", 10)[0]
    root.tick()
    return clock, me, root, fed, pids, other


def test_a_region_restarted_after_forwarding_sends_the_same_update(tmp_path: Path) -> None:
    clock, me, root, fed, pids, other = _one_region(tmp_path)
    task = root.next_task(me.id)
    assert task is not None
    fed.take_root_task(task, root.blobs.get(root.version_blob(task.version)))
    fed.tick()
    for name, pid in pids.items():
        fed.port.upload(_upload(fed, pid, *VALUES[name]))
    fed.tick()
    sent = fed.region.results[task.round]  # type: ignore[union-attr]
    # kill -9 after the round was forwarded, before the root acknowledged it: a restart
    # has the very same update to send, and the root counts it once
    fed.db.close()
    again = _region(tmp_path, "eu", clock, me)
    assert again.region is not None and again.region.results[task.round] == sent
    again.take_root_task(task, b"not needed: forwarded already")
    assert again.engine.open_round_info is None
    assert root.port.upload(sent) == "accepted" and root.port.upload(sent) == "duplicate"
    assert root.port.upload(_upload(root, other, 2.0, 10)) == "accepted"
    assert root.tick() is not None


def test_a_region_restarted_mid_round_forwards_what_it_had_accepted(tmp_path: Path) -> None:
    clock, me, root, fed, pids, _ = _one_region(tmp_path)
    task = root.next_task(me.id)
    assert task is not None
    fed.take_root_task(task, root.blobs.get(root.version_blob(task.version)))
    fed.tick()
    fed.port.upload(_upload(fed, pids["ai"], *VALUES["ai"]))
    fed.db.close()  # kill -9 with one of two updates accepted
    again = _region(tmp_path, "eu", clock, me)
    assert again.engine.open_round_info is not None  # the round and its update came back
    assert again.tick() is None and again.last_tick == "idle"  # no root task yet: waits
    again.take_root_task(task, b"not needed: the round is open")
    again.port.upload(_upload(again, pids["emotion"], *VALUES["emotion"]))
    again.tick()
    assert again.last_tick == "forwarded"
    update = again.region.results[task.round]  # type: ignore[union-attr]
    assert update.num_examples == 40  # both, the one from before the crash counted once
    mean = again.engine.codec.unpack(update.payload, shared_seed=task.codec_seed)
    torch.testing.assert_close(mean["a"], torch.full((2, 3), (1.0 * 30 + 5.0 * 10) / 40))


def test_a_root_task_for_a_version_that_does_not_match_its_bytes_is_refused(
    tmp_path: Path,
) -> None:
    from zenfed.errors import ZenfedError

    _, me, root, fed, _, _ = _one_region(tmp_path)
    task = root.next_task(me.id)
    assert task is not None
    before = list(fed.engine.state.versions)
    forged = replace(task, version="f" * 64)  # a version the root never published
    with pytest.raises(ZenfedError, match="not version"):
        fed.take_root_task(forged, root.blobs.get(root.version_blob(task.version)))
    assert fed.engine.state.versions == before and fed.region.task is None  # type: ignore[union-attr]
    assert fed.tick() is None and fed.engine.open_round_info is None  # nothing to open


@pytest.mark.parametrize(
    ("root", "message"),
    [
        (
            {
                "privacy": {"clip_norm": 1.0, "noise_multiplier": 1.0},
                "sampling": {"method": "poisson", "fraction": 0.5},
            },
            "DP over regional",
        ),
        ({"privacy": {"clip_norm": 1.0}}, "DP over regional"),
        ({"secagg": {"enabled": True, "clip_norm": 1.0}}, "among regional coordinators"),
        ({"buffered": {"enabled": True, "k": 2}}, "buffered aggregation with regional"),
    ],
)
def test_what_a_region_cannot_do_yet_is_refused_before_it_starts(
    root: dict[str, object], message: str
) -> None:
    from zenfed.errors import ZenfedError
    from zenfed.regions import regional_config

    raw = {"data": {"categories": ["ai"]}, "sampling": {"fraction": 0.5}, **root}
    from zenfed.config import parse_config

    root_cfg = parse_config(raw).model_dump(mode="json")
    with pytest.raises(ZenfedError, match=message):
        regional_config(root_cfg, _cfg())


def test_a_region_keeps_the_roots_federation_and_its_own_local_sections() -> None:
    from zenfed.config import parse_config
    from zenfed.regions import regional_config

    root = parse_config(
        {"data": {"categories": ["ai"]}, "train": {"lr": 0.123}, "sampling": {"fraction": 0.5}}
    )
    local = parse_config(
        {"data": {"categories": ["food"]}, "train": {"lr": 9.0}, "sampling": {"fraction": 1.0}}
    )
    cfg = regional_config(root.model_dump(mode="json"), local)
    assert cfg.train.lr == 0.123 and cfg.data.categories == ("ai",)  # the root's
    assert cfg.sampling.fraction == 1.0  # the region's own


def test_an_unreachable_upstream_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    from zenfed.errors import ZenfedError
    from zenfed.regions import Upstream

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    link = Upstream(f"http://127.0.0.1:{port}", "eu", "token")
    with pytest.raises(ZenfedError, match="unreachable") as e:
        link.connect(_cfg(), tmp_path, give_up_s=0.5)
    assert "--upstream" in e.value.fix
    with pytest.raises(ZenfedError, match="need --upstream"):
        Upstream.of(None, "eu", None, None)
    with pytest.raises(ZenfedError, match="upstream-name"):
        Upstream.of("http://root", None, None, None)
