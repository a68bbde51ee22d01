"""Stochastic uniform quantization with per-block scales (QSGD-style, Alistarh et al. 2017).

    Quantize(bits=4).encode(x, seed) -> {"q": packed levels, "lo": block minima, "step": ...}

Each block of ``block`` values is mapped onto 2**bits evenly spaced levels between its
minimum and maximum; a value between two levels rounds up with probability equal to its
distance from the lower one, so decode(encode(x)) is unbiased: E[decode] = x. Bound: every
value is within one step, (max - min) / (2**bits - 1), of its block's true value. Levels
are bit-packed (8 // bits per byte); minima and steps travel as float32.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from zenfed.compress.base import (
    Parts,
    PartSpecs,
    Shape,
    blocks,
    check_part,
    generator,
    numel,
    pack_bits,
    unpack_bits,
)


class Quantize:
    """Unbiased stochastic rounding onto 2**bits levels per block."""

    name: ClassVar[str] = "quantize"
    linear: ClassVar[bool] = False

    def __init__(self, bits: int = 8, block: int = 1024) -> None:
        self.bits, self.block = bits, block

    def values_shape(self, shape: Shape) -> None:
        """Terminal: no float values remain."""
        return None

    def part_specs(self, shape: Shape) -> PartSpecs:
        """Packed levels, and each block's minimum and step."""
        length, nb = blocks(numel(shape), self.block)
        return {
            "q": ((nb * length * self.bits // 8,), torch.uint8),
            "lo": ((nb,), torch.float32),
            "step": ((nb,), torch.float32),
        }

    def encode(self, x: torch.Tensor, seed: int) -> Parts:
        """Round every value to a neighbouring level, up with the right probability."""
        v = _padded(x.reshape(-1), self.block)  # (nb, length)
        lo, hi = v.min(dim=1).values, v.max(dim=1).values
        step = (hi - lo) / (2**self.bits - 1)
        step = torch.where(step > 0, step, torch.ones_like(step))  # flat block: level 0 is exact
        t = (v - lo[:, None]) / step[:, None]
        u = torch.rand(t.shape, generator=generator(seed))
        q = torch.floor(t + u).clamp_(0, 2**self.bits - 1)
        return {"q": pack_bits(q.reshape(-1), self.bits), "lo": lo, "step": step}

    def decode(self, parts: Parts, shape: Shape, seed: int) -> torch.Tensor:
        """lo + level * step, per block."""
        for name, spec in self.part_specs(shape).items():
            check_part(parts, name, spec, self.name)
        n = numel(shape)
        nb = parts["lo"].numel()
        q = unpack_bits(parts["q"], self.bits).to(torch.float32).view(nb, -1)
        out = parts["lo"][:, None] + q * parts["step"][:, None]
        return out.reshape(-1)[:n].reshape(shape)


def _padded(flat: torch.Tensor, block: int) -> torch.Tensor:
    """``flat`` as (blocks, length), the last block padded with its own last value."""
    length, nb = blocks(flat.numel(), block)
    pad = nb * length - flat.numel()
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(nb, length)
