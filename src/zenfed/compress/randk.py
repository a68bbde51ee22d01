"""Random-k sparsification with coordinates every participant of a round shares.

    RandK(fraction=0.01).encode(x, seed) -> {"values": x at k seeded random positions}

The coordinator draws the round's seed; every participant keeps the same coordinates, so
no indices travel and the codec is linear: the sum of encodings is the encoding of the
sum, which is what secure aggregation needs. Not scaled by n/k: with error feedback the
rest is sent in later rounds. Bound: ||x - decode(encode(x))|| <= ||x||.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from zenfed.compress.base import Parts, PartSpecs, Shape, check_part, generator, numel


class RandK:
    """Keep k coordinates drawn from the round's shared seed."""

    name: ClassVar[str] = "randk"
    linear: ClassVar[bool] = True

    def __init__(self, fraction: float = 0.01) -> None:
        self.fraction = fraction

    def keep(self, n: int) -> int:
        """How many of ``n`` values are kept."""
        return max(1, min(n, math.ceil(self.fraction * n)))

    def positions(self, n: int, seed: int) -> torch.Tensor:
        """The k sorted coordinates of this seed."""
        return torch.randperm(n, generator=generator(seed))[: self.keep(n)].sort().values

    def values_shape(self, shape: Shape) -> Shape:
        """The kept values: (k,)."""
        return (self.keep(numel(shape)),)

    def part_specs(self, shape: Shape) -> PartSpecs:
        """Only the values: positions come from the seed."""
        return {"values": (self.values_shape(shape), torch.float32)}

    def encode(self, x: torch.Tensor, seed: int) -> Parts:
        """The values at the seed's coordinates."""
        flat = x.reshape(-1)
        return {"values": flat[self.positions(flat.numel(), seed)].clone()}

    def decode(self, parts: Parts, shape: Shape, seed: int) -> torch.Tensor:
        """Scatter the values back to the seed's coordinates."""
        check_part(parts, "values", self.part_specs(shape)["values"], self.name)
        out = torch.zeros(numel(shape), dtype=torch.float32)
        out[self.positions(numel(shape), seed)] = parts["values"]
        return out.reshape(shape)
