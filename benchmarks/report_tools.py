"""What every benchmark's section of docs/benchmarks.md is written with: its headline
lines (mean, spread, seeds, target; an exploration said to be one), its provenance line
and its run time, all read from its result file (``benchmarks.harness``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.harness import MIN_SEEDS, Headline


def fmt(x: float, unit: str) -> str:
    """``x`` written as its unit's figures are."""
    if unit == "x":
        return f"{x:.4f}x"
    if unit == "%":
        return f"{x:.2f} %"
    if unit == "s":
        return f"{x:.3f} s"
    if unit == "ms":
        return f"{x:.1f} ms"
    return f"{x:.4g}{(' ' + unit) if unit else ''}"


def headline_lines(
    data: Mapping[str, Any],
    rules: Sequence[Headline],
    targets: Mapping[str, float],
    rows: Sequence[Mapping[str, Any]],
) -> list[str]:
    """One line per headline rule: its mean over the rule's seeds with the standard
    deviation and 95 % interval, and against its target (an upper bound) whether the mean
    and the whole interval meet it; fewer than MIN_SEEDS seeds: an exploration."""
    out = []
    for rule in rules:
        res = rule.evaluate(rows)
        s = res.stats
        if not res.quotable:
            out.append(
                f"- {rule.title}: exploration only ({s.n} of the {MIN_SEEDS} seeds its "
                "headline needs are measured)"
            )
            continue
        text = (
            f"- **{rule.title}: {fmt(s.mean, rule.unit)}** (standard deviation "
            f"{fmt(s.std, rule.unit)}, 95 % interval {fmt(s.low, rule.unit)} to "
            f"{fmt(s.high, rule.unit)}, seeds {', '.join(map(str, rule.seeds))})"
        )
        target = targets.get(rule.metric)
        if target is not None:
            verdict = (
                "met by the whole interval"
                if s.high <= target
                else "met by the mean, not by the whole interval"
                if s.mean <= target
                else "not met"
            )
            text += f"; target at most {fmt(target, rule.unit)}: {verdict}"
        out.append(text)
    return out


def provenance_line(data: Mapping[str, Any]) -> str:
    """Which commits (and whether clean), dates and machines the rows come from."""
    provs = [r["provenance"] for r in data["rows"] if "provenance" in r]
    if not provs:
        return "Provenance: none recorded."
    commits = sorted({(p["commit"][:10], p["clean"]) for p in provs})
    dates = sorted(p["date"][:10] for p in provs)
    cpus = sorted({f"{p['cpu']} ({p['kernels'] or 'kernels not recorded'}, {p['cores']} cores)"
                   for p in provs})  # fmt: skip
    torch = sorted({p["packages"].get("torch", "?") for p in provs})
    return (
        "Measured at commit "
        + ", ".join(f"{c} ({'clean' if clean else 'uncommitted changes'})" for c, clean in commits)
        + f", {dates[0]}"
        + (f" to {dates[-1]}" if dates[-1] != dates[0] else "")
        + f", on {'; '.join(cpus)}, torch {', '.join(torch)}; every row's provenance is in"
        f" `benchmarks/results/{data['benchmark']}.json`."
    )


def run_time(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows' summed wall time, in words (about N minutes)."""
    total = sum((r.get("provenance") or {}).get("wall_s") or 0.0 for r in rows)
    minutes = total / 60
    if minutes < 1.5:
        return "about a minute"
    if minutes < 90:
        return f"about {round(minutes)} minutes"
    return f"about {minutes / 60:.1f} hours"
