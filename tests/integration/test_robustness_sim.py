"""In the simulation, one attacker among five wrecks FedAvg and not the robust rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_config
from zenfed.errors import ZenfedError
from zenfed.sim import run_simulation
from zenfed.sim.setup import build_world

pytestmark = pytest.mark.integration

BASE: dict[str, Any] = {
    "data": {"partition": "iid", "num_participants": 5},
    "train": {"lr": 1e-2, "local_steps": 2, "batch_size": 4},
    "run": {"rounds": 5, "seed": 0},
}
ATTACK = {"kind": "sign_flip", "scale": 20.0, "participants": ["p001"]}


def _cfg(aggregator: Any = "fedavg", attack: dict[str, Any] | None = None) -> Any:
    return tiny_config(**BASE, server={"aggregator": aggregator}, attack=attack or {})


@pytest.fixture(scope="module")
def world() -> Any:
    return build_world(_cfg())


def test_a_sign_flipping_attacker_wrecks_fedavg_and_not_the_robust_rules(
    world: Any, tmp_path: Path
) -> None:
    clean = run_simulation(_cfg(), tmp_path / "clean", world=world)
    gain = clean["initial_loss"] - clean["fed_loss"]
    assert gain > 0.02, clean
    wrecked = run_simulation(_cfg(attack=ATTACK), tmp_path / "fedavg", world=world)
    assert wrecked["fed_loss"] > clean["initial_loss"]  # worse than not training at all
    for rule in ("median", {"rule": "krum", "f": 1}, "geometric_median"):
        robust = run_simulation(_cfg(rule, ATTACK), tmp_path / str(hash(str(rule))), world=world)
        # most of the clean run's improvement survives
        assert robust["fed_loss"] < clean["initial_loss"] - 0.5 * gain, (rule, robust)


def test_an_attack_the_rule_cannot_tolerate_is_refused_before_anything_is_written(
    world: Any, tmp_path: Path
) -> None:
    many = {"kind": "scaling", "participants": ["p000", "p001", "p002"]}
    with pytest.raises(ZenfedError, match="tolerates 2"):
        run_simulation(_cfg("median", many), tmp_path / "x", world=world)
    assert not (tmp_path / "x").exists()
