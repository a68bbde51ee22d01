"""Top-k sparsification (Aji & Heafield 2017; with error feedback, Stich et al. 2018).

    TopK(fraction=0.01).encode(x, seed) -> {"idx": gaps between kept indices, "values": kept}
    TopK(fraction=0.1, block=8)      # the 10 % of blocks of 8 values with the largest norms

Keeps the k largest magnitudes of each tensor. Positions travel as gaps between sorted
indices (int32), small numbers that the zstd stage packs into about a byte each; or, when
k exceeds n/32 (a bitmap of n bits is then smaller than k int32s), as that bitmap
(``mask``), which zstd packs close to the entropy of the positions (10 % kept: about 5
bits a kept position instead of about 8 as gaps). With
``block`` b > 1 the unit is a block of b consecutive values (the last one padded with
zeros): k counts blocks, one index a kept block, so the indices cost b times less (a
LoRA B matrix of rank 8 stores each output row's 8 values contiguously: block 8 keeps
whole rows). Bound: ||x - decode(encode(x))||^2 <= (1 - k/n) ||x||^2 with n the units,
exact on the kept units. Not linear: each participant keeps different coordinates.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from zenfed.compress.base import (
    CodecError,
    Parts,
    PartSpecs,
    Shape,
    check_part,
    numel,
    pack_bits,
    unpack_bits,
)


class TopK:
    """Keep the k largest-magnitude values of a tensor."""

    name: ClassVar[str] = "topk"
    linear: ClassVar[bool] = False

    def __init__(self, fraction: float | None = 0.01, k: int | None = None, block: int = 1) -> None:
        self.fraction, self.k, self.block = fraction, k, block

    def units(self, n: int) -> int:
        """The values (``block`` 1) or blocks a tensor of ``n`` values is cut into."""
        return -(-n // self.block)

    def keep(self, n: int) -> int:
        """How many of ``n`` units (values, or blocks) are kept."""
        if self.k is not None:
            if self.k > n:
                raise CodecError(
                    f"topk k={self.k} exceeds a tensor of {n} "
                    + ("values" if self.block == 1 else f"blocks of {self.block}"),
                    fix="lower k or give a fraction instead",
                )
            return self.k
        assert self.fraction is not None
        return max(1, min(n, math.ceil(self.fraction * n)))

    def values_shape(self, shape: Shape) -> Shape:
        """The kept values: (k * block,)."""
        return (self.keep(self.units(numel(shape))) * self.block,)

    def part_specs(self, shape: Shape) -> PartSpecs:
        """The positions (k int32 index gaps, or a bitmap of the units packed in uint8)
        and the kept values (float32)."""
        units = self.units(numel(shape))
        k = self.keep(units)
        values = ((k * self.block,), torch.float32)
        if _bitmap(k, units):
            return {"mask": ((_mask_bytes(units),), torch.uint8), "values": values}
        return {"idx": ((k,), torch.int32), "values": values}

    def encode(self, x: torch.Tensor, seed: int) -> Parts:
        """The k largest units (by magnitude, or a block's L2 norm) and their positions."""
        blocks = self._blocks(x.reshape(-1))
        units = blocks.shape[0]
        k = self.keep(units)
        idx = torch.topk(blocks.norm(dim=1), k, sorted=False).indices.sort().values
        values = blocks[idx].reshape(-1).clone()
        if _bitmap(k, units):
            mask = torch.zeros(_mask_bytes(units) * 8, dtype=torch.uint8)
            mask[idx] = 1
            return {"mask": pack_bits(mask, 1), "values": values}
        gaps = torch.diff(idx, prepend=torch.zeros(1, dtype=idx.dtype))
        return {"idx": gaps.to(torch.int32), "values": values}

    def _blocks(self, flat: torch.Tensor) -> torch.Tensor:
        """(units, block): the values, zero-padded to whole blocks."""
        pad = self.units(flat.numel()) * self.block - flat.numel()
        return torch.nn.functional.pad(flat, (0, pad)).reshape(-1, self.block)

    def decode(self, parts: Parts, shape: Shape, seed: int) -> torch.Tensor:
        """Scatter the kept values into zeros."""
        for name, spec in self.part_specs(shape).items():
            check_part(parts, name, spec, self.name)
        n = numel(shape)
        units = self.units(n)
        if "mask" in parts:
            idx = _marked(parts["mask"], units, self.keep(units))
        else:
            idx = _positions(parts["idx"], units)
        out = torch.zeros(units, self.block, dtype=torch.float32)
        out[idx] = parts["values"].reshape(-1, self.block)
        return out.reshape(-1)[:n].reshape(shape)


def _bitmap(k: int, units: int) -> bool:
    """Whether the positions travel as a bitmap: smaller than k int32 gaps."""
    return 32 * k > units


def _mask_bytes(units: int) -> int:
    """Bytes of a bitmap of ``units`` bits."""
    return -(-units // 8)


def _marked(mask: torch.Tensor, units: int, k: int) -> torch.Tensor:
    """Sorted positions from a packed bitmap, which must mark exactly k of the units."""
    bits = unpack_bits(mask, 1)
    if int(bits[units:].sum()) or int(bits.sum()) != k:
        raise CodecError(
            f"topk bitmap marks {int(bits.sum())} positions (padding included), expected {k} "
            f"of {units}",
            fix="re-encode the update",
        )
    return torch.nonzero(bits[:units]).reshape(-1)


def _positions(gaps: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted positions from their gaps; every position distinct and inside [0, n)."""
    if gaps.numel() and (int(gaps[0]) < 0 or (gaps.numel() > 1 and int(gaps[1:].min()) < 1)):
        raise CodecError("topk indices are not strictly increasing", fix="re-encode the update")
    idx = torch.cumsum(gaps.to(torch.int64), 0)
    if idx.numel() and int(idx[-1]) >= n:
        raise CodecError(f"topk index {int(idx[-1])} is outside a tensor of {n}", fix="re-encode")
    return idx
