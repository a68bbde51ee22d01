"""Secure aggregation (SecAgg+, Bell et al. 2020; Bonawitz et al. 2017).

``crypto`` (X25519, HKDF, AES-GCM, the AES-CTR PRG), ``shamir`` (PyCryptodome's Shamir
over 32-byte secrets), ``fixedpoint`` (floats to integers modulo 2^32), ``graph`` (the
random regular communication graph) and ``protocol`` (the four stages: participant side
``SecAggClient``, coordinator side ``SecAggServer``).
"""

from zenfed.privacy.secagg import wire
from zenfed.privacy.secagg.protocol import (
    STAGES,
    AdvertiseKeys,
    SecAggAborted,
    SecAggClient,
    SecAggError,
    SecAggServer,
    SecAggSetup,
    UnmaskRequest,
)

__all__ = [
    "STAGES",
    "AdvertiseKeys",
    "SecAggAborted",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "SecAggSetup",
    "UnmaskRequest",
    "wire",
]
