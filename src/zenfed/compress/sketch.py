"""Count sketch of an update (Charikar et al. 2002), as FetchSGD uses it (Rothchild et al. 2020).

    Sketch(fraction=0.1, rows=1).encode(x, seed) -> {"values": rows x cols table, flattened}

Each of ``rows`` hash rows adds s(i) * x_i into bucket h(i); hashes and signs come from the
round's shared seed, so every participant sketches alike and sketches add: the codec is
linear and can run under secure aggregation. decode estimates x_i as the mean over rows of
s(i) * table[h(i)] (linear and unbiased; variance (||x||^2 - x_i^2) / (rows cols) per value).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from zenfed.compress.base import Parts, PartSpecs, Shape, check_part, generator, numel


class Sketch:
    """A rows x cols count sketch with the round's shared hashes."""

    name: ClassVar[str] = "sketch"
    linear: ClassVar[bool] = True

    def __init__(self, fraction: float = 0.1, rows: int = 1) -> None:
        self.fraction, self.rows = fraction, rows

    def cols(self, n: int) -> int:
        """Buckets per row: rows x cols is about ``fraction`` of n."""
        return max(1, math.ceil(self.fraction * n / self.rows))

    def hashes(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Bucket (rows, n) and sign (rows, n) of every coordinate for this seed."""
        g = generator(seed)
        bucket = torch.randint(0, self.cols(n), (self.rows, n), generator=g)
        sign = torch.randint(0, 2, (self.rows, n), generator=g).to(torch.float32) * 2 - 1
        return bucket, sign

    def values_shape(self, shape: Shape) -> Shape:
        """The table, flattened."""
        return (self.rows * self.cols(numel(shape)),)

    def part_specs(self, shape: Shape) -> PartSpecs:
        """Only the table."""
        return {"values": (self.values_shape(shape), torch.float32)}

    def encode(self, x: torch.Tensor, seed: int) -> Parts:
        """Add every signed value into its bucket, in every row."""
        flat = x.reshape(-1)
        n = flat.numel()
        bucket, sign = self.hashes(n, seed)
        table = torch.zeros(self.rows, self.cols(n))
        for r in range(self.rows):
            table[r].index_add_(0, bucket[r], sign[r] * flat)
        return {"values": table.reshape(-1)}

    def decode(self, parts: Parts, shape: Shape, seed: int) -> torch.Tensor:
        """Each value's mean signed bucket over the rows."""
        check_part(parts, "values", self.part_specs(shape)["values"], self.name)
        n = numel(shape)
        bucket, sign = self.hashes(n, seed)
        table = parts["values"].view(self.rows, -1)
        est = (torch.gather(table, 1, bucket) * sign).mean(dim=0)
        return est.reshape(shape)
