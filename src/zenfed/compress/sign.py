"""Sign with scale, the compressor of EF-signSGD (Karimireddy et al. 2019).

    Sign(block=1024).encode(x, seed) -> {"bits": one bit per value, "scale": mean |x| per block}

decode = scale * sign(x) per block, with scale = ||x_block||_1 / m. The squared error is
exactly ||x||^2 - ||x||_1^2 / m per block of m values (zero counts as +). Biased, so it is
meant to run with error feedback, which the pipeline provides.
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
    numel,
    pack_bits,
    unpack_bits,
)


class Sign:
    """One bit per value and one float32 scale per block."""

    name: ClassVar[str] = "sign"
    linear: ClassVar[bool] = False

    def __init__(self, block: int = 1024) -> None:
        self.block = block

    def values_shape(self, shape: Shape) -> None:
        """Terminal: no float values remain."""
        return None

    def part_specs(self, shape: Shape) -> PartSpecs:
        """Packed sign bits and one scale per block."""
        length, nb = blocks(numel(shape), self.block)
        return {"bits": ((nb * length // 8,), torch.uint8), "scale": ((nb,), torch.float32)}

    def encode(self, x: torch.Tensor, seed: int) -> Parts:
        """Signs, and each block's mean magnitude over its real (unpadded) values."""
        flat = x.reshape(-1)
        n = flat.numel()
        length, nb = blocks(n, self.block)
        v = torch.cat([flat, flat.new_zeros(nb * length - n)]).view(nb, length)
        counts = torch.full((nb,), float(length))
        counts[-1] = n - (nb - 1) * length
        scale = v.abs().sum(dim=1) / counts
        return {"bits": pack_bits((v >= 0).reshape(-1), 1), "scale": scale}

    def decode(self, parts: Parts, shape: Shape, seed: int) -> torch.Tensor:
        """scale * (+1 or -1), per block."""
        for name, spec in self.part_specs(shape).items():
            check_part(parts, name, spec, self.name)
        nb = parts["scale"].numel()
        signs = unpack_bits(parts["bits"], 1).to(torch.float32).view(nb, -1) * 2 - 1
        out = signs * parts["scale"][:, None]
        return out.reshape(-1)[: numel(shape)].reshape(shape)
