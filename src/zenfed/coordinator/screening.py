"""Poisoning detection: each round's updates scored against the cohort, a reputation per
participant across rounds, and quarantine below a threshold (``[detect]``).

    screen = Screen(cfg.detect, evaluate=None)
    a = screen.assess(updates, aggregate, current, reputation, quarantined)
    a.flags        # who stood out this round, and why
    a.reputation   # every participant's reputation after this round
    a.quarantine   # who falls below detect.quarantine_below now, with the reason

Pure: the scores come from ``zenfed.aggregate.anomaly``; the validation effect (applying
one update alone to the current version) from an injected ``evaluate``. The engine keeps
the reputations and the quarantined in its state, so both survive a restart; who is
quarantined is left out of cohorts until an operator reinstates it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from zenfed.aggregate.accumulate import Accumulator, Aggregate, KeepAll
from zenfed.aggregate.anomaly import Scores, anomaly_scores
from zenfed.config import DetectConfig
from zenfed.coordinator.gate import Evaluate
from zenfed.coordinator.state import CoordinatorState
from zenfed.tensors import Tensors


@dataclass(frozen=True)
class Assessment:
    """One round's screening."""

    scores: dict[str, Scores]
    effects: dict[str, float]  # relative validation-loss change of each update alone
    flags: dict[str, str]  # participant -> why it stood out
    reputation: dict[str, float]  # everyone's, after this round
    quarantine: dict[str, str]  # newly quarantined -> why


class Screen:
    """Scores updates, keeps reputations, decides quarantine."""

    def __init__(self, cfg: DetectConfig, evaluate: Evaluate | None = None) -> None:
        self.cfg = cfg
        self.evaluate = evaluate if cfg.validation else None

    def assess(
        self,
        updates: Mapping[str, Tensors],
        aggregate: Tensors,
        current: Tensors,
        reputation: Mapping[str, float],
        quarantined: Mapping[str, str],
    ) -> Assessment:
        """Screen one round's ``updates`` (deltas as they entered the round) given the
        round's ``aggregate`` and the ``current`` version's tensors."""
        cfg = self.cfg
        scores = anomaly_scores(updates, aggregate)
        effects = self._effects(updates, current)
        flags: dict[str, str] = {}
        for pid, s in scores.items():
            why = []
            if s.norm_ratio > cfg.norm_factor or s.norm_ratio < 1 / cfg.norm_factor:
                why.append(f"norm {s.norm_ratio:.3g} x the cohort's median")
            if s.cosine_aggregate < cfg.min_cosine:
                why.append(f"cosine to the aggregate {s.cosine_aggregate:.3f}")
            if effects.get(pid, 0.0) > cfg.max_effect:
                why.append(f"validation loss {effects[pid] * 100:+.2f} % applied alone")
            if why:
                flags[pid] = "; ".join(why)
        rep = dict(reputation)
        quarantine: dict[str, str] = {}
        for pid in scores:
            before = rep.get(pid, 1.0)
            rep[pid] = cfg.decay * before + (1 - cfg.decay) * (0.0 if pid in flags else 1.0)
            if rep[pid] < cfg.quarantine_below and pid not in quarantined:
                quarantine[pid] = (
                    f"reputation {rep[pid]:.3f} < {cfg.quarantine_below} after being flagged: "
                    f"{flags.get(pid, 'no flag this round')}"
                )
        return Assessment(scores, effects, flags, rep, quarantine)

    def assess_round(
        self, accumulator: Accumulator, combined: Aggregate, state: CoordinatorState
    ) -> Assessment | None:
        """``assess`` of a round that kept every update (None for one that did not)."""
        if not isinstance(accumulator, KeepAll):
            return None
        mean = combined.mean()
        rep, out = state.reputation, state.quarantined
        return self.assess(accumulator.updates(), mean, state.published, rep, out)

    def _effects(self, updates: Mapping[str, Tensors], current: Tensors) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        base = self.evaluate(current)
        out = {}
        for pid, delta in updates.items():
            loss = self.evaluate({k: current[k] + delta[k] for k in current})
            out[pid] = loss / base - 1 if base > 0 else 0.0
        return out
