"""A simulation with secure aggregation and distributed DP: it finishes, reports epsilon,
the released adapter carries it, and a resumed run keeps the privacy ledger."""

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_config
from zenfed.errors import ZenfedError
from zenfed.privacy import dp
from zenfed.protocol.messages import Task
from zenfed.sim import run_simulation
from zenfed.sim.runner import load_run
from zenfed.sim.setup import build_world

pytestmark = pytest.mark.integration

CFG = tiny_config(
    data={"categories": ["ai", "emotion", "literature", "trivia", "coding"]},
    train={"lr": 3e-3, "local_steps": 1, "batch_size": 4},
    sampling={"method": "poisson", "fraction": 0.9},
    privacy={
        "clip_norm": 1.0,
        "target_epsilon": 30.0,
        "noise": "distributed",
        "adaptive_clipping": True,
        "record_clip_norm": 1.0,
        "record_noise_multiplier": 1.0,
    },
    secagg={"enabled": True, "min_survivors": 2},
    compress={"pipeline": [{"codec": "randk", "fraction": 0.5}]},
    run={"rounds": 3, "seed": 1, "dropout": 0.2, "eval_every": 3},
)


def test_secure_distributed_dp_simulation_reports_epsilon_and_resumes(tmp_path: Path) -> None:
    world = build_world(CFG)
    part = run_simulation(CFG, tmp_path, world=world, stop_after=1)
    assert part["stopped_after"] == 1
    state, _, history = load_run(tmp_path)
    released = len(state.privacy.rounds)
    assert released == sum(1 for h in history[1:] if "aborted" not in h)
    s = run_simulation(CFG, tmp_path, world=world, resume=True)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    done = [r for r in rows[1:] if "aborted" not in r]
    assert done, rows  # at least one round got through its dropouts
    z = s["privacy"]["noise_multiplier"]
    want = dp.epsilon([(0.9, z)] * len(done), 1e-6)
    assert s["epsilon"] == pytest.approx(want) and 0 < s["epsilon"] <= 30.0
    assert done[-1]["epsilon"] == pytest.approx(want)
    assert all("clip_norm" in r and "below_clip_fraction" in r for r in done)
    # DP-SGD on every holder's records: each reports its own spent epsilon
    assert all(0 < r["record_epsilon_max"] < float("inf") for r in done)
    card = json.loads((tmp_path / "adapter" / "zenfed_privacy.json").read_text())
    assert card["epsilon"] == pytest.approx(want) and card["secure_aggregation"] is True
    assert card["noise"] == "distributed" and card["delta"] == 1e-6
    failures = [f for r in done for f in r.get("failures", {}).values()]
    assert all("dropped out" in f for f in failures)


def test_record_target_epsilon_is_spent_exactly_by_the_last_round_and_not_beyond(
    tmp_path: Path,
) -> None:
    cfg = tiny_config(
        train={"lr": 3e-3, "local_steps": 2, "batch_size": 4},
        sampling={"fraction": 1.0},
        privacy={"record_clip_norm": 1.0, "record_target_epsilon": 2.0},
        run={"rounds": 3, "seed": 2, "eval_every": 3},
    )
    world = build_world(cfg)
    run_simulation(cfg, tmp_path, world=world)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    spent = [r["record_epsilon_max"] for r in rows[1:]]
    assert len(spent) == 3 and spent[0] < spent[1] < spent[2]
    # every holder trained in all 3 rounds: each calibrated its own multiplier (its own
    # sampling rate) to spend the target over exactly those 6 steps
    for p in world.participants.values():
        assert len(p.state.record_privacy) == 6
        assert dp.epsilon(p.state.record_privacy, 1e-6) == pytest.approx(2.0, rel=1e-3)
        assert dp.epsilon(p.state.record_privacy, 1e-6) <= 2.0 * (1 + 1e-9)
    assert len({p.state.record_privacy[0] for p in world.participants.values()}) == 3
    p = next(iter(world.participants.values()))
    before = list(p.state.record_privacy)
    extra = Task(
        3, p.name, "v" * 64, record_clip_norm=1.0, record_target_epsilon=2.0, record_rounds=3
    )
    with pytest.raises(dp.PrivacyBudgetExceeded, match="above privacy.record_target_epsilon 2"):
        p.train(extra, lambda version, held: b"")
    assert p.state.record_privacy == before  # refused before anything was trained or spent
    unknown = Task(3, p.name, "v" * 64, record_clip_norm=1.0, record_target_epsilon=2.0)
    with pytest.raises(ZenfedError, match="without the run's rounds"):
        p.train(unknown, lambda version, held: b"")
