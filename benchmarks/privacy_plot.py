"""The privacy-utility benchmark's figure: every row's efficiency (mean and spread over
seeds), and the measured efficiency against holders per round at epsilon 8's noise beside
the planner's prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(result: dict[str, Any], path: Path) -> None:
    """Write the two-panel PNG of ``result`` (privacy_utility.json's content) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (bars, line) = plt.subplots(1, 2, figsize=(14, 5.5), width_ratios=(3, 2))
    colors = {"record": "tab:green", "p100": "tab:blue", "p1000": "tab:purple"}
    xs = range(len(rows))
    bars.bar(
        xs,
        [max(r["efficiency_mean"], -1.0) for r in rows],  # a ruined model: shown at -1
        yerr=[r["efficiency_spread"] for r in rows],
        color=[colors.get(r["federation"], "grey") for r in rows],
        capsize=3,
    )
    for x, r in zip(xs, rows, strict=True):
        bars.annotate(
            f"{r['efficiency_mean']:.2f}", (x, max(r["efficiency_mean"], -1.0)), ha="center",
            fontsize=7, xytext=(0, 3), textcoords="offset points",
        )  # fmt: skip
    bars.set_xticks(list(xs), [r["row"] for r in rows], rotation=60, ha="right", fontsize=7)
    bars.axhline(0.8, ls="--", color="grey", label="efficiency 0.8 (the record-level target)")
    bars.axhline(0, color="k", linewidth=0.8)
    bars.set_ylim(-1.05, 1.1)
    bars.set_ylabel("centralized efficiency (mean +- spread over seeds; below -1 shown at -1)")
    bars.legend(fontsize=8)
    bars.set_title("green: record level, 8 holders; blue/purple: participant level", fontsize=9)

    points = sorted(
        (
            (10.0 if r["row"] == "p100:eps8" else _noise_of(r), r)  # p100 at q = 0.1
            for r in rows
            if r["row"] == "p100:eps8" or r["row"].startswith("p100:noise-of-")
        ),
        key=lambda t: t[0],
    )
    if points:
        line.errorbar(
            [k for k, _ in points],
            [r["efficiency_mean"] for _, r in points],
            yerr=[r["efficiency_spread"] for _, r in points],
            fmt="o-",
            capsize=3,
            label="measured (p100 with epsilon 8's noise at K holders per round)",
        )
    for key, style, label in (
        ("planner_holders_for_0_8", "--", "planner: noise = best-case update per coordinate"),
        ("measured_holders_for_0_8", ":", "measured: efficiency reaches 0.8"),
    ):
        if result.get(key):
            line.axvline(result[key], ls=style, color="grey", label=f"{label} ({result[key]:,.0f})")
    line.axhline(0.8, ls="--", color="tab:red", linewidth=0.8)
    line.set_xscale("log")
    line.set_ylim(-1.05, 1.1)
    line.set_xlabel("holders per round")
    line.set_ylabel("centralized efficiency")
    line.legend(fontsize=7)
    line.set_title("participant-level DP at epsilon 8: how many holders per round", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _noise_of(row: dict[str, Any]) -> float:
    return float(row["row"].rsplit("-", 1)[1])
