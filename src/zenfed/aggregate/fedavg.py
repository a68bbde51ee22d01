"""FedAvg (McMahan et al. 2017): the example-weighted mean of updates.

    mean = fedavg([delta_a, delta_b], weights=[120, 40])

``WeightedMean`` computes the same thing one update at a time, in memory O(model) however
many updates arrive, which is how the coordinator uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zenfed.errors import ZenfedError

Tensors = dict[str, torch.Tensor]


def fedavg(updates: Sequence[Tensors], weights: Sequence[float]) -> Tensors:
    """sum_k w_k * u_k / sum_k w_k, per tensor name."""
    acc = WeightedMean()
    for u, w in zip(updates, weights, strict=True):
        acc.add(u, w)
    return acc.result()


class WeightedMean:
    """A running example-weighted sum (float64 accumulators), finalized by ``result``."""

    def __init__(self) -> None:
        self._sum: Tensors = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, update: Tensors, weight: float) -> None:
        """Add ``weight * update``; the first update fixes names and shapes."""
        if not weight > 0:
            raise ZenfedError(
                f"update weight must be positive, got {weight}", fix="report num_examples > 0"
            )
        if not self._sum:
            self._sum = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in update.items()}
        for k, v in update.items():
            self._sum[k].add_(v.to(torch.float64), alpha=weight)
        self.total_weight += weight
        self.count += 1

    def result(self) -> Tensors:
        """The weighted mean as float32 tensors."""
        if not self.count:
            raise ZenfedError("no updates to aggregate", fix="wait for at least one update")
        return {k: (s / self.total_weight).to(torch.float32) for k, s in self._sum.items()}
