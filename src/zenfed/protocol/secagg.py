"""The messages of secure aggregation (SecAgg+) as plain frozen data: what a task carries
and what participants and the coordinator exchange in its stages. The protocol itself (keys,
shares, masks) is in ``zenfed.privacy.secagg``; these are only its words.

    STAGES: advertise_keys -> share_keys -> masked_input -> unmask
"""

from __future__ import annotations

from dataclasses import dataclass

STAGES = ("advertise_keys", "share_keys", "masked_input", "unmask")


@dataclass(frozen=True)
class SecAggSetup:
    """What a participant needs to take part: its neighbours and the encoding."""

    round: int
    neighbours: tuple[str, ...]
    threshold: int  # shares that reconstruct a participant's secrets
    length: int  # values in the masked vector
    bound: float  # every value is clamped to [-bound, bound]
    scale: float  # fixed-point scale (sums of the whole cohort cannot overflow)


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 1: a participant's two public keys and seed commitment, signed."""

    participant: str
    cipher_key: bytes
    mask_key: bytes
    seed_commitment: bytes
    signature: bytes

    def signed_bytes(self, round: int) -> bytes:
        """What the Ed25519 signature covers."""
        return b"|".join(
            [
                b"zenfed/secagg/advertise",
                str(round).encode(),
                self.participant.encode(),
                self.cipher_key,
                self.mask_key,
                self.seed_commitment,
            ]
        )


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4: who uploaded a masked vector and who dropped after sharing keys."""

    round: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
