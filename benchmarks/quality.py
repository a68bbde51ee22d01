"""Quality benchmark: federated vs centralized vs local-only on a real LLM and real data.

    python -m benchmarks.quality            # the whole protocol (about an hour here)
    python -m benchmarks.quality --explore --set train.lr=1e-3 --set run.rounds=15 ...
    python -m benchmarks.quality --engine-vs-bare --repeats 2   # only the engine's overhead
    python -m benchmarks.quality --seeds 0,1,2   # the chosen recipe over seeds (~30 min)

Workload (issue #2): built-in SmolLM2-135M-Instruct, LoRA r=8 on q/k/v/o, the 8 chatterbot
English categories as participants (natural split, 80/20 per category), sequences of 64
tokens with the loss on whole sequences, batch 8, and the same total number of optimizer
steps (120) for federated and centralized training. Fairness: centralized training uses
the participants' optimizer (AdamW, same schedule) and each side takes its best learning
rate from the same grid (seed 0). ``--seeds`` then measures both sides and local-only at
the chosen learning rates over several seeds (run.seed: the LoRA init, the held-out
split, the cohorts, the batches) and puts their means at the top of the JSON, with the
sample standard deviation beside each. Also times a bare PyTorch + PEFT loop doing
exactly the engine's steps and evaluations, and reports engine_overhead = engine / bare - 1.

Writes benchmarks/results/quality.json and quality.png.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, write_json
from zenfed.cli import _parse_overrides
from zenfed.config import FederationConfig, parse_config
from zenfed.model.adapter import adapter_parameters
from zenfed.sim.baselines import centralized, local_only, union_eval
from zenfed.sim.runner import efficiency, run_simulation
from zenfed.sim.setup import World, build_world
from zenfed.train.batching import batches
from zenfed.train.loss import loss_sum
from zenfed.train.trainer import lr_at

GRID = (1e-4, 3e-4, 1e-3, 3e-3)
TOTAL_STEPS = 120

# The federated recipe under test: 60 rounds x 1 local step x a cohort of 2 of the 8
# participants = 120 steps, plain FedAvg on the server. (Full participation, 15 rounds x 8
# with outer Nesterov 0.7/0.9, reached 0.931: see the README.)
RECIPE: dict[str, Any] = {
    "name": "quality",
    "model": {"name": "smollm2-135m-instruct"},
    "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "data": {
        "corpus": "chatterbot",
        "partition": "natural",
        "max_seq_len": 64,
        "heldout_fraction": 0.2,
        "train_on": "all",
    },
    "train": {"lr": 3e-3, "local_steps": 1, "batch_size": 8},
    "server": {"optimizer": "fedavg", "lr": 1.0},
    "sampling": {"fraction": 0.25, "min_participants": 2},
    "run": {"rounds": 60, "seed": 0, "eval_every": 1000, "out_dir": "runs/bench-quality"},
}


def make_config(overrides: dict[str, Any]) -> FederationConfig:
    """The recipe with dotted-key overrides applied."""
    raw: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in RECIPE.items()}
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return parse_config(raw, origin="benchmark recipe")


def with_lr(cfg: FederationConfig, lr: float) -> FederationConfig:
    """``cfg`` with another local learning rate."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": lr})})


def run_fed(world: World, cfg: FederationConfig, out: Path) -> tuple[float, float]:
    """One federated run through the engine; returns (union held-out loss, seconds)."""
    t0 = time.perf_counter()
    s = run_simulation(cfg, out, fresh=True, world=world)
    return s["fed_loss"], time.perf_counter() - t0


def bare_loop(world: World, cfg: FederationConfig) -> tuple[float, float]:
    """The engine's computation written as a plain PyTorch + PEFT loop: same cohorts and
    batches, same AdamW state handling, same server step (FedAvg or outer Nesterov), same
    two union evaluations. Updates are not serialized: the engine's bytes are its cost."""
    t0 = time.perf_counter()
    model, pad, tc, sc = world.model, world.runtime.pad_id, cfg.train, cfg.server
    union_eval(world, world.initial)  # the engine evaluates before round 1 too
    params = adapter_parameters(model)
    glob = {k: v.clone() for k, v in world.initial.items()}
    mom: dict[str, torch.Tensor] = {}
    opt_states: dict[str, Any] = {}
    rounds, steps = cfg.run.rounds, int(tc.local_steps or 1)
    from zenfed.coordinator import Member, Strategy, build_matcher

    strategy = Strategy(cfg, build_matcher(cfg.sampling, cfg.run.seed))
    pool = [Member(d.name, d.name, len(d.train)) for d in world.data]
    for r in range(rounds):
        tasks = strategy.draw(r, pool, "bare", 0.0)
        data = {d.name: d for d in world.data}
        acc = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in glob.items()}
        total_w = 0.0
        for task in tasks:
            d = data[task.participant]
            torch.manual_seed(task.seed)
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(glob[k])
            opt = torch.optim.AdamW(list(params.values()), lr=tc.lr, weight_decay=tc.weight_decay)
            if d.name in opt_states:
                opt.load_state_dict(opt_states[d.name])
            stream = batches(d.train, tc.batch_size, task.seed, pad)
            for s in range(steps):
                for g in opt.param_groups:
                    g["lr"] = lr_at(tc, r * steps + s, rounds * steps, tc.lr)
                batch = next(stream)
                total, n = loss_sum(model, batch)
                (total / max(1, n)).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if tc.keep_optimizer_state:
                opt_states[d.name] = opt.state_dict()
            for k, p in params.items():
                acc[k].add_((p.detach() - glob[k]).double(), alpha=float(len(d.train)))
            total_w += len(d.train)
        for k in glob:  # server step on the pseudo-gradient g = -mean delta
            g = -(acc[k] / total_w).float()
            if sc.optimizer == "nesterov":
                mom[k] = sc.momentum * mom[k] + g if k in mom else g.clone()
                g = g + sc.momentum * mom[k]
            elif sc.optimizer != "fedavg":
                raise SystemExit(f"the bare loop has no {sc.optimizer} server step")
            glob[k] = glob[k] - sc.lr * g
    union, _ = union_eval(world, glob)
    return union.loss, time.perf_counter() - t0


def engine_vs_bare(world: World, cfg: FederationConfig, repeats: int) -> None:
    """Engine and bare loop at the last result's best recipe, alternating, ``repeats``
    times each: their median seconds, ratio and spread go into quality.json (the rest of
    that file is left as it was measured)."""
    prev = json.loads((RESULTS / "quality.json").read_text())
    best = with_lr(cfg, float(prev["fed_lr"]))
    runs: list[dict[str, float]] = []
    for i in range(repeats):
        bare_loss, bare_s = bare_loop(world, best)
        eng_loss, eng_s = run_fed(world, best, Path(cfg.run.out_dir))
        runs.append(
            {"engine_s": eng_s, "bare_s": bare_s, "engine_loss": eng_loss, "bare_loss": bare_loss}
        )
        print(f"{i + 1}: bare {bare_s:.1f}s ({bare_loss:.4f}) engine {eng_s:.1f}s ({eng_loss:.4f})")
    eng = statistics.median(r["engine_s"] for r in runs)
    bare = statistics.median(r["bare_s"] for r in runs)
    spread = [abs(r["engine_s"] / r["bare_s"] - eng / bare) for r in runs]
    prev.update(
        {
            "machine_of_the_rest": prev.get("machine"),  # when the other figures were measured
            "engine_overhead_previous": prev.get("engine_overhead"),
            "engine_overhead": eng / bare - 1,
            "engine_overhead_spread": max(spread),
            "engine_seconds": eng,
            "bare_seconds": bare,
            "engine_loss": runs[-1]["engine_loss"],
            "bare_loss": runs[-1]["bare_loss"],
            "engine_vs_bare_runs": runs,
            "engine_vs_bare_command": "python -m benchmarks.quality --engine-vs-bare "
            f"--repeats {repeats}",
        }
    )
    print(write_json("quality", prev))


def central_run(world: World, cfg: FederationConfig) -> float:
    """Centralized training on pooled data for TOTAL_STEPS steps; union held-out loss."""
    return float(centralized(world, cfg, total_steps=TOTAL_STEPS)["loss"])


def over_seeds(cfg: FederationConfig, seeds: list[int]) -> None:
    """Federated, centralized and local-only at the last result's learning rates for each
    of ``seeds``: the per-seed figures and their means and spreads go into quality.json
    (the learning-rate grid, measured at one seed, is kept as it was)."""
    prev = json.loads((RESULTS / "quality.json").read_text())
    fed_lr, central_lr = float(prev["fed_lr"]), float(prev["central_lr"])
    lrs = {"fed_lr": fed_lr, "central_lr": central_lr}  # seeds measured at others run again
    done = {
        r["seed"]: r for r in prev.get("per_seed", []) if all(r.get(k) == v for k, v in lrs.items())
    }
    for seed in seeds:
        if seed in done:
            continue
        c = cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": seed})})
        world = build_world(c)
        l0 = union_eval(world, world.initial)[0].loss
        central = central_run(world, with_lr(c, central_lr))
        fed, seconds = run_fed(world, with_lr(c, fed_lr), Path(c.run.out_dir))
        local = local_only(world, with_lr(c, fed_lr), steps=TOTAL_STEPS // len(world.data))
        done[seed] = {
            "seed": seed,
            **lrs,
            "initial_loss": l0,
            "fed_loss": fed,
            "central_loss": central,
            "local_only_loss": local["loss"],
            "local_only_own_loss": local["own_loss"],
            "centralized_efficiency": efficiency(l0, fed, central),
            "fed_seconds": seconds,
        }
        print(f"seed {seed}: {done[seed]}", flush=True)
        prev["per_seed"] = [done[s] for s in sorted(done)]
        write_json("quality", prev)
    runs = [done[s] for s in sorted(done)]
    head: dict[str, Any] = {}
    for key in (
        "centralized_efficiency",
        "fed_loss",
        "central_loss",
        "local_only_loss",
        "initial_loss",
    ):
        xs = [r[key] for r in runs]
        head[key] = statistics.fmean(xs)
        head[f"{key}_spread"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
    head["seeds"] = sorted(done)
    head["engine_overhead"] = prev.get("engine_overhead")
    rest = {k: v for k, v in prev.items() if k not in head}
    rest["per_seed"] = runs
    rest["seeds_command"] = f"python -m benchmarks.quality --seeds {','.join(map(str, seeds))}"
    rest["lr_grid_note"] = (
        "lr_grid, fed_by_lr and central_by_lr are one seed's (the recipe's run.seed) "
        "measurements, from the run that chose fed_lr and central_lr"
    )
    print(write_json("quality", {**head, **rest}))
    plot({**head, **rest}, RESULTS / "quality.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], help="recipe override KEY=VALUE")
    ap.add_argument("--explore", action="store_true", help="only federated runs over --lrs")
    ap.add_argument("--lrs", default=",".join(str(x) for x in GRID))
    ap.add_argument("--central-loss", type=float, default=math.nan)
    ap.add_argument("--central-only", action="store_true", help="only centralized runs")
    ap.add_argument(
        "--engine-vs-bare",
        action="store_true",
        help="only time the engine against the bare loop at the last result's recipe",
    )
    ap.add_argument("--repeats", type=int, default=2, help="with --engine-vs-bare")
    ap.add_argument(
        "--seeds", default="", help="comma-separated: the chosen recipe over these seeds"
    )
    ap.add_argument(
        "--reuse-central",
        action="store_true",
        help="take centralized results from the last quality.json",
    )
    args = ap.parse_args()
    cfg = make_config(_parse_overrides(args.set))
    if args.seeds:
        over_seeds(cfg, [int(x) for x in args.seeds.split(",") if x])
        return
    grid = tuple(float(x) for x in args.lrs.split(","))
    world = build_world(cfg)
    l0 = union_eval(world, world.initial)[0].loss
    print(f"initial union held-out loss {l0:.4f}", flush=True)
    out = Path(cfg.run.out_dir)
    if args.explore:
        for lr in grid:
            loss, sec = run_fed(world, with_lr(cfg, lr), out)
            eff = efficiency(l0, loss, args.central_loss)
            print(
                f"fed lr={lr:g} {args.set}: loss {loss:.4f} eff {eff:.3f} ({sec:.0f}s)", flush=True
            )
        return
    if args.engine_vs_bare:
        engine_vs_bare(world, cfg, args.repeats)
        return
    if args.central_only:
        for lr in grid:
            print(f"centralized lr={lr:g}: {central_run(world, with_lr(cfg, lr)):.4f}", flush=True)
        return
    result: dict[str, Any] = {
        "initial_loss": l0,
        "lr_grid": list(grid),
        "complete": False,
        "total_steps": TOTAL_STEPS,
        "command": "python -m benchmarks.quality",
    }
    central: dict[float, float] = {}
    if args.reuse_central:  # centralized runs depend only on the train config, not the recipe
        prev = json.loads((RESULTS / "quality.json").read_text())
        central = {float(k): v for k, v in prev.get("central_by_lr", {}).items()}
        result["central_by_lr"] = {str(k): v for k, v in central.items()}
        result["central_reused_from"] = prev.get("machine", {}).get("date")
    for lr in grid:
        if lr in central:
            continue
        central[lr] = central_run(world, with_lr(cfg, lr))
        print(f"centralized lr={lr:g}: {central[lr]:.4f}", flush=True)
        result["central_by_lr"] = {str(k): v for k, v in central.items()}
        write_json("quality", result)  # partial results survive an interrupted run
    fed: dict[float, float] = {}
    for lr in grid:
        fed[lr] = run_fed(world, with_lr(cfg, lr), out)[0]
        print(f"federated lr={lr:g}: {fed[lr]:.4f}", flush=True)
        result["fed_by_lr"] = {str(k): v for k, v in fed.items()}
        write_json("quality", result)
    lr_c, lr_f = min(central, key=central.__getitem__), min(fed, key=fed.__getitem__)
    best = with_lr(cfg, lr_f)
    result.update(
        {
            "centralized_efficiency": efficiency(l0, fed[lr_f], central[lr_c]),
            "fed_loss": fed[lr_f],
            "central_loss": central[lr_c],
            "central_lr": lr_c,
            "fed_lr": lr_f,
            "recipe": best.model_dump(mode="json"),
        }
    )
    write_json("quality", result)
    local = local_only(world, best, steps=TOTAL_STEPS // len(world.data))
    print(f"local-only: {local['loss']:.4f}", flush=True)
    result.update(
        {
            "local_only_loss": local["loss"],
            "local_only": local["participants"],
            "local_only_own_loss": local["own_loss"],
        }
    )
    write_json("quality", result)
    bare_loss, bare_s = bare_loop(world, best)
    eng_loss, eng_s = run_fed(world, best, out)
    print(f"bare {bare_s:.1f}s ({bare_loss:.4f}) engine {eng_s:.1f}s ({eng_loss:.4f})", flush=True)
    result.update(
        {
            "engine_overhead": eng_s / bare_s - 1,
            "engine_seconds": eng_s,
            "bare_seconds": bare_s,
            "bare_loss": bare_loss,
            "engine_loss": eng_loss,
            "complete": True,
        }
    )
    headline = (
        "centralized_efficiency",
        "fed_loss",
        "central_loss",
        "local_only_loss",
        "initial_loss",
        "engine_overhead",
    )
    result = {**{k: result[k] for k in headline}, **result}
    print(write_json("quality", result))
    plot(result, RESULTS / "quality.png")


def plot(r: dict[str, Any], path: Path) -> None:
    """Held-out loss by learning rate for both sides, plus the local-only average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("central_by_lr", "centralized"), ("fed_by_lr", "federated")):
        xs = [float(k) for k in r[key]]
        ax.plot(xs, list(r[key].values()), marker="o", label=label)
    ax.axhline(r["local_only_loss"], ls="--", color="tab:red", label="local-only average")
    ax.axhline(r["initial_loss"], ls=":", color="grey", label="before training")
    ax.set_xscale("log")
    ax.set_xlabel("local learning rate (AdamW)")
    ax.set_ylabel("union held-out loss")
    title = f"120 steps; centralized efficiency {r['centralized_efficiency']:.3f}"
    if len(r.get("seeds", [])) > 1:
        title += f" +- {r['centralized_efficiency_spread']:.3f} ({len(r['seeds'])} seeds)"
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
