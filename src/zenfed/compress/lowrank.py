"""Low-rank approximation of matrices by truncated SVD (the optimum: Eckart-Young).

    LowRank(rank=4).encode(W, seed) -> {"values": [U_r S_r (m x r), V_r^T (r x n)] flattened}

A matrix whose smaller side exceeds ``rank`` travels as two thin factors, r (m + n) values
instead of m n; other tensors pass unchanged. Bound: the squared Frobenius error is exactly
the sum of the squared singular values dropped. The factors are float32 ``values`` that a
later codec may quantize. Not linear.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from zenfed.compress.base import Parts, PartSpecs, Shape, check_part


class LowRank:
    """Truncated SVD of matrices with both sides larger than ``rank``."""

    name: ClassVar[str] = "lowrank"
    linear: ClassVar[bool] = False

    def __init__(self, rank: int = 4) -> None:
        self.rank = rank

    def applies(self, shape: Shape) -> bool:
        """Whether a tensor of ``shape`` is factored (a matrix larger than the rank)."""
        return len(shape) == 2 and min(shape) > self.rank

    def values_shape(self, shape: Shape) -> Shape:
        """Both factors flattened, or the tensor itself when it is not factored."""
        return (self.rank * (shape[0] + shape[1]),) if self.applies(shape) else shape

    def part_specs(self, shape: Shape) -> PartSpecs:
        """Only the values."""
        return {"values": (self.values_shape(shape), torch.float32)}

    def encode(self, x: torch.Tensor, seed: int) -> Parts:
        """U_r S_r and V_r^T, flattened one after the other."""
        if not self.applies(tuple(x.shape)):
            return {"values": x.clone()}
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        r = self.rank
        return {"values": torch.cat([(u[:, :r] * s[:r]).reshape(-1), vh[:r].reshape(-1)])}

    def decode(self, parts: Parts, shape: Shape, seed: int) -> torch.Tensor:
        """The product of the two factors."""
        check_part(parts, "values", self.part_specs(shape)["values"], self.name)
        v = parts["values"]
        if not self.applies(shape):
            return v.clone()
        m, n = shape
        split = m * self.rank
        return v[:split].view(m, self.rank) @ v[split:].view(self.rank, n)
