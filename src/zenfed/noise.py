"""Gaussian noise for differential privacy, from OS entropy or, on request
(``privacy.secure_noise``), from a cryptographically secure stream.

    values += gaussian(values.shape, std, secure=True)

The default draws from NumPy's PCG64 seeded with OS entropy: unpredictable from anything
public, but not a cryptographic generator (its state could in principle be recovered from
enough of its output) and, like every floating-point Gaussian sampler, open to the
least-significant-bit attacks of Mironov (2012) and Jin et al. (2021). The secure form
takes its bits from ChaCha20 keyed with 32 bytes of OS entropy (``cryptography``), turns
them into Gaussians by Box-Muller on 52-bit uniforms, and returns the sum of four such
draws over 2 (still N(0, std^2)): the defence Holohan and Braghin (2021) give against the
floating-point attacks and that Opacus' ``secure_mode`` uses. It costs about 16 random
bytes and a few float operations per value for each of the four draws.
"""

from __future__ import annotations

import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

DRAWS = 4  # Gaussians summed per value (Holohan & Braghin's n = 2: 2n draws)


def gaussian(shape: tuple[int, ...], std: float, *, secure: bool = False) -> np.ndarray:
    """Independent N(0, std^2) values of ``shape`` (float64); see the module's docstring
    for the two sources."""
    if std < 0:
        raise ValueError(f"a noise standard deviation must be >= 0, got {std}")
    n = math.prod(shape)
    if not secure:
        return np.random.default_rng().normal(0.0, std, shape)
    total = np.zeros(n)
    for _ in range(DRAWS):
        total += _box_muller(_uniforms(2 * n))
    return (total * (std / math.sqrt(DRAWS))).reshape(shape)


def _uniforms(n: int) -> np.ndarray:
    """``n`` uniforms in (0, 1) from a fresh ChaCha20 stream: 52 random bits each, offset
    by half a step so that none is 0 or 1 (exactly representable: Box-Muller takes their
    logarithm)."""
    cipher = Cipher(algorithms.ChaCha20(os.urandom(32), os.urandom(16)), mode=None)
    stream = cipher.encryptor().update(bytes(8 * n))  # the keystream itself
    bits = np.frombuffer(stream, dtype=np.uint64) >> np.uint64(12)
    return (bits.astype(np.float64) + 0.5) * 2.0**-52


def _box_muller(u: np.ndarray) -> np.ndarray:
    """Standard normals from pairs of uniforms (the first half and the second half)."""
    half = len(u) // 2
    return np.sqrt(-2.0 * np.log(u[:half])) * np.cos(2.0 * math.pi * u[half:])
