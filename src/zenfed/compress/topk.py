"""Top-k sparsification (Aji & Heafield 2017; with error feedback, Stich et al. 2018).

    TopK(fraction=0.01).encode(x, seed) -> {"idx": gaps between kept indices, "values": kept}

Keeps the k largest magnitudes of each tensor. Indices travel as gaps between sorted
positions (int32), small numbers that the zstd stage packs into about a byte each.
Bound: ||x - decode(encode(x))||^2 <= (1 - k/n) ||x||^2, exact on the kept coordinates.
Not linear: each participant keeps different coordinates.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from zenfed.compress.base import CodecError, Parts, PartSpecs, Shape, check_part, numel


class TopK:
    """Keep the k largest-magnitude values of a tensor."""

    name: ClassVar[str] = "topk"
    linear: ClassVar[bool] = False

    def __init__(self, fraction: float | None = 0.01, k: int | None = None) -> None:
        self.fraction, self.k = fraction, k

    def keep(self, n: int) -> int:
        """How many of ``n`` values are kept."""
        if self.k is not None:
            if self.k > n:
                raise CodecError(
                    f"topk k={self.k} exceeds a tensor of {n} values",
                    fix="lower k or give a fraction instead",
                )
            return self.k
        assert self.fraction is not None
        return max(1, min(n, math.ceil(self.fraction * n)))

    def values_shape(self, shape: Shape) -> Shape:
        """The kept values: (k,)."""
        return (self.keep(numel(shape)),)

    def part_specs(self, shape: Shape) -> PartSpecs:
        """Index gaps (int32) and kept values (float32), k of each."""
        k = self.keep(numel(shape))
        return {"idx": ((k,), torch.int32), "values": ((k,), torch.float32)}

    def encode(self, x: torch.Tensor, seed: int) -> Parts:
        """The k largest magnitudes and their positions."""
        flat = x.reshape(-1)
        idx = torch.topk(flat.abs(), self.keep(flat.numel()), sorted=False).indices.sort().values
        gaps = torch.diff(idx, prepend=torch.zeros(1, dtype=idx.dtype))
        return {"idx": gaps.to(torch.int32), "values": flat[idx].clone()}

    def decode(self, parts: Parts, shape: Shape, seed: int) -> torch.Tensor:
        """Scatter the kept values into zeros."""
        for name, spec in self.part_specs(shape).items():
            check_part(parts, name, spec, self.name)
        idx = _positions(parts["idx"], numel(shape))
        out = torch.zeros(numel(shape), dtype=torch.float32)
        out[idx] = parts["values"]
        return out.reshape(shape)


def _positions(gaps: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted positions from their gaps; every position distinct and inside [0, n)."""
    if gaps.numel() and (int(gaps[0]) < 0 or (gaps.numel() > 1 and int(gaps[1:].min()) < 1)):
        raise CodecError("topk indices are not strictly increasing", fix="re-encode the update")
    idx = torch.cumsum(gaps.to(torch.int64), 0)
    if idx.numel() and int(idx[-1]) >= n:
        raise CodecError(f"topk index {int(idx[-1])} is outside a tensor of {n}", fix="re-encode")
    return idx
