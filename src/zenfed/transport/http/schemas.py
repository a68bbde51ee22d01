"""The bodies and query strings the coordinator service accepts, bounded field by field.

Every number has a range (finite, within the 32-bit columns it is stored in), every
string a length, and unknown keys are refused: a request outside them gets a 422 naming
the field before anything is stored, and the OpenAPI at ``/docs`` states each bound.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from zenfed.config import MAX_TTL_S
from zenfed.coordinator.validate import MAX_COUNT, MAX_LOSS, MAX_SECONDS

# printable (names end up in logs and tables) and no "/" (a name is a path segment)
NAME_PATTERN = r"^[^\x00-\x1f\x7f/]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UpdateMeta(_Strict):
    """An upload's metadata, from its (signed) query string."""

    base_version: str = Field(max_length=64)
    num_examples: int = Field(
        description="training examples used: the aggregation weight, at most the examples "
        "this participant enrolled with (checked by the coordinator, refusals audited)"
    )
    examples_seen: int = Field(ge=0, le=MAX_COUNT)
    num_tokens: int = Field(ge=0, le=MAX_COUNT)
    seconds: float = Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    train_loss: float = Field(ge=-MAX_LOSS, le=MAX_LOSS, allow_inf_nan=False)
    steps: int = Field(ge=0, le=MAX_COUNT)
    record_epsilon: float | None = Field(default=None, ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    pool_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_COUNT,
        description="a regional coordinator's update: the participants it samples from",
    )
    adapter: str = Field(
        default="", max_length=500, description="the id of its task's adapter spec"
    )


class InviteRequest(_Strict):
    """Operator: make an enrollment token."""

    label: str = Field(default="", max_length=200)
    ttl_s: float | None = Field(default=None, gt=0, le=MAX_TTL_S, allow_inf_nan=False)


class RollbackRequest(_Strict):
    """Operator: the earlier version to publish again (its id, or 8+ of its hex digits)."""

    to: str = Field(min_length=8, max_length=64, pattern=r"^[0-9a-fA-F]+$")


class Capacity(_Strict):
    """What a participant's machine declares (checked against the federation's needs)."""

    memory_gb: float = Field(ge=0, le=1e6, allow_inf_nan=False)
    device: str = Field(default="cpu", max_length=64)
    threads: int = Field(default=1, ge=1, le=1_000_000)
    train_tokens_per_s: float = Field(default=0.0, ge=0, le=1e12, allow_inf_nan=False)


class DataProfile(_Strict):
    """What a participant declares of its data (never the data)."""

    examples: int = Field(default=0, ge=0, le=MAX_COUNT)
    tokens: int = Field(default=0, ge=0, le=2**62)
    domain: str = Field(default="", max_length=200)
    language: str = Field(default="", max_length=32)


class EnrollRequest(_Strict):
    """A participant's enrollment: identity, capacity, data characteristics (never data)."""

    token: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN)
    public_key: str = Field(max_length=64, description="base64 of the 32 raw Ed25519 bytes")
    capacity: Capacity
    data_profile: DataProfile
