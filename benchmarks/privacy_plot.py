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

    _ratio_panel(line, rows, result)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _ratio_panel(ax: Any, rows: list[dict[str, Any]], result: dict[str, Any]) -> None:
    """Efficiency against the planner's noise / update over the run: the noise-of-K trend
    as a line, every private technique row as a labelled point."""
    planned = [r for r in rows if "planner" in r]
    trend = sorted((r["planner"]["ratio"], r) for r in planned if _on_trend(r))
    if trend:
        ax.errorbar(
            [x for x, _ in trend],
            [r["efficiency_mean"] for _, r in trend],
            yerr=[r["efficiency_spread"] for _, r in trend],
            fmt="o-",
            capsize=3,
            label="p100 with epsilon 8's noise at 10 to 10,000 holders a round",
        )
    for r in (r for r in planned if not _on_trend(r)):
        x, y = r["planner"]["ratio"], max(r["efficiency_mean"], -1.0)
        color = "tab:purple" if r["federation"] == "p1000" else "tab:orange"
        ax.errorbar([x], [y], yerr=[r["efficiency_spread"]], fmt="s", color=color, capsize=2)
        ax.annotate(r["row"].split(":", 1)[1], (x, y), fontsize=6, xytext=(4, 2),
                    textcoords="offset points")  # fmt: skip
    ax.axvline(1.0, ls="--", color="grey", label="planner's bound: noise = best-case update")
    base = result.get("planned", {}).get("p100:eps8")
    crossing = result.get("measured_holders_for_0_8")
    if base and crossing:  # the ratio scales as 1 / holders a round
        at = base["ratio"] * base["expected_cohort"] / crossing
        ax.axvline(at, ls=":", color="grey", label=f"measured: 0.8 at ratio {at:.2f} "
                   f"({crossing:,.0f} holders a round)")  # fmt: skip
    ax.axhline(0.8, ls="--", color="tab:red", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_ylim(-1.05, 1.1)
    ax.set_xlabel("planner: noise / update per trained value over the run (epsilon 8)")
    ax.set_ylabel("centralized efficiency (below -1 shown at -1)")
    ax.legend(fontsize=7)
    ax.set_title(
        "the planner's ratio against measured runs (orange: 100 holders, purple: 1,000)",
        fontsize=9,
    )


def _on_trend(row: dict[str, Any]) -> bool:
    """Whether ``row`` is a point of the noise-of-K trend (p100 at epsilon 8 itself is its
    10-holders-a-round point)."""
    return row["row"] == "p100:eps8" or row["row"].startswith("p100:noise-of-")
