"""Aggregation rules: pure functions from the round's updates and their weights to one
update, in the style of Flower's ``aggregate.py``, and the registry ``[server] aggregator``
names them by.

    mean = fedavg([delta_a, delta_b], weights=[120, 40])

The Byzantine-robust rules are in ``zenfed.aggregate.robust``; ``zenfed.aggregate.registry``
names them all for ``[server] aggregator``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from zenfed.errors import ZenfedError
from zenfed.tensors import Tensors

Rule = Callable[[Sequence[Tensors], Sequence[float]], Tensors]


def _check(updates: Sequence[Tensors], weights: Sequence[float]) -> None:
    if not updates or len(updates) != len(weights):
        raise ZenfedError(
            f"{len(updates)} updates with {len(weights)} weights", fix="one weight per update"
        )
    if not all(w > 0 for w in weights):
        raise ZenfedError("aggregation weights must be positive", fix="report num_examples > 0")


def fedavg(updates: Sequence[Tensors], weights: Sequence[float]) -> Tensors:
    """FedAvg (McMahan et al. 2017): sum_k w_k u_k / sum_k w_k per tensor, in float64,
    returned as float32. Assumes every participant is honest."""
    _check(updates, weights)
    total = float(sum(weights))
    out = {}
    for name in updates[0]:
        acc = torch.zeros_like(updates[0][name], dtype=torch.float64)
        for u, w in zip(updates, weights, strict=True):
            acc.add_(u[name].to(torch.float64), alpha=float(w))
        out[name] = (acc / total).to(torch.float32)
    return out


def median(updates: Sequence[Tensors], weights: Sequence[float]) -> Tensors:
    """Coordinate-wise median (Yin et al. 2018), unweighted: each coordinate is the median
    of the updates' values (the mean of the two middle ones for an even count). Stays
    bounded while fewer than half of the updates are arbitrary."""
    _check(updates, weights)
    out = {}
    for name in updates[0]:
        ordered = torch.stack([u[name].to(torch.float64) for u in updates]).sort(dim=0).values
        lo, hi = ordered[(len(updates) - 1) // 2], ordered[len(updates) // 2]
        out[name] = ((lo + hi) / 2).to(torch.float32)
    return out
