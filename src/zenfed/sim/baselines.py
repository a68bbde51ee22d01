"""Baselines run by the same trainer: centralized (pooled data) and local-only.

    central = centralized(world, cfg, total_steps=120)
    local = local_only(world, cfg, steps=15)

Fairness: both use the participants' own optimizer, batch size, learning rate and schedule;
the centralized run takes as many optimizer steps as all participants took together.
"""

from __future__ import annotations

from typing import Any

from zenfed.config import FederationConfig
from zenfed.model.adapter import set_adapter_state
from zenfed.sim.setup import World
from zenfed.train.evaluate import EvalResult, combine, evaluate
from zenfed.train.trainer import StepPlan, train_local


def union_eval(world: World, state: dict[str, Any]) -> tuple[EvalResult, dict[str, EvalResult]]:
    """Loss of ``state`` on the union of all held-out splits, and per participant."""
    set_adapter_state(world.model, state)
    rt = world.runtime
    per = {
        d.name: evaluate(world.model, d.heldout, rt.eval_batch_size, rt.pad_id) for d in world.data
    }
    return combine(per.values()), per


def centralized(world: World, cfg: FederationConfig, total_steps: int) -> dict[str, Any]:
    """Train one adapter on the pooled training data for ``total_steps`` steps."""
    pooled = tuple(ex for d in world.data for ex in d.train)
    plan = StepPlan(seed=cfg.run.seed, steps=total_steps, total_steps=total_steps)
    res = train_local(
        world.model,
        pooled,
        cfg.train,
        world.initial,
        plan,
        world.runtime.pad_id,
        name="centralized",
    )
    state = {k: world.initial[k] + res.delta[k] for k in world.initial}
    union, _ = union_eval(world, state)
    return {"loss": union.loss, "steps": total_steps, "seconds": res.seconds}


def local_only(world: World, cfg: FederationConfig, steps: int) -> dict[str, Any]:
    """Each participant trains alone for ``steps`` steps; losses on union and own held-out."""
    rows = {}
    for d in world.data:
        plan = StepPlan(seed=cfg.run.seed, steps=steps, total_steps=steps)
        res = train_local(
            world.model, d.train, cfg.train, world.initial, plan, world.runtime.pad_id, name=d.name
        )
        state = {k: world.initial[k] + res.delta[k] for k in world.initial}
        union, per = union_eval(world, state)
        rows[d.name] = {"union_loss": union.loss, "own_loss": per[d.name].loss}
    n = len(rows)
    return {
        "loss": sum(r["union_loss"] for r in rows.values()) / n,
        "own_loss": sum(r["own_loss"] for r in rows.values()) / n,
        "steps": steps,
        "participants": rows,
    }
