"""Floats to integers modulo 2^32 and back, sized so a sum cannot overflow.

    scale = scale_for(bound=1.5, count=100)   # every |x_i| <= bound, at most 100 summands
    words = encode(x, scale, rng)             # stochastic rounding: E[decode] = x
    total = decode(sum_of_words_mod_2_32, scale)

Each value is scaled so that ``count`` values of magnitude ``bound`` sum to at most 2^31 - 1,
rounded stochastically (unbiased), and stored as a two's-complement 32-bit word. Sums of
words wrap modulo 2^32, the masks cancel, and the result read as int32 is the exact sum of
the rounded values. Resolution: 1 / scale per summand.
"""

from __future__ import annotations

import numpy as np

MODULUS_BITS = 32


def scale_for(bound: float, count: int) -> float:
    """The fixed-point scale for ``count`` summands each in [-bound, bound] (each may
    round up by one unit)."""
    n = max(1, count)
    return float((2**31 - 1 - n) / (bound * n * (1 + 1e-6)))


def encode(x: np.ndarray, scale: float, rng: np.random.Generator, bound: float) -> np.ndarray:
    """``x`` clamped to [-bound, bound], scaled, stochastically rounded, as uint32 words."""
    v = np.clip(x.astype(np.float64), -bound, bound) * scale
    low = np.floor(v)
    q = low + (rng.random(v.shape) < (v - low))
    return q.astype(np.int64).astype(np.uint32)


def decode(words: np.ndarray, scale: float) -> np.ndarray:
    """A sum of encoded words (modulo 2^32) back to float64."""
    return words.astype(np.uint32).view(np.int32).astype(np.float64) / scale
