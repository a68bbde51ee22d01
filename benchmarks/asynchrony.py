"""Asynchrony benchmark: buffered asynchronous aggregation (FedBuff) against synchronous
rounds on devices whose speeds differ, in simulated wall time (issue #13).

    python -m benchmarks.asynchrony              # 3 seeds x (sync, buffered), ~50 min
    python -m benchmarks.asynchrony --report     # rebuild the JSON and PNG from the cache

Workload: the quality benchmark's model, adapter and training (SmolLM2-135M-Instruct, LoRA
r=8 on q/k/v/o, 64-token sequences, loss on whole sequences, AdamW lr 3e-3, batch 8, one
local step per task), the chatterbot English data over 16 holders (Dirichlet alpha 0.5
over categories), 120 local steps in all for both sides. Devices (``[devices]``): each
holder's speed is drawn from a lognormal of sigma 1 (median 1); a task of one step takes
1 / speed simulated seconds.

- sync: cohorts of 4 of the 16, 30 rounds; a round waits for its slowest member
  (quorum 1.0), as FedAvg does;
- buffered: at most 4 holders train at once (the same concurrency), every 2 arrivals make
  a version (60 versions), stale updates weighed 1 / sqrt(1 + staleness), refused beyond 8.

Both evaluate the union held-out loss (5% of each holder's data held out) 6 times along
the way. ``async_speedup``: the
sync run's simulated time to its final loss over the buffered run's time to reach that
loss (linear between evaluations), per seed; ``async_final_gap_pct``: the buffered run's
final loss above the sync run's. Every run is cached in results/asynchrony_runs.json.
Writes benchmarks/results/asynchrony.json and asynchrony.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, write_json
from benchmarks.quality import make_config
from zenfed.sim.runner import load_run, run_simulation
from zenfed.sim.setup import World, build_world

SEEDS = (0, 1, 2)
WORKLOAD: dict[str, Any] = {
    "data.partition": "dirichlet",
    "data.num_participants": 16,
    "data.dirichlet_alpha": 0.5,
    "data.heldout_fraction": 0.05,  # evaluated 7 times a run: kept small (2 slow cores)
    "devices.enabled": True,
    "devices.speed": "lognormal",
    "devices.sigma": 1.0,
    "devices.step_seconds": 1.0,
}
MODES: dict[str, dict[str, Any]] = {
    "sync": {
        "sampling.fraction": 0.25,
        "sampling.min_participants": 4,
        "run.rounds": 30,
        "run.eval_every": 5,
    },
    "buffered": {
        "buffered.enabled": True,
        "buffered.k": 2,
        "buffered.concurrency": 4,
        "buffered.max_staleness": 8,
        "run.rounds": 60,
        "run.eval_every": 10,
    },
}
TARGETS = {"async_speedup_min": 2.0, "async_final_gap_pct_max": 2.0}
CACHE = RESULTS / "asynchrony_runs.json"
OUT = Path("runs/bench-asynchrony")


def run_one(world: World | None, mode: str, seed: int) -> tuple[World, dict[str, Any]]:
    """One federation; its (simulated time, union loss) curve and its cost."""
    cfg = make_config({**WORKLOAD, **MODES[mode], "run.seed": seed, "run.out_dir": str(OUT)})
    if world is None or not world.fits(cfg):
        world = None
        world = build_world(cfg)
    s = run_simulation(cfg, OUT, fresh=True, world=world)
    history = load_run(OUT)[2]
    curve = [(float(r.get("sim_time", 0.0)), r["union_loss"]) for r in history if "union_loss" in r]
    versions = [r for r in history[1:] if "version" in r]
    stale = [r["staleness_mean"] for r in versions if "staleness_mean" in r]
    return world, {
        "mode": mode,
        "seed": seed,
        "curve": curve,
        "final_loss": s["fed_loss"],
        "initial_loss": s["initial_loss"],
        "sim_time": curve[-1][0],
        "versions": len(versions),
        "updates": sum(r["updates"] for r in versions),
        "fed_steps": s["fed_steps"],
        "staleness_mean": statistics.fmean(stale) if stale else 0.0,
        "seconds": s["seconds"],
    }


def time_to(curve: list[tuple[float, float]], loss: float) -> float | None:
    """The first simulated time the curve reaches ``loss`` (linear between points)."""
    for (t0, l0), (t1, l1) in itertools.pairwise(curve):
        if l1 <= loss:
            return t1 if l0 == l1 else t0 + (t1 - t0) * (l0 - loss) / (l0 - l1)
    return None


def stats(v: list[float]) -> dict[str, float]:
    std = statistics.stdev(v) if len(v) > 1 else 0.0
    return {"mean": statistics.fmean(v), "std": std, "min": min(v), "max": max(v)}


def report(cache: dict[str, Any], seeds: tuple[int, ...]) -> dict[str, Any]:
    """Headline figures over the seeds both modes ran."""
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        sync, buf = cache.get(f"sync/{seed}"), cache.get(f"buffered/{seed}")
        if sync is None or buf is None:
            continue
        reach = time_to(buf["curve"], sync["final_loss"])
        per_seed[seed] = {
            "sync_time": sync["sim_time"],
            "sync_final_loss": sync["final_loss"],
            "buffered_time_to_sync_loss": reach,
            "buffered_time": buf["sim_time"],
            "buffered_final_loss": buf["final_loss"],
            "speedup": sync["sim_time"] / reach if reach else None,
            "final_gap_pct": 100 * (buf["final_loss"] / sync["final_loss"] - 1),
            "buffered_staleness_mean": buf["staleness_mean"],
        }
    speedups = [v["speedup"] for v in per_seed.values()]
    gaps = [v["final_gap_pct"] for v in per_seed.values()]
    reached = [s for s in speedups if s is not None]
    speed = stats(reached) if reached and len(reached) == len(speedups) else None
    gap = stats(gaps) if gaps else None
    figures = {
        "async_speedup": speed["mean"] if speed else None,
        "async_final_gap_pct": gap["mean"] if gap else None,
    }
    return {
        **figures,
        "async_speedup_spread": speed,
        "async_final_gap_pct_spread": gap,
        "targets": {
            "async_speedup": {
                "min": TARGETS["async_speedup_min"],
                "met": bool(speed and speed["mean"] >= TARGETS["async_speedup_min"]),
            },
            "async_final_gap_pct": {
                "max": TARGETS["async_final_gap_pct_max"],
                "met": bool(gap and gap["mean"] <= TARGETS["async_final_gap_pct_max"]),
            },
        },
        "seeds": sorted(per_seed),
        "complete": len(per_seed) == len(seeds),
        "per_seed": per_seed,
        "workload": WORKLOAD,
        "modes": MODES,
        "runs": cache,
        "command": "python -m benchmarks.asynchrony",
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Union held-out loss against simulated time, sync against buffered, every seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for _key, run in sorted(result["runs"].items()):
        color = "tab:red" if run["mode"] == "sync" else "tab:blue"
        ts, ls = zip(*run["curve"], strict=True)
        label = f"{run['mode']} (seed {run['seed']})"
        ax.plot(ts, ls, color=color, alpha=0.4 + 0.2 * run["seed"], marker=".", label=label)
    sp, gap = result["async_speedup"], result["async_final_gap_pct"]
    title = "16 holders, lognormal speeds (sigma 1), 120 local steps each side"
    if sp is not None and gap is not None:
        title += f"\nbuffered reaches sync's final loss {sp:.1f}x sooner; final {gap:+.1f}%"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("simulated seconds")
    ax.set_ylabel("union held-out loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--report", action="store_true", help="only rebuild the JSON and PNG")
    args = ap.parse_args()
    torch.set_num_threads(1)  # 2 shared cores
    seeds = tuple(int(s) for s in args.seeds.split(","))
    cache: dict[str, Any] = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    world: World | None = None
    t0 = time.perf_counter()
    for seed in seeds if not args.report else ():
        for mode in MODES:
            key = f"{mode}/{seed}"
            if key in cache:
                continue
            world, cache[key] = run_one(world, mode, seed)
            run = cache[key]
            print(
                f"{key}: loss {run['final_loss']:.4f} at simulated {run['sim_time']:.1f}s "
                f"({run['versions']} versions, staleness {run['staleness_mean']:.2f}, "
                f"{run['seconds']:.0f}s)",
                flush=True,
            )
            CACHE.parent.mkdir(parents=True, exist_ok=True)
            CACHE.write_text(json.dumps(cache, indent=1) + "\n")
    result = report(cache, seeds)
    result["wall_seconds_this_invocation"] = time.perf_counter() - t0
    print(
        json.dumps(
            {k: result[k] for k in ("async_speedup", "async_final_gap_pct", "per_seed")}, indent=1
        )
    )
    print(write_json("asynchrony", result))
    plot(result, RESULTS / "asynchrony.png")


if __name__ == "__main__":
    main()
