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
from zenfed.coordinator.regional import Region
from zenfed.protocol.auth import Identity
from zenfed.protocol.messages import Update
from zenfed.service.persistent import PersistentCoordinator
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


def _region(
    tmp: Path, name: str, clock: Clock, me: Identity, cfg: FederationConfig | None = None
) -> PersistentCoordinator:
    cfg = cfg or _cfg()
    shapes = {k: tuple(v.shape) for k, v in INITIAL.items()}
    region = Region(me.id, Pipeline(cfg.compress, shapes))
    return _coordinator(tmp, name, clock, cfg, region)


def _flat(
    tmp: Path, clock: Clock, rounds: int, cfg: FederationConfig | None = None
) -> dict[str, torch.Tensor]:
    flat = _coordinator(tmp, "flat", clock, cfg or _cfg())
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
    dp: bool = False,
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
        counted = len(pids) if dp else sum(VALUES[n][1] for n in pids)  # DP: each weighs 1
        assert update.num_examples == counted and update.pool_size == len(pids)
        assert root.port.upload(update) == "accepted"
    assert root.tick() is not None


def _root_and_regions(
    tmp: Path, clock: Clock, root_cfg: FederationConfig, region_cfg: FederationConfig
) -> tuple[PersistentCoordinator, dict[str, tuple[PersistentCoordinator, str, dict[str, str]]]]:
    """A root and the regions of REGIONS, every participant enrolled."""
    root = _coordinator(tmp, "root", clock, root_cfg)
    regions = {}
    for region_name, members in REGIONS.items():
        me = Identity(Ed25519PrivateKey.generate())
        fed = _region(tmp, region_name, clock, me, region_cfg)
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
    return root, regions


def test_a_root_over_two_regions_commits_the_flat_result(tmp_path: Path) -> None:
    clock = Clock()
    root, regions = _root_and_regions(tmp_path, clock, _cfg(), _cfg())
    for _ in range(2):
        _root_round(root, regions)
    flat = _flat(tmp_path, clock, rounds=2)
    for k in flat:  # the same weighted mean, up to floating-point rounding
        torch.testing.assert_close(root.engine.state.params[k], flat[k], rtol=1e-6, atol=1e-6)
    assert root.engine.state.round == 2
    # each region's participants downloaded the root's version, bytes as the root has them
    for fed, _, _ in regions.values():
        assert fed.engine.version.id == root.engine.state.versions[-2].id


def _private(**regions: object) -> tuple[FederationConfig, FederationConfig, FederationConfig]:
    """(flat, root, region) configs of DP-FedAvg whose noise is negligible (z = 1e-9)
    and whose clip bound (0.5) every update of VALUES exceeds."""
    from zenfed.config import parse_config
    from zenfed.regions import regional_config

    raw = _cfg().model_dump(mode="json")
    raw["privacy"] = {"clip_norm": 0.5, "noise_multiplier": 1e-9}
    raw["sampling"]["method"] = "poisson"
    flat = parse_config(raw)
    root = parse_config({**raw, "regions": {"enabled": True, "fraction": 1.0, **regions}})
    return flat, root, regional_config(root.model_dump(mode="json"), _cfg())


@pytest.mark.parametrize("noise_at", ["root", "region"])
def test_dp_over_regions_clips_each_participant_and_divides_as_flat_dp_fedavg(
    tmp_path: Path, noise_at: str
) -> None:
    flat_cfg, root_cfg, region_cfg = _private(noise=noise_at)
    assert region_cfg.sampling.fraction == 1.0 and not region_cfg.regions.enabled
    assert region_cfg.privacy.clip_norm == 0.5
    clock = Clock()
    root, regions = _root_and_regions(tmp_path, clock, root_cfg, region_cfg)
    for _ in range(2):
        _root_round(root, regions, dp=True)
    flat = _flat(tmp_path, clock, rounds=2, cfg=flat_cfg)
    # each participant clipped to 0.5 (at its region), the sum divided by q * N = 4:
    # what one flat DP-FedAvg coordinator over the four commits
    for k in flat:
        torch.testing.assert_close(root.engine.state.params[k], flat[k], rtol=1e-6, atol=1e-6)
    assert root.engine.state.privacy.rounds == [(1.0, 1e-9)] * 2  # one release per round
    for fed, _, _ in regions.values():
        assert fed.engine.state.privacy.rounds == []  # accounted at the root only
    latest = root.engine.state.versions[-1]
    assert latest.metrics["sampling_rate"] == 1.0 and "epsilon" in latest.metrics


def test_a_private_root_over_regions_refuses_what_is_not_a_regions_update(
    tmp_path: Path,
) -> None:
    from zenfed.coordinator.validate import UpdateRejected

    _, root_cfg, region_cfg = _private()
    root, regions = _root_and_regions(tmp_path, Clock(), root_cfg, region_cfg)
    root.tick()
    _, root_pid, _ = regions["eu"]
    task = root.next_task(root_pid)
    assert task is not None and task.clip_norm == 0.5
    ones = {k: torch.full_like(v, 0.1) for k, v in INITIAL.items()}
    codec = root.engine.codec
    payload = codec.to_bytes(codec.encode(ones, shared_seed=task.codec_seed))
    plain = Update(task.round, root_pid, task.version, payload, 2, 2, 10, 1.0, 1.0, 1)
    with pytest.raises(UpdateRejected, match="no pool_size"):
        root.port.upload(plain)
    with pytest.raises(UpdateRejected, match="sums 3 clipped updates from a pool of 2"):
        root.port.upload(replace(plain, num_examples=3, pool_size=2))
    assert root.engine.open_round_info[2] == frozenset()  # type: ignore[index]
    assert root.port.upload(replace(plain, pool_size=2)) == "accepted"


@pytest.mark.parametrize(
    ("regions", "message"),
    [
        ({"fraction": 0.0}, "must be in \\(0, 1\\]"),
        ({"sampling": {"fraction": 0.5}}, "hands every region"),
        ({"privacy": {"adaptive_clipping": True}}, "adaptive clipping"),
        ({"secagg": {"enabled": True}}, "secure aggregation at a root over regions"),
    ],
)
def test_what_a_root_over_regions_cannot_do_is_a_config_error(
    regions: dict[str, object], message: str
) -> None:
    from zenfed.config import parse_config
    from zenfed.errors import ZenfedError

    raw = _cfg().model_dump(mode="json")
    raw["privacy"] = {"clip_norm": 0.5, "noise_multiplier": 1.0}
    raw["sampling"]["method"] = "poisson"
    raw["regions"] = {"enabled": True}
    for section, values in regions.items():
        if isinstance(values, dict):
            raw[section] = {**raw[section], **values}
        else:
            raw["regions"][section] = values
    with pytest.raises(ZenfedError, match=message):
        parse_config(raw)


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
            "no \\[regions\\]",
        ),
        ({"privacy": {"clip_norm": 1.0}}, "no \\[regions\\]"),
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


@pytest.mark.parametrize("noise_at", ["root", "region"])
def test_the_noise_is_drawn_once_where_regions_noise_says(noise_at: str) -> None:
    from zenfed.aggregate import Aggregate
    from zenfed.config import parse_config
    from zenfed.privacy.policy import PrivacyPolicy

    _, root_cfg, region_cfg = _private(noise=noise_at)
    z = 2.0
    raw = root_cfg.model_dump(mode="json")
    raw["privacy"]["noise_multiplier"] = z
    root_cfg = parse_config(raw)
    region_cfg = region_cfg.model_copy(update={"privacy": root_cfg.privacy})
    root, region = PrivacyPolicy(root_cfg), PrivacyPolicy(region_cfg)
    ledger = root.initial_ledger()
    bare = Aggregate({"x": torch.zeros(200_000, dtype=torch.float64)}, weight=3.0, count=3)
    sent = region.forwarded(bare, ledger)
    released, metrics, spent = root.release(sent, ledger, expected_cohort=4.0, secure=False)
    noised = sent if noise_at == "region" else released
    std = z * 0.5  # z * C, on the sum
    assert float(noised.total["x"].std()) == pytest.approx(std, rel=0.02)
    before = sent if noise_at == "region" else bare  # what the noising step was given
    after_step = released if noise_at == "region" else sent  # what the other step left
    assert torch.equal(after_step.total["x"], before.total["x"])  # noised once, not twice
    assert released.weight == 4.0  # the fixed denominator either way
    assert spent.rounds == [(1.0, z)] and metrics["noise_std"] == std
