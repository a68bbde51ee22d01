"""The robustness benchmark's JSON and plot, from the summarized table
(``benchmarks.robustness`` runs the federations and summarizes them)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.quality import make_config
from benchmarks.robustness import (
    ATTACKS,
    FRACTION,
    NEW_TOKENS,
    PROMPTS,
    RECIPE,
    RECOMMENDED,
    RECOMMENDED_EXTRA,
    SECURE,
    SECURE_ATTACKS,
    SECURE_RECIPE,
    SECURE_RULE,
    TARGETS,
    overrides,
    stats,
    worst,
)


def report(table: dict[str, Any], pilot: dict[str, Any], seeds: tuple[int, ...]) -> dict[str, Any]:
    """The JSON: headline figures, targets, the rows (secure_robust folded into one)."""
    secure = {k: table.pop(k) for k in list(table) if k.startswith("secure_robust/")}
    errors = [r["error"] for r in secure.values() if r.get("built") is False]
    sr: dict[str, Any] = {"aggregator": SECURE_RULE, "secagg": SECURE, "recipe": SECURE_RECIPE}
    ref = table.get("clean/fedavg-secure-recipe", {}).get("loss_by_seed", {})
    if errors:
        sr |= {"built": False, "error": errors[0]}
    elif secure:
        by_attack = {k.split("/", 1)[1]: v for k, v in secure.items()}
        for v in by_attack.values():  # against clean FedAvg of the same recipe and seeds
            same = [ref[s] for s in v.get("loss_by_seed", {}) if s in ref]
            if same and len(same) == len(v["loss_by_seed"]):
                v["gap_pct"] = 100 * (v["loss"]["mean"] / statistics.fmean(same) - 1)
                paired = [100 * (x / ref[k] - 1) for k, x in v["loss_by_seed"].items()]
                v["gap_pct_by_seed"] = stats(paired)
            else:
                v.pop("gap_pct", None)
                v.pop("gap_pct_by_seed", None)
        gaps = [float(v["gap_pct"]) for v in by_attack.values() if "gap_pct" in v]
        full = len(gaps) == len(SECURE_ATTACKS)
        sr |= {"built": True, "by_attack": by_attack, "worst_gap_pct": max(gaps) if full else None}
        sr["seeds"] = sorted(
            set.intersection(*(set(v.get("seeds", [])) for v in by_attack.values()))
        )
    table["secure_robust"] = sr
    w, wa = worst(table, "recommended")
    fw, fwa = worst(table, "fedavg")
    hw, hwa = worst(table, "recommended", "honest_gap_pct")

    def pct(row: str, key: str = "gap_pct") -> float | None:
        v = table.get(row, {}).get(key)
        return v["mean"] if isinstance(v, dict) else v

    figures: dict[str, Any] = {
        "worst_attack_gap_pct": w,
        "worst_attack": wa,
        "fedavg_worst_gap_pct": fw,
        "fedavg_worst_attack": fwa,
        "backdoor_success_pct": pct("backdoor/recommended", "backdoor_success_pct"),
        "fedavg_backdoor_success_pct": pct("backdoor/fedavg", "backdoor_success_pct"),
        "default_clean_cost_pct": pct("clean/recommended"),
        "secure_robust_gap_pct": sr.get("worst_gap_pct"),
        # FedAvg without the attackers: no defence can beat it (the data it never sees)
        "oracle_gap_pct": pct("oracle/fedavg"),
        # the same gap on the honest holders' held-out splits only (no attacker's own data)
        "worst_attack_honest_gap_pct": hw,
        "worst_attack_honest": hwa,
        "fedavg_worst_honest_gap_pct": worst(table, "fedavg", "honest_gap_pct")[0],
    }
    clean = table.get("clean/fedavg", {})
    missing = {
        k: sorted(set(seeds) - set(v.get("seeds", []))) for k, v in table.items() if "/" in k
    }
    missing["secure_robust"] = sorted(set(seeds) - set(sr.get("seeds", [])))
    targets = {
        k: {"target_max": t, "value": figures[k], "met": figures[k] is not None and figures[k] <= t}
        for k, t in TARGETS.items()
    }
    return {
        **figures,
        "complete": not any(missing.values()),  # else a row's figures use fewer seeds
        "missing_seeds": {k: v for k, v in missing.items() if v},
        "recommended": {"aggregator": RECOMMENDED, **RECOMMENDED_EXTRA},
        "targets": targets,
        "clean_fedavg_initial_loss": clean.get("initial_loss"),
        "clean_fedavg_loss": clean.get("loss"),
        "seeds": list(seeds),
        "recipe": {
            "overrides_of_quality_recipe": RECIPE,
            "attack_fraction": FRACTION,
            "config": make_config(overrides({"rule": "fedavg"}, "none", 0, {})).model_dump(),
            "backdoor_prompts": PROMPTS,
            "backdoor_new_tokens": NEW_TOKENS,
        },
        "rows": table,
        "pilot": pilot,
        "command": "python -m benchmarks.robustness",
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Gap to clean FedAvg per attack, FedAvg against the recommended rule (min-max bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.4
    for i, (suffix, color) in enumerate((("fedavg", "tab:red"), ("recommended", "tab:blue"))):
        gaps = [rows.get(f"{a}/{suffix}", {}).get("gap_pct", math.nan) for a in ATTACKS]
        by_seed = [rows.get(f"{a}/{suffix}", {}).get("gap_pct_by_seed") or {} for a in ATTACKS]
        lo = [max(0.0, g - b.get("min", g)) for g, b in zip(gaps, by_seed, strict=True)]
        err = [lo, [max(0.0, b.get("max", g) - g) for g, b in zip(gaps, by_seed, strict=True)]]
        xs = [x + (i - 0.5) * width for x in range(len(ATTACKS))]
        label = "FedAvg" if suffix == "fedavg" else "median + [detect] (recommended)"
        ax.bar(xs, gaps, width, yerr=err, capsize=3, color=color, label=label)
    ax.axhline(TARGETS["worst_attack_gap_pct"], ls="--", color="grey", label="target 5%")
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xticks(range(len(ATTACKS)), list(ATTACKS))
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=-5)
    ax.set_ylabel("final held-out loss above clean FedAvg (%)")
    cost = result["default_clean_cost_pct"] or math.nan
    ax.set_title(
        f"20% attackers, cohorts of 5 of 10; bars: min-max over seeds"
        f"{'' if result['complete'] else ' (not all run: see missing_seeds)'}; "
        f"the rule's clean cost {cost:+.1f}%",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
