"""Privacy-utility benchmark: centralized efficiency of participant-level DP-FedAvg at
epsilon = 8 and 3 (delta = 1e-6), against the same federation without privacy.

    python -m benchmarks.privacy_utility            # about 25 minutes here

Workload (issue #5): the quality benchmark's model, adapter, data and local training
(built-in SmolLM2-135M-Instruct, LoRA r=8 on q/k/v/o, the 8 chatterbot English
categories, 1 local AdamW step at lr 3e-3), split into 100 participants by a Dirichlet
(alpha = 1) draw over categories. Each round samples participants independently with
probability 0.1 (Poisson, what the accountant assumes): about 10 per round, 12 rounds,
about 120 local steps in all, the quality benchmark's budget. Private runs clip every
update to L2 norm C (``--clip``, about the norm of one local step's update) and add
Gaussian noise to the sum, its multiplier calibrated by dp-accounting (RDP) so the 12
rounds spend exactly the target epsilon; the sum is divided by the expected cohort size.
The centralized baseline trains on the pooled data for the same number of steps.
Efficiency = (L0 - L_fed) / (L0 - L_central) on the union of held-out splits.
Writes benchmarks/results/privacy_utility.json and privacy_utility.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_json
from benchmarks.quality import make_config
from zenfed.sim.runner import efficiency, run_simulation
from zenfed.sim.setup import World, build_world

DELTA = 1e-6
EPSILONS = (8.0, 3.0)
SPLIT: dict[str, Any] = {
    "data.partition": "dirichlet",
    "data.num_participants": 100,
    "data.dirichlet_alpha": 1.0,
    "sampling.method": "poisson",
    "sampling.fraction": 0.1,
    "run.rounds": 12,
}


def run(name: str, overrides: dict[str, Any], world: World | None, **kw: Any) -> dict[str, Any]:
    """One federated run of the split workload; its summary."""
    cfg = make_config({**SPLIT, **overrides, "run.out_dir": f"runs/bench-privacy/{name}"})
    return run_simulation(cfg, cfg.run.out_dir, fresh=True, world=world or build_world(cfg), **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", type=float, default=3.0, help="clipping bound C")
    args = ap.parse_args()
    cfg = make_config({**SPLIT, "run.out_dir": "runs/bench-privacy/none"})
    world = build_world(cfg)
    base = run("none", {}, world, baselines=("centralized",))
    l0, central = base["initial_loss"], base["central_loss"]
    rows: list[dict[str, Any]] = [
        {
            "epsilon": None,
            "delta": None,
            "fed_loss": base["fed_loss"],
            "centralized_efficiency": base["centralized_efficiency"],
            "fed_steps": base["fed_steps"],
        }
    ]
    print(f"non-private: loss {base['fed_loss']:.4f}, eff {rows[0]['centralized_efficiency']:.3f}")
    for eps in EPSILONS:
        s = run(
            f"eps{eps:g}",
            {
                "privacy.clip_norm": args.clip,
                "privacy.target_epsilon": eps,
                "privacy.target_delta": DELTA,
            },
            world,
        )
        rows.append(
            {
                "epsilon": eps,
                "delta": DELTA,
                "epsilon_spent": s["epsilon"],
                "noise_multiplier": s["privacy"]["noise_multiplier"],
                "clip_norm": args.clip,
                "fed_loss": s["fed_loss"],
                "centralized_efficiency": efficiency(l0, s["fed_loss"], central),
                "fed_steps": s["fed_steps"],
            }
        )
        r = rows[-1]
        print(
            f"epsilon {eps:g}: z {r['noise_multiplier']:.3f}, loss {r['fed_loss']:.4f}, "
            f"eff {r['centralized_efficiency']:.3f}",
            flush=True,
        )
    result = {
        "rows": rows,
        "initial_loss": l0,
        "central_loss": central,
        "participants": 100,
        "sampling_rate": SPLIT["sampling.fraction"],
        "rounds": SPLIT["run.rounds"],
        "command": "python -m benchmarks.privacy_utility",
    }
    print(write_json("privacy_utility", result))
    plot(result, RESULTS / "privacy_utility.png")


def plot(result: dict[str, Any], path: Path) -> None:
    """Centralized efficiency for no privacy, epsilon 8 and epsilon 3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = ["no DP" if r["epsilon"] is None else f"eps={r['epsilon']:g}" for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(labels, [r["centralized_efficiency"] for r in rows], color="tab:blue")
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_ylabel("centralized efficiency")
    ax.set_title(
        f"DP-FedAvg, {result['participants']} participants, q={result['sampling_rate']}, "
        f"{result['rounds']} rounds (delta 1e-6)",
        fontsize=9,
    )
    for i, r in enumerate(rows):
        ax.annotate(f"loss {r['fed_loss']:.2f}", (i, r["centralized_efficiency"]), ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
