import json
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from tests.conftest import tiny_config
from zenfed.config import parse_config
from zenfed.coordinator import CoordinatorPort
from zenfed.errors import ZenfedError
from zenfed.protocol import Update
from zenfed.sim import run_simulation
from zenfed.sim.runner import load_run
from zenfed.sim.setup import build_world

CFG = tiny_config(
    train={"lr": 1e-2, "local_steps": 2, "batch_size": 4, "keep_optimizer_state": True},
    server={"optimizer": "nesterov", "lr": 0.7, "momentum": 0.9},
    sampling={"fraction": 0.5, "min_participants": 2},
    run={"rounds": 3, "seed": 0},
)


pytestmark = pytest.mark.integration  # each test trains the tiny model for several rounds


@pytest.fixture(scope="module")
def world() -> Any:
    return build_world(CFG)


def test_federated_loss_decreases_and_outputs_are_written(world: Any, tmp_path: Path) -> None:
    s = run_simulation(CFG, tmp_path, world=world, baselines=("centralized", "local"))
    assert s["fed_loss"] < s["initial_loss"] - 0.05
    assert s["central_loss"] < s["initial_loss"]
    assert s["local_only_loss"] < s["initial_loss"]
    assert s["fed_steps"] == 3 * 2 * 2  # rounds x local steps x cohort of 2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # round 0 (before training) and 3 rounds
    for name in (
        "loss.png",
        "summary.json",
        "config.json",
        "checkpoint.safetensors",
        "adapter/adapter_config.json",
    ):
        assert (tmp_path / name).is_file(), name


def test_resume_finishes_with_the_same_result_as_an_uninterrupted_run(
    world: Any, tmp_path: Path
) -> None:
    whole = run_simulation(CFG, tmp_path / "a", world=world)
    part = run_simulation(CFG, tmp_path / "b", world=world, stop_after=1)
    assert part["stopped_after"] == 1
    resumed = run_simulation(CFG, tmp_path / "b", world=world, resume=True)
    assert resumed["version"] == whole["version"]  # bit-identical global adapter
    a, _, _ = load_run(tmp_path / "a")
    b, _, hist_b = load_run(tmp_path / "b")
    for k in a.params:
        torch.testing.assert_close(a.params[k], b.params[k], rtol=0, atol=0)
    assert [h["round"] for h in hist_b] == [0, 1, 2, 3]  # no round done twice
    assert resumed["fed_loss"] == pytest.approx(whole["fed_loss"])


def test_existing_run_needs_resume_or_fresh(world: Any, tmp_path: Path) -> None:
    run_simulation(CFG, tmp_path, world=world, stop_after=1)
    with pytest.raises(ZenfedError, match="already holds a run"):
        run_simulation(CFG, tmp_path, world=world)
    other = tiny_config(train={"lr": 5e-3})
    with pytest.raises(ZenfedError, match="different config"):
        run_simulation(other, tmp_path, world=world, resume=True)
    with pytest.raises(ZenfedError, match="nothing to resume"):
        run_simulation(CFG, tmp_path / "empty", world=world, resume=True)
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ZenfedError, match="not a zenfed run folder"):
        run_simulation(CFG, precious, world=world, fresh=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    with pytest.raises(ZenfedError, match="unknown baseline 'federated'"):
        run_simulation(CFG, tmp_path / "x", world=world, baselines=("federated",))


def test_traffic_is_the_length_of_what_the_transport_carried(
    world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = [
        {"codec": "topk", "fraction": 0.05},
        {"codec": "quantize", "bits": 4},
        {"codec": "zstd"},
    ]
    cfg = CFG.model_copy(
        update={
            "compress": parse_config(
                {**CFG.model_dump(mode="json"), "compress": {"pipeline": pipeline}}
            ).compress
        }
    )
    carried: dict[tuple[int, str], int] = {}
    served: dict[tuple[int, str], int] = {}
    upload, download = CoordinatorPort.upload, CoordinatorPort.download

    def spy_upload(self: CoordinatorPort, update: Update) -> str:
        carried[(update.round + 1, update.participant)] = len(update.payload)
        return upload(self, update)

    def spy_download(self: CoordinatorPort, pid: str, version: str, held: str | None) -> bytes:
        out = download(self, pid, version, held)
        info = self.engine.open_round_info
        if info is not None:  # training downloads (evaluation ones are not a round's)
            served[(info[0] + 1, pid)] = len(out)
        return out

    monkeypatch.setattr(CoordinatorPort, "upload", spy_upload)
    monkeypatch.setattr(CoordinatorPort, "download", spy_download)
    s = run_simulation(cfg, tmp_path, world=world)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for row in rows[1:]:
        this_round = {p: t for p, t in row["traffic"].items()}
        assert {p: t["up"] for p, t in this_round.items()} == {
            p: n for (r, p), n in carried.items() if r == row["round"]
        }
        assert {p: t["down"] for p, t in this_round.items()} == {
            p: n for (r, p), n in served.items() if r == row["round"]
        }
        assert row["bytes_up"] == sum(t["up"] for t in this_round.values())
        assert row["bytes_down"] == sum(t["down"] for t in this_round.values())
    assert s["upload_bytes"] == sum(carried.values())
    assert s["compression_ratio"] == pytest.approx(s["dense_upload_bytes"] / s["upload_bytes"])
    assert s["compression_ratio"] > 5


def test_downlink_sends_differences_to_holders_and_they_match_the_version(
    world: Any, tmp_path: Path
) -> None:
    raw = CFG.model_dump(mode="json")
    raw["compress"] = {"downlink": [{"codec": "quantize", "bits": 8}, {"codec": "zstd"}]}
    raw["sampling"] = {"fraction": 1.0}
    raw["run"]["eval_every"] = 100  # evaluations before round 1 and after the last only
    cfg = parse_config(raw)
    s = run_simulation(cfg, tmp_path, world=world)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    full = len(safetensors.torch.save(dict(world.initial), {"format": "zenfed-version/1"}))
    # Every participant built the root version itself (the seeded adapter) and holds it:
    # the first evaluation and round 1 download nothing. Later rounds: one 8-bit
    # broadcast each, never the full version.
    assert rows[0]["round"] == 0 and rows[0]["eval_bytes_down"] == 0
    assert all(t["down"] == 0 for t in rows[1]["traffic"].values())
    downs = [t["down"] for r in rows[2:] for t in r["traffic"].values()]
    assert downs and all(0 < d * 3 < full for d in downs), (downs, full)
    assert s["fed_loss"] < s["initial_loss"] - 0.05
    # the published version is what every participant trained from and evaluated
    ckpt, _, _ = load_run(tmp_path)
    assert ckpt.public is not None and len(ckpt.broadcasts) == 3
    held = {name: p.state.held for name, p in world.participants.items()}
    assert all(h is not None and h[0] == s["version"] for h in held.values())
    for h in held.values():
        assert h is not None
        for k in ckpt.public:
            torch.testing.assert_close(h[1][k], ckpt.public[k], rtol=0, atol=0)
    resumed = run_simulation(cfg, tmp_path / "r", world=world, stop_after=1)
    assert resumed["stopped_after"] == 1
    done = run_simulation(cfg, tmp_path / "r", world=world, resume=True)
    assert (
        done["version"] == s["version"]
    )  # restart: held copies are gone, the broadcasts since the root, same result


def test_participants_that_miss_rounds_catch_up_to_the_exact_published_version(
    world: Any, tmp_path: Path
) -> None:
    raw = CFG.model_dump(mode="json")  # half of the participants per round
    raw["compress"] = {"downlink": [{"codec": "topk", "fraction": 0.3}, {"codec": "quantize"}]}
    raw["run"].update(rounds=4, eval_every=100)
    cfg = parse_config(raw)
    s = run_simulation(cfg, tmp_path, world=world)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    cohorts = [set(r["traffic"]) for r in rows[1:]]
    names = set(world.participants)
    assert any(names - c for c in cohorts[:-1])  # someone missed a round, then caught up
    ckpt, _, _ = load_run(tmp_path)
    assert ckpt.public is not None
    for p in world.participants.values():  # the last evaluation brought everyone up to date
        assert p.state.held is not None and p.state.held[0] == s["version"]
        for k in ckpt.public:
            torch.testing.assert_close(p.state.held[1][k], ckpt.public[k], rtol=0, atol=0)
    full = len(safetensors.torch.save(dict(world.initial), {"format": "zenfed-version/1"}))
    assert 0 < rows[-1]["eval_bytes_down"] < len(names) * full  # differences, not versions


def test_dp_ftrl_runs_every_participant_once_a_pass_and_spends_the_trees_epsilon(
    world: Any, tmp_path: Path
) -> None:
    from zenfed.privacy import tree
    from zenfed.privacy.dp import tree_sizes

    raw = CFG.model_dump(mode="json")
    raw["sampling"] = {"method": "epochs", "fraction": 0.5}  # 3 holders, passes of 2 rounds
    raw["privacy"] = {"clip_norm": 1.0, "target_epsilon": 30.0, "mechanism": "tree"}
    raw["run"].update(rounds=4)
    cfg = parse_config(raw)
    s = run_simulation(cfg, tmp_path, world=world)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for p in range(2):  # each pass: every participant trained in exactly one of its rounds
        trained = [n for r in rows[1 + 2 * p : 3 + 2 * p] for n in r.get("traffic", {})]
        assert sorted(trained) == sorted(world.participants)
    z = s["privacy"]["noise_multiplier"]
    ckpt, _, _ = load_run(tmp_path)  # the releases (a round nobody's turn fell on has none)
    leaves = ckpt.privacy.tree
    assert leaves and {p for p, _ in leaves} <= {0, 1} and all(1 <= t <= 2 for _, t in leaves)
    assert s["epsilon"] == pytest.approx(tree.epsilon(z, tree_sizes(leaves), 1e-6), rel=1e-9)
    assert s["epsilon"] <= 30.0 * (1 + 1e-6)
