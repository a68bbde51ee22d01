"""Buffered asynchronous aggregation in the simulation, on simulated devices: it converges,
it is reproducible, and it does not wait for the slowest participant as rounds do."""

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_config
from zenfed.sim import run_simulation
from zenfed.sim.runner import load_run
from zenfed.sim.setup import build_world

pytestmark = pytest.mark.integration

SECTIONS: dict[str, Any] = {
    "data": {"partition": "iid", "num_participants": 6},
    "train": {"lr": 1e-2, "local_steps": 2, "batch_size": 4},
    "devices": {"enabled": True, "sigma": 1.0, "step_seconds": 10.0, "latency_s": 1.0},
    "run": {"rounds": 6, "seed": 0, "eval_every": 3},
}
BUFFERED = tiny_config(**SECTIONS, buffered={"enabled": True, "k": 2, "concurrency": 4})
SYNC = tiny_config(**SECTIONS, sampling={"fraction": 4 / 6})


@pytest.fixture(scope="module")
def world() -> Any:
    return build_world(BUFFERED)


def test_an_asynchronous_simulation_converges_with_stale_updates_weighed(
    world: Any, tmp_path: Path
) -> None:
    s = run_simulation(BUFFERED, tmp_path, world=world)
    assert s["fed_loss"] < s["initial_loss"] - 0.05
    rows = load_run(tmp_path)[2][1:]
    assert [r["updates"] for r in rows] == [2.0] * 6  # every version from k = 2 arrivals
    assert max(r["staleness_mean"] for r in rows) > 0  # slow devices answer late
    times = [r["sim_time"] for r in rows]
    assert times == sorted(times) and times[0] > 0
    again = run_simulation(BUFFERED, tmp_path / "again", world=world)
    assert again["version"] == s["version"]  # the simulated clock is deterministic


def test_buffered_aggregation_does_not_wait_for_the_slowest_device(
    world: Any, tmp_path: Path
) -> None:
    run_simulation(SYNC, tmp_path / "sync", world=world)
    run_simulation(BUFFERED, tmp_path / "async", world=world)
    sync, buf = (load_run(tmp_path / k)[2][1:] for k in ("sync", "async"))
    # simulated seconds per update that went into a version
    per_sync = sync[-1]["sim_time"] / sum(r["updates"] for r in sync)
    per_async = buf[-1]["sim_time"] / sum(r["updates"] for r in buf)
    assert per_async < per_sync / 1.5
