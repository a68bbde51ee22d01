"""Per-update anomaly scores against the round's cohort: pure functions over tensors.

    scores = anomaly_scores({"a": delta_a, "b": delta_b, ...}, aggregate)
    scores["a"].norm_ratio, scores["a"].cosine_aggregate, scores["a"].cosine_others

A poisoned update tends to stand out in one of these: a scaled or noised one by its norm
against the cohort's median, a free rider's zeros by a norm near 0, a sign-flipped one by
a negative cosine to the round's (robust) aggregate. Attacks built to hide inside the
honest spread (ALIE, IPM) do not stand out here; a robust rule bounds them instead.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from zenfed.tensors import Tensors


@dataclass(frozen=True)
class Scores:
    """One update's place in its cohort."""

    norm: float
    norm_ratio: float  # its L2 norm / the cohort's median norm (1 with a zero median)
    cosine_aggregate: float  # to the round's aggregate (0 when either is zero)
    cosine_others: float  # mean cosine to the other updates of the round (0 alone)


def flatten(tensors: Tensors) -> torch.Tensor:
    """The tensors as one float64 vector, in name order."""
    return torch.cat([tensors[k].reshape(-1).to(torch.float64) for k in sorted(tensors)])


def anomaly_scores(updates: Mapping[str, Tensors], aggregate: Tensors) -> dict[str, Scores]:
    """Scores of every update of a round against the others and ``aggregate``."""
    names = sorted(updates)
    if not names:
        return {}
    x = torch.stack([flatten(updates[n]) for n in names])
    norms = x.norm(dim=1)
    median = statistics.median(norms.tolist())
    unit = x / norms.clamp_min(1e-30)[:, None]
    agg = flatten(aggregate)
    agg_unit = agg / agg.norm().clamp_min(1e-30)
    cos_agg = unit @ agg_unit
    gram = unit @ unit.T
    n = len(names)
    out = {}
    for i, name in enumerate(names):
        others = (gram[i].sum() - gram[i, i]) / (n - 1) if n > 1 else torch.tensor(0.0)
        out[name] = Scores(
            norm=float(norms[i]),
            norm_ratio=float(norms[i]) / median if median > 0 else 1.0,
            cosine_aggregate=float(cos_agg[i]),
            cosine_others=float(others),
        )
    return out
