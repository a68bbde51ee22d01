"""Secure aggregation (SecAgg+, Bell et al. 2020; Bonawitz et al. 2017).

``crypto`` (X25519, HKDF, AES-GCM, the AES-CTR PRG from ``cryptography``), ``shamir``
(Shamir sharing of 32-byte secrets by interpolation modulo the prime 2^130 - 5),
``fixedpoint`` (floats to integers modulo 2^32), ``graph`` (the random regular
communication graph) and ``protocol`` (the four stages: participant side
``SecAggClient``, coordinator side ``SecAggServer``). The messages they exchange are
plain data in ``zenfed.protocol.secagg``.
"""

from zenfed.privacy.secagg.protocol import (
    SecAggAborted,
    SecAggClient,
    SecAggError,
    SecAggServer,
)
from zenfed.protocol.secagg import STAGES, AdvertiseKeys, SecAggSetup, UnmaskRequest

__all__ = [
    "STAGES",
    "AdvertiseKeys",
    "SecAggAborted",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "SecAggSetup",
    "UnmaskRequest",
]
