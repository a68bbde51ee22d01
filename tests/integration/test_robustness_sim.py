"""In the simulation, one attacker among five wrecks FedAvg and not the robust rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import tiny_config
from zenfed.compress.downlink import receive
from zenfed.errors import ZenfedError
from zenfed.sim import run_simulation
from zenfed.sim.runner import load_run, rollback_run
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
    # the attack costs FedAvg a large part of the clean gain (on the tiny random model,
    # whose start is above the uniform loss, a reversed step still lowers it a little:
    # measured 10.737 against a start of 10.818 and a clean 10.674)
    assert wrecked["fed_loss"] > clean["fed_loss"] + 0.3 * gain, (clean, wrecked)
    for rule in ("median", {"rule": "krum", "f": 1}, "geometric_median"):
        robust = run_simulation(_cfg(rule, ATTACK), tmp_path / str(hash(str(rule))), world=world)
        # most of the clean run's improvement survives, more than under FedAvg
        assert robust["fed_loss"] < clean["initial_loss"] - 0.5 * gain, (rule, robust)
        assert robust["fed_loss"] < wrecked["fed_loss"], (rule, robust, wrecked)


def test_an_attack_the_rule_cannot_tolerate_is_refused_before_anything_is_written(
    world: Any, tmp_path: Path
) -> None:
    many = {"kind": "scaling", "participants": ["p000", "p001", "p002"]}
    with pytest.raises(ZenfedError, match="tolerates 2"):
        run_simulation(_cfg("median", many), tmp_path / "x", world=world)
    assert not (tmp_path / "x").exists()


def test_detection_quarantines_a_scaling_attacker_and_the_model_improves(
    world: Any, tmp_path: Path
) -> None:
    scaling = {"kind": "scaling", "scale": 20.0, "participants": ["p001"]}
    cfg = tiny_config(
        **BASE, server={"aggregator": "median"}, attack=scaling, detect={"enabled": True}
    )
    s = run_simulation(cfg, tmp_path / "detect", world=world)
    assert list(s["quarantined"]) == ["p001"] and "norm" in s["quarantined"]["p001"]
    rows = [
        json.loads(line) for line in (tmp_path / "detect/metrics.jsonl").read_text().splitlines()
    ]
    assert rows[1]["flagged"] == 1.0 and "quarantined" not in rows[1]  # flagged once: kept
    assert rows[2]["quarantined"] == ["p001"]  # twice: out
    assert all(r["participants"] == 4 for r in rows[3:] if "participants" in r)
    assert s["fed_loss"] < s["initial_loss"] - 0.02
    # an operator rolls the run back to its first version: a new version, the same tensors
    state, _, _ = load_run(tmp_path / "detect")
    first = state.versions[1]
    v = rollback_run(tmp_path / "detect", first.id[:12])
    after, _, history = load_run(tmp_path / "detect")
    assert v.rollback_of == first.id and after.version == v and history[-1]["rollback_of"]
    saved = (tmp_path / "detect/versions" / f"{first.id}.safetensors").read_bytes()
    expected = receive(saved, None, None, first.id)
    assert all(torch.equal(after.published[k], expected[k]) for k in expected)
    with pytest.raises(ZenfedError, match="not in this federation's lineage"):
        rollback_run(tmp_path / "detect", "0123456789ab")


def test_the_gate_keeps_fedavg_from_poisoned_rounds(world: Any, tmp_path: Path) -> None:
    # (the tiny random model's loss is about 10.8: no regression at all is tolerated)
    gate = {"source": "heldout", "max_examples": 64, "tolerance": 0.0}
    s = run_simulation(
        tiny_config(**BASE, attack=ATTACK, gate=gate), tmp_path / "gated", world=world
    )
    # FedAvg alone ends worse than it started (above); the gate rejects those rounds
    assert s["rejected_rounds"] >= 1
    assert s["fed_loss"] <= s["initial_loss"] + 1e-4, s


def test_bucketed_secure_robust_aggregation_resists_an_attacker_under_secagg(
    tmp_path: Path,
) -> None:
    base = {**BASE, "data": {"partition": "iid", "num_participants": 7}}
    # a clip range wide enough that the fixed-point clamp does not blunt the attack
    secagg = {"enabled": True, "clip_norm": 100.0}
    median = {"rule": "median"}
    with pytest.raises(ZenfedError, match="add bucket = s"):
        run_simulation(tiny_config(**base, secagg=secagg, server={"aggregator": median}), tmp_path)
    bucketed = {"aggregator": {"rule": "median", "bucket": 2}}
    clean = run_simulation(tiny_config(**base, secagg=secagg), tmp_path / "clean")
    gain = clean["initial_loss"] - clean["fed_loss"]
    plain = run_simulation(tiny_config(**base, secagg=secagg, attack=ATTACK), tmp_path / "avg")
    # secure FedAvg loses a large part of what the clean run gained. How much is chaotic:
    # it kept 6 % of the gain on one machine, -20 % and -14 % with AVX2 and scalar kernels
    # forced there, 32 % on another; bucketed median kept 96 % under all four
    assert clean["initial_loss"] - plain["fed_loss"] < 0.6 * gain, (plain, clean)
    cfg = tiny_config(**base, secagg=secagg, server=bucketed, attack=ATTACK)
    s = run_simulation(cfg, tmp_path / "bucketed")
    assert s["aborted_rounds"] == 0
    assert s["fed_loss"] < clean["initial_loss"] - 0.8 * gain, (s, clean)
    assert s["fed_loss"] < plain["fed_loss"], (s, plain)
