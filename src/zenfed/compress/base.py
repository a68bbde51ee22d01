"""What every codec is, and the helpers they share.

A codec turns one float32 tensor into named parts (small tensors) and back:

    parts = codec.encode(x, seed)           # {"idx": ..., "values": ...}
    y = codec.decode(parts, x.shape, seed)  # float32, x's shape

A part named ``values`` is a float32 vector that the next codec of a pipeline may encode
further (top-k's kept values can be quantized); a codec without one is terminal. ``seed``
is per tensor: shared by all participants of a round for codecs that must agree on
coordinates (random-k, count sketch), private otherwise (stochastic rounding).

``linear`` declares decode(sum of encodings) == sum of decodes (parts add elementwise):
only such codecs may run under secure aggregation, which sees nothing but sums.
"""

from __future__ import annotations

import hashlib
import math
from typing import ClassVar, Protocol

import torch

from zenfed.errors import ZenfedError

Shape = tuple[int, ...]
Parts = dict[str, torch.Tensor]
PartSpecs = dict[str, tuple[Shape, torch.dtype]]


class CodecError(ZenfedError):
    """A payload that does not decode, or a codec parameter that does not fit a tensor."""


class Codec(Protocol):
    """encode/decode of one tensor; see the module docstring."""

    name: ClassVar[str]
    linear: ClassVar[bool]

    def values_shape(self, shape: Shape) -> Shape | None:
        """Shape of the ``values`` part for an input of ``shape`` (None: terminal codec)."""
        ...

    def part_specs(self, shape: Shape) -> PartSpecs:
        """Every part's (shape, dtype) for an input of ``shape``, ``values`` included."""
        ...

    def encode(self, x: torch.Tensor, seed: int) -> Parts:
        """Encode ``x`` (float32)."""
        ...

    def decode(self, parts: Parts, shape: Shape, seed: int) -> torch.Tensor:
        """The float32 tensor of ``shape`` that ``parts`` stand for."""
        ...


def numel(shape: Shape) -> int:
    """Number of elements of a tensor of ``shape``."""
    return math.prod(shape)


def generator(seed: int) -> torch.Generator:
    """A CPU generator in a known state: the same seed gives the same draws anywhere."""
    return torch.Generator().manual_seed(seed)


def derive_seed(base: int, *labels: object) -> int:
    """A 63-bit seed from ``base`` and labels (tensor name, stage), stable across runs."""
    text = "|".join(str(x) for x in (base, *labels)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def blocks(n: int, block: int) -> tuple[int, int]:
    """(block length, number of blocks) covering n values; short tensors get one block."""
    length = min(block, max(8, -(-n // 8) * 8))
    return length, -(-n // length)


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers in [0, 2**bits) (uint8, length a multiple of 8 // bits) into bytes."""
    per = 8 // bits
    q = q.to(torch.uint8).view(-1, per)
    out = torch.zeros(q.shape[0], dtype=torch.uint8)
    for j in range(per):
        out |= q[:, j] << (bits * j)
    return out


def unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits` (uint8 integers, 8 // bits per byte)."""
    per, mask = 8 // bits, (1 << bits) - 1
    cols = [(packed >> (bits * j)) & mask for j in range(per)]
    return torch.stack(cols, dim=1).reshape(-1)


def check_part(parts: Parts, name: str, spec: tuple[Shape, torch.dtype], codec: str) -> None:
    """Raise a CodecError unless ``parts[name]`` has the shape and dtype of ``spec``."""
    shape, dtype = spec
    t = parts.get(name)
    if t is None:
        raise CodecError(f"{codec} payload lacks its '{name}' part", fix="re-encode the update")
    if tuple(t.shape) != shape or t.dtype != dtype:
        raise CodecError(
            f"{codec} part '{name}' is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}",
            fix="encode with the federation's compress settings",
        )
